"""Slide backends: the pixel access and metadata of each format behind one :class:`pathkit.Slide`.

=============  ====================================================================
``tiffslide``  SVS, NDPI, generic / pyramidal TIFF, OME-TIFF, QPTIFF (``tiff.py``)
``image``      JPEG, PNG, a single-image TIFF (``image.py``)
``openslide``  MRXS, SCN, BIF, VMS / VMU and everything else OpenSlide 4 reads (``openslide.py``)
``wsidicom``   DICOM WSI: a file, a folder of one series (``dicom.py``), a DICOMweb series (``dicomweb.py``)
``pydicom``    a lone DICOM WSI instance wsidicom cannot place in a pyramid (``dicom.py``)
=============  ====================================================================

``backend="auto"`` chooses by the file's content (its magic bytes), not by its suffix: TIFF -> tiffslide
(a Ventana BIF -> OpenSlide), JPEG / PNG -> image; formats made of several files whose entry file has no
magic of its own (MRXS, VMS / VMU) go to OpenSlide by their suffix.
"""
from __future__ import annotations

import errno
import os
from pathlib import Path

from ..errors import SlideReadError
from ._base import MppMetadata, PixelInfo, SlideBackend, to_rgb_uint8

BACKENDS = ("tiffslide", "image", "openslide", "wsidicom", "pydicom")
# entry files of multi-file formats (their content is a text index or a preview image)
_OPENSLIDE_SUFFIXES = (".mrxs", ".vms", ".vmu")

__all__ = ["BACKENDS", "MppMetadata", "PixelInfo", "SlideBackend", "check_path", "open_backend", "sniff",
           "to_rgb_uint8"]


def check_path(path) -> Path:
    """The absolute, symlink-free path of `path`, or a SlideReadError that says what is wrong with it
    (missing, a dangling link, a symlink loop, not readable)."""
    p = Path(os.path.expanduser(os.fspath(path)))
    try:
        os.stat(p)
    except FileNotFoundError:
        if os.path.islink(p):
            raise SlideReadError(f"{p}: a symbolic link to {os.readlink(p)}, which does not exist; fix or "
                                 f"remove the link") from None
        raise SlideReadError(f"{p}: no such file") from None
    except PermissionError as exc:
        raise SlideReadError(f"{p}: permission denied ({exc.strerror}); check the permissions of the file "
                             f"and of its folders") from None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise SlideReadError(f"{p}: a loop of symbolic links; point the link at the slide file") from None
        raise SlideReadError(f"{p}: {exc.strerror or exc}") from None
    real = Path(os.path.realpath(p))
    if real.is_file() and not os.access(real, os.R_OK):
        raise SlideReadError(f"{p}: the file is not readable by this user; check its permissions")
    return real


def sniff(path: Path) -> str:
    """The backend ``auto`` picks for `path` by its first bytes (raises SlideReadError when none reads it)."""
    if path.is_dir():
        from .dicom import dicom_files

        if dicom_files(path):
            return "wsidicom"
        raise SlideReadError(f"{path}: a folder, not a slide: it holds no DICOM series; pass one of the slide "
                             f"files in it")
    size = path.stat().st_size
    if size == 0:
        raise SlideReadError(f"{path}: cannot read this slide: the file is empty (0 bytes)")
    try:
        with open(path, "rb") as fh:
            head = fh.read(132)
    except PermissionError as exc:
        raise SlideReadError(f"{path}: permission denied ({exc.strerror}); check the file's permissions") from None
    from .tiff import TIFF_MAGIC

    suffix = path.suffix.lower()
    if suffix in _OPENSLIDE_SUFFIXES:
        return "openslide"
    if head[:4] in TIFF_MAGIC:
        # BIF tiles overlap and are stored in a serpentine order, which only OpenSlide assembles
        return "openslide" if suffix == ".bif" else "tiffslide"
    if head[:3] == b"\xff\xd8\xff" or head[:8] == b"\x89PNG\r\n\x1a\n":
        return "image"
    if len(head) >= 132 and head[128:132] == b"DICM":
        return "wsidicom"
    try:
        head[:64].decode("ascii")
        looks = "text"
    except UnicodeDecodeError:
        looks = "binary data"
    raise SlideReadError(
        f"{path}: cannot read this slide: it is not a TIFF file, nor a JPEG, PNG or DICOM one (header "
        f"{head[:8]!r}, looks like {looks}); is the extension lying?")


def open_backend(path: Path, backend: str = "auto") -> SlideBackend:
    """Open `path` (already checked by :func:`check_path`) with `backend` ("auto": by content)."""
    name = sniff(path) if backend == "auto" else backend
    if name == "tiffslide":
        from .tiff import TiffBackend

        return TiffBackend(path)
    if name == "image":
        from .image import ImageBackend

        if path.is_dir():
            raise SlideReadError(f"{path}: a folder, not an image file")
        return ImageBackend(path)
    if name == "wsidicom":
        from .dicom import open_dicom

        return open_dicom(path)
    if name == "pydicom":
        from .dicom import FramesBackend

        return FramesBackend(path, why="backend='pydicom' asked for")
    if name == "openslide":
        from .openslide import OpenSlideBackend

        return OpenSlideBackend(path)
    raise ValueError(f"backend={backend!r} is not one of 'auto', {', '.join(map(repr, BACKENDS))}")
