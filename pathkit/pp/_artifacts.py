"""`find_artifacts`: a registry artefact segmenter over a slide, as per-class masks and tile QC columns."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ._deep_tissue import load_segmenter, segment_slide
from ._tissue_mask import TissueMask
from .tissue import find_tissue, mask_for

# find_artifacts(method=...) names -> registry entries
ARTIFACT_METHODS = {"grandqc": "grandqc_artifact"}


@dataclass
class ArtifactMasks:
    """Per-class masks of an artefact segmenter at a known scale.

    ``fractions`` (C x H x W float32): share of each mask pixel's area the model gave to each class;
    ``classes`` (names by channel), ``downsample`` (level-0 px per mask px), ``mpp`` (um per mask px),
    ``tissue_class`` / ``background_class`` (channels), ``slide_id``, ``slide_dimensions``, ``method``.
    Mask pixel (i, j) covers level-0 ``[j*d, (j+1)*d) x [i*d, (i+1)*d)``, as in :class:`TissueMask`.
    """

    fractions: np.ndarray
    classes: tuple
    downsample: float
    mpp: float
    tissue_class: int
    background_class: int
    covered: np.ndarray = field(repr=False, default=None)
    slide_id: str | None = None
    slide_dimensions: tuple[int, int] | None = None
    method: str = ""

    def __repr__(self):
        h, w = self.fractions.shape[1:]
        return f"ArtifactMasks({self.slide_id!r}, {self.method}, {w}x{h} px at {self.downsample:.4g}x)"

    @property
    def artifact_classes(self) -> tuple:
        """Names of the artefact classes (neither tissue, background nor unused)."""
        skip = {self.tissue_class, self.background_class}
        return tuple(c for i, c in enumerate(self.classes) if i not in skip and c != "unused")

    @property
    def labels(self) -> np.ndarray:
        """H x W uint8: the class with the largest share of each mask pixel (255 where nothing was seen)."""
        lab = self.fractions.argmax(0).astype(np.uint8)
        if self.covered is not None:
            lab[~self.covered] = 255
        return lab

    def _index(self, name) -> int:
        if isinstance(name, (int, np.integer)):
            return int(name)
        if name not in self.classes:
            raise KeyError(f"no class {name!r}; classes: {list(self.classes)}")
        return self.classes.index(name)

    def mask(self, classes="artifacts", min_fraction: float = 0.5) -> TissueMask:
        """A :class:`TissueMask` of the pixels where `classes` (a name, a list, or "artifacts": all artefact
        classes) cover at least `min_fraction` of the area."""
        names = self.artifact_classes if classes == "artifacts" else \
            ([classes] if isinstance(classes, (str, int)) else list(classes))
        share = sum(self.fractions[self._index(n)] for n in names)
        tm = TissueMask(mask=np.asarray(share) >= min_fraction, downsample=self.downsample, threshold=min_fraction,
                        mpp=self.mpp, slide_id=self.slide_id, slide_dimensions=self.slide_dimensions,
                        method=f"{self.method}:{'+'.join(map(str, names))}")
        if self.slide_dimensions is not None:
            tm.fraction = float(tm.area_fraction(0, 0, *self.slide_dimensions))
        return tm

    def area_fractions(self) -> dict:
        """Share of the slide area given to each class (mask pixels weighted by their area)."""
        w, h = self.slide_dimensions
        return {c: float(self.mask(c, 0.5).area_fraction(0, 0, w, h)) for c in self.classes if c != "unused"}

    def tile_fractions(self, tiles, *, prefix: str = "artifact_") -> None:
        """Write ``obs[prefix + class]`` (share of each tile's footprint under each artefact class, >= half
        of a mask pixel) and ``obs[prefix + "any"]`` into the tiles of :func:`pathkit.pp.tile`."""
        size = float(tiles.uns["tile_spec"]["size_level0"])
        x0 = tiles.obs["x"].to_numpy(np.float64)
        y0 = tiles.obs["y"].to_numpy(np.float64)
        for c in self.artifact_classes:
            tiles.obs[prefix + c] = self.mask(c).area_fraction(x0, y0, x0 + size, y0 + size)
        tiles.obs[prefix + "any"] = self.mask("artifacts").area_fraction(x0, y0, x0 + size, y0 + size)


def _tissue_gate(tissue: TissueMask, f: float, p: int):
    """gate(x, y): the p x p bool map of `tissue` sampled at the centres of model px (x.., y..)
    (f level-0 px per model px; nearest mask pixel; outside the mask: no tissue)."""
    th, tw = tissue.mask.shape

    def gate(x, y):
        c = (np.arange(p) + 0.5) * f
        ix = np.floor((x * f + c) / tissue.downsample).astype(np.int64)
        iy = np.floor((y * f + c) / tissue.downsample).astype(np.int64)
        okx, oky = (ix >= 0) & (ix < tw), (iy >= 0) & (iy < th)
        g = tissue.mask[np.clip(iy, 0, th - 1)][:, np.clip(ix, 0, tw - 1)]
        return g & oky[:, None] & okx[None, :]

    return gate


def find_artifacts(slide, method: str = "grandqc", *, tissue=None, mask_mpp: float = 8.0, weights=None,
                   device="auto", dtype="auto", batch_size: int = 4, progress: bool = True) -> ArtifactMasks:
    """Segment artefacts (folds, dark spots and foreign objects, pen, edges and air bubbles, out-of-focus
    areas) with a deep segmenter of the registry, inside the tissue.

    Parameters
    ----------
    slide
        A :class:`~pathkit.slide.Slide` or a path.
    method
        "grandqc" (GrandQC's 10x artefact model, 1 um/px; ``"grandqc_artifact_mpp15"`` /
        ``"grandqc_artifact_mpp2"`` are its 7x and 5x models) or the name of any registered artefact segmenter.
    tissue
        A :class:`TissueMask`: pixels outside it are background and patches with at most
        ``spec.min_tissue_px`` (50) tissue pixels are not run, as in GrandQC's pipeline. Default
        ``find_tissue(slide)`` (Otsu, offline); ``find_tissue(slide, method="grandqc")`` reproduces GrandQC's
        own two-step pipeline.
    mask_mpp
        Resolution of the masks (um per pixel).
    weights
        None (the entry's hub file, cached), a local state dict file, a dict, or "random" (tests only).
    device, dtype
        As for the tile encoders (``pathkit._device``): "auto" picks cuda/mps/cpu and bf16 where native.
    batch_size, progress
        Patches per forward pass; a tqdm progress bar.

    Returns
    -------
    ArtifactMasks
        ``.fractions`` (class shares per mask pixel), ``.labels``, ``.mask(name)`` (a TissueMask),
        ``.area_fractions()`` and ``.tile_fractions(tiles)`` (tile QC columns ``obs["artifact_<class>"]``).
    """
    from ..slide import read_slide

    slide = read_slide(slide)
    spec, model, device, dtype = load_segmenter(ARTIFACT_METHODS.get(method, method), weights, device, dtype)
    if spec.background_class is None:
        raise ValueError(f"segmenter {spec.name!r} is not an artefact segmenter (no background class); "
                         "use pk.pp.find_tissue(slide, method=...)")
    tissue = find_tissue(slide) if tissue is None else mask_for(slide, tissue)
    f = spec.mpp / slide.mpp
    gate = _tissue_gate(tissue, f, spec.input_size)
    n, bg = len(spec.classes), spec.background_class
    eye = np.eye(n, dtype=np.float64)

    def values(lg, g):
        lab = np.full((spec.input_size, spec.input_size), bg, np.int64) if lg is None else lg.argmax(0)
        if g is not None:
            lab = np.where(g, lab, bg)
        return np.moveaxis(eye[lab], -1, 0)

    frac, cov, d = segment_slide(slide, spec, model, device, dtype, mask_mpp=mask_mpp, values=values,
                                 n_values=n, gate=gate, batch_size=batch_size, progress=progress)
    w, h = slide.dimensions
    return ArtifactMasks(fractions=frac.astype(np.float32), classes=tuple(spec.classes), downsample=float(d),
                         mpp=float(d * slide.mpp), tissue_class=int(spec.tissue_classes[0]), background_class=bg,
                         covered=cov > 0, slide_id=slide.slide_id, slide_dimensions=(int(w), int(h)),
                         method=spec.name)
