"""One runner per cell segmenter entry: RGB at the entry's mpp -> (labels, class probabilities, haematoxylin)."""
from __future__ import annotations

from ..errors import ModelNotFoundError, WeightsError
from ._watershed import WatershedParams, haematoxylin, params_dict, watershed_nuclei


class _Runner:
    def __init__(self, spec, params=None):
        self.spec = spec
        self.name = spec.name
        self.mpp = float(spec.mpp)
        self.classes = tuple(spec.classes)
        self.params = {}
        self.weights_info = "none"


class _WatershedRunner(_Runner):
    def __init__(self, spec, params=None):
        super().__init__(spec)
        if params is not None and not isinstance(params, WatershedParams):
            params = WatershedParams(**dict(params))
        self.p = params or WatershedParams()
        self.params = params_dict(self.p)

    def __call__(self, rgb):
        labels, h = watershed_nuclei(rgb, self.mpp, self.p)
        return labels, None, h


class _InstanSegRunner(_Runner):
    def __init__(self, spec, weights, params=None, device="auto"):
        from ._instanseg import InstanSegModel

        super().__init__(spec)
        self.model = InstanSegModel(weights, params=params, device=device)
        if self.model.pixel_size:
            self.mpp = self.model.pixel_size  # the resolution the weights were trained at
        self.params = self.model.params.as_dict()
        self.weights_info = str(weights)

    def __call__(self, rgb):
        return self.model(rgb), None, haematoxylin(rgb)


def cell_segmenter(model: str = "instanseg", *, weights=None, params=None, device="auto"):
    """The runner of a cell segmenter entry (``pathkit.models.list_models("cell_segmenter")``)."""
    from ..models.registry import get_spec

    try:
        spec = get_spec(model, kind="cell_segmenter")
    except ModelNotFoundError:
        from ..models.registry import registered

        known = [s.name for s in registered("cell_segmenter")]
        raise ModelNotFoundError(f"unknown cell segmenter {model!r}; known: {known} (or register a "
                                 "pathkit.models.cell_segmenters.CellSegmenterSpec)") from None
    if spec.arch == "watershed":
        return _WatershedRunner(spec, params)
    if spec.arch == "instanseg_unet" and weights is not None:
        return _InstanSegRunner(spec, weights, params, device)
    if params is not None and spec.arch != "instanseg_unet":
        raise ValueError(f"params= is for model='watershed' or 'instanseg'; {spec.name!r} takes weights=")
    if spec.arch.startswith("hovernet"):
        from ._hovernet import HoVerNetRunner

        return HoVerNetRunner(spec, weights, device)
    # no weights here (or no inference code yet): never fall back silently to another model
    where = f"weights={weights!r}" if weights is not None else "no weights given"
    raise WeightsError(f"cell segmenter {spec.name!r} cannot run here ({where}). {spec.weights_help}")


__all__ = ["cell_segmenter", "haematoxylin"]
