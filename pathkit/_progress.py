"""pathkit's progress bars: one helper for every long loop.

``tqdm.auto`` draws an ipywidgets bar in a Jupyter kernel. A notebook the user saves keeps that widget's view
but (JupyterLab's default) not its model, so the reopened notebook shows "Error displaying widget: model not
found" in every cell that had a bar. :func:`progress_bar` draws tqdm's text bar instead: in a terminal on stderr
(tqdm's own default); in a kernel as a plain-text output that is updated in place (a ``display_id``), so the
bar moves live in JupyterLab, VS Code and nbclient, and what the notebook saves is its last line of text.
Unlike a text bar on stderr, nested bars (folds, then epochs) each keep their own line, and a bar closed with
``leave=False`` leaves no pink stderr block behind.

``TQDM_DISABLE=1`` in the environment turns every pathkit bar off, even one a caller asked for with
``progress=True`` (tqdm's own variable only sets the default; the documentation build uses it).
"""
from __future__ import annotations

import os
import sys

#: Width (characters) of a bar in a kernel: tqdm cannot measure an output area, and its fallback bar is
#: 10 characters wide.
KERNEL_NCOLS = 80


def in_kernel() -> bool:
    """Whether this runs in a Jupyter kernel (IPython with a kernel attached)."""
    ipython = sys.modules.get("IPython")
    if ipython is None:
        return False
    ip = ipython.get_ipython()
    return ip is not None and getattr(ip, "kernel", None) is not None


def _env_disabled() -> bool:
    return os.environ.get("TQDM_DISABLE", "").strip().lower() not in ("", "0", "false", "no", "off")


def progress_bar(iterable=None, **kwargs):
    """A tqdm bar (same arguments as ``tqdm.tqdm``: ``desc``, ``total``, ``unit``, ``disable``, ``leave``...)
    that shows as text: on stderr in a terminal, as one plain-text output updated in place in a Jupyter
    kernel (nothing that needs a widget model when the notebook is reopened)."""
    if _env_disabled():
        kwargs["disable"] = True
    if in_kernel():
        kwargs.setdefault("ncols", KERNEL_NCOLS)
        kwargs.setdefault("ascii", False)   # a notebook shows Unicode blocks (tqdm cannot ask the display)
        return _kernel_class()(iterable, **kwargs)
    from tqdm.std import tqdm

    return tqdm(iterable, **kwargs)


class _Discard:
    """The bar's ``file`` in a kernel: tqdm writes its newlines and cursor moves here, the text goes to the
    display."""

    def write(self, s):
        return len(s)

    def flush(self):
        pass


_KERNEL_BAR = None


def _kernel_class():
    global _KERNEL_BAR
    if _KERNEL_BAR is None:
        from tqdm.std import tqdm

        class KernelBar(tqdm):
            """tqdm's text bar drawn as a ``text/plain`` display output that is updated in place."""

            def __init__(self, *args, **kwargs):
                self._handle = None
                kwargs["file"] = _Discard()
                super().__init__(*args, **kwargs)

            def display(self, msg=None, pos=None):
                text = self.__str__() if msg is None else msg
                bundle = {"text/plain": text}
                if self._handle is None:
                    if not text:
                        return True
                    from IPython.display import display

                    self._handle = display(bundle, raw=True, display_id=True)
                else:
                    self._handle.update(bundle, raw=True)
                return True

        _KERNEL_BAR = KernelBar
    return _KERNEL_BAR
