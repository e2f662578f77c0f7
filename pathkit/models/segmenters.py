"""Tissue and artefact segmenters as registry entries (data), built from the authors' published architectures.

Each :class:`SegmenterSpec` says what a segmentation network is and how its authors run it: architecture
builder, input resolution (``mpp``), patch size (``input_size``), normalisation, classes, which classes are
tissue, how the last patch of a row is placed (``edge``), the padding colour, a JPEG round trip the model was
trained with, weights (hub file or URL, sha256 where known) and licence. Inference over a slide lives in
``pathkit.pp._deep_tissue``; ``pk.pp.find_tissue(slide, method=<name>)`` and ``pk.pp.find_artifacts``.

Facts were checked against the authors' code: HEST (hestcore 1.0.4 ``segment_tissue_deep`` and
``TissueSegmenter._load_model``), GrandQC (github.com/cpath-ukk/grandqc @ 045b7a2: ``wsi_tis_detect.py``,
``main.py``, ``wsi_process.py``, ``wsi_slide_info.py``) and TRIDENT's wrappers
(``trident/segmentation_models/load.py``), which host GrandQC's weights as state dicts.
"""
from __future__ import annotations

from dataclasses import dataclass

from .registry import IMAGENET_MEAN, IMAGENET_STD, ModelSpec, register

HEST_REPO = "MahmoodLab/hest-tissue-seg"


@dataclass(frozen=True)
class SegmenterSpec(ModelSpec):
    """A semantic segmentation network over fixed-size patches at a fixed resolution.

    ``input_size`` is the patch side (px at ``mpp``); ``mean``/``std`` normalise RGB in [0, 1].
    ``classes``: class names by output channel. ``tissue_classes``: channels whose softmax probabilities are
    summed into the tissue probability; a pixel is tissue when that sum exceeds ``threshold`` (0.5 = the
    argmax for two classes). ``background_class``: the class given to pixels outside the tissue (artefact
    models). ``edge``: "pad" (patches on a grid from the origin, the last one runs past the image and is
    filled with ``pad_value``, as HEST does) or "shift" (the last patch of a row/column is moved back to end
    at the image edge and only its new pixels are used, as GrandQC does). ``jpeg_quality``: the image at
    ``mpp`` is JPEG-compressed and decoded before inference (GrandQC's tissue model was trained on JPEG).
    ``resample``: PIL filter used to bring the slide to ``mpp``.
    """

    kind: str = "segmenter"
    mpp: float = 1.0
    classes: tuple = ()
    tissue_classes: tuple = ()
    background_class: int | None = None
    threshold: float = 0.5
    edge: str = "pad"
    pad_value: int = 0
    jpeg_quality: int | None = None
    resample: str = "bilinear"
    min_tissue_px: int = 0
    drop_prefixes: tuple = ()
    weights_help: str = ""


# Extra architecture builders: name -> callable(spec) -> torch.nn.Module (register_segmenter_builder).
SEGMENTER_BUILDERS: dict = {}


def register_segmenter_builder(name: str, fn) -> None:
    """Let entries use ``arch=name``: `fn(spec)` returns the network (random weights)."""
    SEGMENTER_BUILDERS[name] = fn


def build_segmenter(spec: SegmenterSpec):
    """The network of `spec` with random weights (torch.nn.Module, eval mode); its forward gives logits
    (N x C x H x W) or torchvision's ``{"out": logits}``."""
    if spec.arch in SEGMENTER_BUILDERS:
        model = SEGMENTER_BUILDERS[spec.arch](spec)
    elif spec.arch == "torchvision.deeplabv3_resnet50":
        from torchvision.models.segmentation import deeplabv3_resnet50

        model = deeplabv3_resnet50(weights=None, weights_backbone=None, num_classes=len(spec.classes),
                                   aux_loss=False, **spec.kwargs)
    elif spec.arch in ("smp.Unet", "smp.UnetPlusPlus"):
        try:
            import segmentation_models_pytorch as smp
        except ImportError as e:  # pragma: no cover - a core dependency
            raise ImportError(f"segmenter {spec.name!r} needs segmentation-models-pytorch: "
                              "pip install segmentation-models-pytorch") from e
        cls = getattr(smp, spec.arch.split(".", 1)[1])
        model = cls(encoder_weights=None, classes=len(spec.classes), activation=None, **spec.kwargs)
    else:
        raise ValueError(f"segmenter {spec.name!r}: unknown architecture builder {spec.arch!r}")
    return model.eval()


# ------------------------------------------------------------------------------------------------ entries
_GRANDQC_LICENSE = ("CC BY-NC-SA 4.0 (GrandQC README and LICENSE; non-commercial, share-alike); "
                    "cite Weng et al., Nat Commun 2024")
_GRANDQC_ART_CLASSES = ("unused", "tissue", "fold", "darkspot_foreign_object", "pen_marking",
                        "edge_air_bubble", "out_of_focus", "background")

register(SegmenterSpec(
    name="hest", arch="torchvision.deeplabv3_resnet50", input_size=512, mpp=1.0,
    mean=IMAGENET_MEAN, std=IMAGENET_STD, classes=("background", "tissue"), tissue_classes=(1,),
    threshold=0.5, edge="pad", pad_value=0, resample="bilinear",
    weights=(f"hf_hub:{HEST_REPO}/deeplabv3_seg_v4.ckpt",), drop_prefixes=("aux_classifier.",),
    license="CC BY-NC-SA 4.0 (model card of MahmoodLab/hest-tissue-seg; HEST repository LICENSE.md)",
    source="https://github.com/mahmoodlab/HEST (hestcore 1.0.4 segment_tissue_deep: 512-px patches at 1 um/px, "
           "ImageNet normalisation, argmax of 2 classes; checkpoint 'state_dict' with 'model.' prefix, aux "
           "head dropped) / https://huggingface.co/MahmoodLab/hest-tissue-seg",
    description="HEST tissue segmenter: torchvision DeepLabV3-ResNet50 with a 2-class head, fine-tuned on "
                "HEST-1k and ACROBAT (H&E and IHC)",
    weights_help=(f"The checkpoint is deeplabv3_seg_v4.ckpt (486 MB, a Lightning checkpoint of tensors only) on "
                  f"https://huggingface.co/{HEST_REPO} (public, not gated): `huggingface-cli download "
                  f"{HEST_REPO} deeplabv3_seg_v4.ckpt`, or pass weights=PATH."),
    extra={"sha256": "unknown (not published; the hub shows LFS hashes per file)", "trained_on": "HEST-1k, ACROBAT"},
))

register(SegmenterSpec(
    name="grandqc", arch="smp.UnetPlusPlus", kwargs={"encoder_name": "timm-efficientnet-b0"},
    input_size=512, mpp=10.0, mean=IMAGENET_MEAN, std=IMAGENET_STD, classes=("tissue", "background"),
    tissue_classes=(0,), threshold=0.5, edge="shift", pad_value=0, jpeg_quality=80, resample="lanczos",
    weights=(f"hf_hub:{HEST_REPO}/Tissue_Detection_MPP10.pth",),
    license=_GRANDQC_LICENSE,
    source="https://github.com/cpath-ukk/grandqc (01_WSI_inference_OPENSLIDE_QC/wsi_tis_detect.py: thumbnail at "
           "10 um/px, JPEG q80 round trip with OpenCV, 512-px patches, last patch shifted to the edge, "
           "argmax; class 0 = tissue) / TRIDENT GrandQCSegmenter (state dict on MahmoodLab/hest-tissue-seg)",
    description="GrandQC tissue detector: UNet++ with a timm-EfficientNet-B0 encoder at 10 um/px",
    weights_help=(f"TRIDENT hosts the state dict as Tissue_Detection_MPP10.pth on https://huggingface.co/{HEST_REPO} "
                  "(`huggingface-cli download MahmoodLab/hest-tissue-seg Tissue_Detection_MPP10.pth`); the "
                  "original is on Zenodo (record 14507273)."),
    extra={"sha256": "unknown", "paper": "https://doi.org/10.1038/s41467-024-54769-y"},
))

_ART_COMMON = {
    "arch": "smp.Unet", "kwargs": {"encoder_name": "timm-efficientnet-b0"}, "input_size": 512,
    "mean": IMAGENET_MEAN, "std": IMAGENET_STD, "classes": _GRANDQC_ART_CLASSES, "tissue_classes": (1,),
    "background_class": 7, "threshold": 0.5, "edge": "shift", "pad_value": 0, "resample": "lanczos", "min_tissue_px": 50,
    "license": _GRANDQC_LICENSE,
}
_ZENODO_ART = "https://zenodo.org/records/14041538"
_CONVERT = ("GrandQC's Zenodo files are pickled whole models, which pathkit does not unpickle. Convert one "
            "once, in a separate Python session with segmentation-models-pytorch installed and only if you "
            "trust the file: `m = torch.load('GrandQC_MPP{v}.pth', weights_only=False, map_location='cpu'); "
            "safetensors.torch.save_file(m.state_dict(), 'grandqc_mpp{v}.safetensors')`, then pass "
            "weights='grandqc_mpp{v}.safetensors'.")

register(SegmenterSpec(
    name="grandqc_artifact", mpp=1.0, weights=(f"hf_hub:{HEST_REPO}/GrandQC_MPP1_state_dict.pth",),
    source="https://github.com/cpath-ukk/grandqc (main.py / wsi_process.py: 512-px patches at the model's "
           "um/px, argmax of 8 classes, background outside GrandQC's tissue map, patches with <= 50 tissue px "
           "skipped) / TRIDENT GrandQCArtifactSegmenter (smp.Unet, state dict on MahmoodLab/hest-tissue-seg)",
    description="GrandQC artefact segmenter, 10x model (1 um/px): UNet with a timm-EfficientNet-B0 encoder, "
                "classes tissue, fold, dark spot & foreign object, pen marking, edge & air bubble, out of focus, "
                "background",
    weights_help=(f"TRIDENT hosts the state dict as GrandQC_MPP1_state_dict.pth on https://huggingface.co/{HEST_REPO}; "
                  f"the original GrandQC_MPP1.pth is on Zenodo ({_ZENODO_ART}). " + _CONVERT.format(v="1")),
    extra={"sha256": "unknown", "magnification": "10x"}, **_ART_COMMON,
))
for _v, _mpp, _mag in (("15", 1.5, "7x"), ("2", 2.0, "5x")):
    register(SegmenterSpec(
        name=f"grandqc_artifact_mpp{_v}", mpp=_mpp, weights=(),
        source="https://github.com/cpath-ukk/grandqc (main.py --mpp_model; Zenodo record 14041538)",
        description=f"GrandQC artefact segmenter, {_mag} model ({_mpp:g} um/px; GrandQC's default is the 7x one)",
        weights_help=f"GrandQC_MPP{_v}.pth is on Zenodo ({_ZENODO_ART}). " + _CONVERT.format(v=_v),
        extra={"sha256": "unknown", "magnification": _mag}, **_ART_COMMON,
    ))


def get_segmenter(name) -> SegmenterSpec:
    """The registry entry of a segmenter (a name or a SegmenterSpec)."""
    from .registry import get_spec

    spec = get_spec(name, kind="segmenter")
    if not isinstance(spec, SegmenterSpec):
        raise TypeError(f"{spec.name!r} is registered as a segmenter but is not a SegmenterSpec")
    return spec
