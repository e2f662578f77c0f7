"""TCGA barcodes: patient, sample, portion, slide and the UUID of slide file names.

A TCGA barcode grows from the patient to the aliquot or slide::

    TCGA-AD-6964                      patient   (12 characters)
    TCGA-AD-6964-01                   sample    (15; 01-09 tumour, 10-19 normal, 20-29 control)
    TCGA-AD-6964-01A                  vial
    TCGA-AD-6964-01A-11R              portion + analyte (RNA)
    TCGA-AD-6964-01A-11R-1928-07      aliquot   (plate, centre)
    TCGA-AD-6964-01Z-00-DX1           slide     (DX diagnostic/FFPE, TS/BS/MS frozen top/bottom/middle)
    TCGA-AD-6964-01Z-00-DX1.83AF88B9-C59B-48C6-A739-85ACB8F8ECA9.svs   slide file name

The UUID after the dot of a slide file name is the slide image's own id; it is NOT the GDC file id
(the GDC stores that file under another UUID), so a download URL cannot be built from it.
"""
from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass
from pathlib import PurePath

import pandas as pd

from .errors import TableError

SAMPLE_TYPES = {
    "01": "Primary Solid Tumor", "02": "Recurrent Solid Tumor",
    "03": "Primary Blood Derived Cancer - Peripheral Blood",
    "04": "Recurrent Blood Derived Cancer - Bone Marrow", "05": "Additional - New Primary",
    "06": "Metastatic", "07": "Additional Metastatic", "08": "Human Tumor Original Cells",
    "09": "Primary Blood Derived Cancer - Bone Marrow", "10": "Blood Derived Normal",
    "11": "Solid Tissue Normal", "12": "Buccal Cell Normal", "13": "EBV Immortalized Normal",
    "14": "Bone Marrow Normal", "15": "sample type 15", "16": "sample type 16", "20": "Control Analyte",
    "40": "Recurrent Blood Derived Cancer - Peripheral Blood", "50": "Cell Lines",
    "60": "Primary Xenograft Tissue", "61": "Cell Line Derived Xenograft Tissue", "99": "sample type 99",
}
SLIDE_TYPES = {"DX": "diagnostic (FFPE)", "TS": "frozen, top section", "BS": "frozen, bottom section",
               "MS": "frozen, middle section"}
ANALYTES = {"D": "DNA", "G": "whole-genome amplified DNA (GenomePlex)", "H": "mirVana RNA",
            "R": "RNA", "T": "total RNA", "W": "whole-genome amplified DNA (Repli-G)",
            "X": "whole-genome amplified DNA (Repli-G X)"}

_UUID = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")
_UUIDISH = re.compile(r"^[0-9a-fA-F-]{8,}$")
_TSS = re.compile(r"^[A-Z0-9]{2}$")
_PARTICIPANT = re.compile(r"^[A-Z0-9]{4}$")
_SAMPLE = re.compile(r"^(\d{2})([A-Z])?$")
_PORTION = re.compile(r"^(\d{2})([A-Z])?$")
_SLIDE = re.compile(r"^(DX|TS|BS|MS)([0-9A-Z])$")
_PLATE = re.compile(r"^[A-Z0-9]{4}$")
_CENTER = re.compile(r"^\d{2}$")

FIELDS = ("barcode", "patient", "sample", "sample_type", "sample_type_name", "tissue", "vial", "portion",
          "analyte", "plate", "center", "slide", "slide_type", "slide_number", "uuid", "level")


@dataclass(frozen=True)
class Barcode:
    """Parts of a TCGA barcode. Fields below the barcode's level are None."""

    barcode: str                 # the barcode itself, upper case, without UUID / extension
    patient: str                 # TCGA-AD-6964
    sample: str | None           # TCGA-AD-6964-01
    sample_type: str | None      # "01"
    sample_type_name: str | None  # "Primary Solid Tumor"
    tissue: str | None           # "tumour" | "normal" | "control" | "other"
    vial: str | None             # "A" ("Z" on slides)
    portion: str | None          # "00"
    analyte: str | None          # "R"
    plate: str | None
    center: str | None
    slide: str | None            # TCGA-AD-6964-01Z-00-DX1
    slide_type: str | None       # "DX"
    slide_number: str | None     # "1"
    uuid: str | None             # the UUID after the dot of a slide file name, as written
    level: str                   # patient | sample | vial | portion | aliquot | slide

    @property
    def is_tumour(self) -> bool | None:
        return None if self.tissue is None else self.tissue == "tumour"

    @property
    def is_diagnostic(self) -> bool | None:
        return None if self.slide_type is None else self.slide_type == "DX"

    def to_dict(self) -> dict:
        return asdict(self)


def _tissue(code: str) -> str:
    n = int(code)
    if 1 <= n <= 9 or n == 40:
        return "tumour"
    if 10 <= n <= 19:
        return "normal"
    if 20 <= n <= 29:
        return "control"
    return "other"


def _bad(value, why: str):
    raise TableError(f"invalid TCGA barcode {value!r}: {why}")


def parse_barcode(barcode) -> Barcode:
    """Parse a TCGA barcode, slide file name or path into its parts.

    Parameters
    ----------
    barcode
        ``"TCGA-AD-6964"``, ``"TCGA-AD-6964-01A-11R-1928-07"``, ``"TCGA-AD-6964-01Z-00-DX1"``, a slide file
        name ``"TCGA-AD-6964-01Z-00-DX1.<uuid>.svs"`` or a path to one. Case-insensitive.

    Returns
    -------
    Barcode
        ``.patient`` (12 chars), ``.sample`` (15 chars), ``.sample_type`` code and ``.tissue``
        (tumour/normal/control/other), ``.vial``, ``.portion``, ``.analyte``, ``.slide_type`` (DX/TS/BS/MS),
        ``.slide_number``, ``.uuid`` (from a file name), ``.level``. ``.to_dict()`` for a plain dict.

    Raises
    ------
    TableError
        naming the value and the part that is wrong.
    """
    if not isinstance(barcode, (str, PurePath)):
        _bad(barcode, f"expected a string, got {type(barcode).__name__}")
    raw = str(barcode)
    name = PurePath(raw.replace("\\", "/")).name.strip()
    if not name:
        _bad(raw, "empty")
    head, _, rest = name.partition(".")
    uuid = None
    if rest:
        first = rest.split(".")[0]
        if _UUID.match(first):
            uuid = first
        elif "-" in first and _UUIDISH.match(first):
            _bad(raw, f"the part after the dot {first!r} looks like a UUID but is malformed "
                      "(expected 8-4-4-4-12 hex digits)")
        # anything else after the dot is a file extension or suffix (".svs", ".features.h5")
    parts = head.upper().split("-")
    if parts[0] != "TCGA":
        _bad(raw, f"does not start with 'TCGA-' (starts with {parts[0]!r}); only TCGA barcodes are parsed")
    if len(parts) < 3:
        _bad(raw, "needs at least TCGA-<site>-<participant> (12 characters, e.g. TCGA-AD-6964)")
    if not _TSS.match(parts[1]):
        _bad(raw, f"tissue source site {parts[1]!r} must be 2 letters/digits")
    if not _PARTICIPANT.match(parts[2]):
        _bad(raw, f"participant {parts[2]!r} must be 4 letters/digits")
    patient = "-".join(parts[:3])
    f = {"barcode": "-".join(parts), "patient": patient, "sample": None, "sample_type": None,
         "sample_type_name": None, "tissue": None, "vial": None, "portion": None, "analyte": None, "plate": None,
         "center": None, "slide": None, "slide_type": None, "slide_number": None, "uuid": uuid, "level": "patient"}
    if len(parts) > 3:
        m = _SAMPLE.match(parts[3])
        if not m:
            _bad(raw, f"sample part {parts[3]!r} must be a 2-digit sample type and an optional vial letter "
                      "(e.g. 01A)")
        code, vial = m.groups()
        f.update(sample=f"{patient}-{code}", sample_type=code,
                 sample_type_name=SAMPLE_TYPES.get(code, f"sample type {code}"), tissue=_tissue(code),
                 vial=vial, level="vial" if vial else "sample")
    if len(parts) > 4:
        if f["vial"] is None:
            _bad(raw, f"a vial letter is needed after the sample type before {parts[4]!r} (e.g. 01A)")
        m = _PORTION.match(parts[4])
        if not m:
            _bad(raw, f"portion part {parts[4]!r} must be 2 digits and an optional analyte letter (e.g. 11R)")
        f.update(portion=m.group(1), analyte=m.group(2), level="portion")
    if len(parts) > 5:
        slide = _SLIDE.match(parts[5])
        if slide and f["analyte"] is None:
            f.update(slide="-".join(parts[:6]), slide_type=slide.group(1), slide_number=slide.group(2),
                     level="slide")
            if len(parts) > 6:
                _bad(raw, f"unexpected part {parts[6]!r} after the slide part {parts[5]!r}")
        elif f["analyte"] is None:
            _bad(raw, f"part {parts[5]!r} must be a slide (DX1, TS1, BS1, MS1...) when the portion "
                      f"{parts[4]!r} has no analyte letter")
        else:
            if not _PLATE.match(parts[5]):
                _bad(raw, f"plate {parts[5]!r} must be 4 letters/digits")
            f.update(plate=parts[5], level="aliquot")
            if len(parts) > 6:
                if not _CENTER.match(parts[6]):
                    _bad(raw, f"centre {parts[6]!r} must be 2 digits")
                f["center"] = parts[6]
            if len(parts) > 7:
                _bad(raw, f"unexpected part {parts[7]!r} after the centre")
    if uuid is not None and f["level"] != "slide":
        _bad(raw, "a UUID after the dot is only expected on slide file names (…-DX1.<uuid>.svs)")
    return Barcode(**f)


def is_barcode(value) -> bool:
    """True when ``value`` parses as a TCGA barcode (any level)."""
    try:
        parse_barcode(value)
    except TableError:
        return False
    return True


def patient_id(value) -> str:
    """The 12-character patient barcode of any TCGA barcode or slide file name."""
    return parse_barcode(value).patient


def parse_barcodes(values, errors: str = "raise") -> pd.DataFrame:
    """Parse a Series / list of barcodes into a DataFrame with one column per part (see :class:`Barcode`).

    Parameters
    ----------
    values
        Series, Index or list of barcodes / slide file names. The result keeps a Series' index.
    errors
        ``"raise"`` (TableError naming every invalid value, up to 10) or ``"coerce"`` (invalid or missing
        values give a row of NaN and an ``error`` column saying why).
    """
    if errors not in ("raise", "coerce"):
        raise ValueError(f"errors must be 'raise' or 'coerce', got {errors!r}")
    s = values if isinstance(values, pd.Series) else pd.Series(list(values))
    rows, why = [], []
    cache: dict = {}
    for v in s.tolist():
        if v is None or (isinstance(v, float) and math.isnan(v)):
            rows.append(None)
            why.append("missing id")
            continue
        if v in cache:
            rows.append(cache[v][0])
            why.append(cache[v][1])
            continue
        try:
            r, e = parse_barcode(v).to_dict(), None
        except TableError as exc:
            r, e = None, str(exc)
        cache[v] = (r, e)
        rows.append(r)
        why.append(e)
    bad = [(v, e) for v, e in zip(s.tolist(), why) if e is not None]
    if bad and errors == "raise":
        shown = "; ".join(e if e != "missing id" else f"missing value {v!r}" for v, e in bad[:10])
        more = f" (and {len(bad) - 10} more)" if len(bad) > 10 else ""
        col = f"column {s.name!r}: " if s.name is not None else ""
        raise TableError(f"{col}{len(bad)} invalid TCGA barcode(s): {shown}{more}. Fix them, or pass "
                         "errors='coerce' to get NaN parts for them")
    df = pd.DataFrame([r if r is not None else {} for r in rows], columns=list(FIELDS), index=s.index)
    df = df.astype(object).where(df.notna(), None)
    if errors == "coerce":
        df["error"] = why
    return df
