"""Nucleus segmenters as registry entries (data): resolution, classes, weights and where the facts come from.

Inference lives in :mod:`pathkit.cells` (``pk.tl.segment_cells(tiles, slide, model=<name>)``).
"""
from __future__ import annotations

from dataclasses import dataclass

from .registry import ModelSpec, register

PANNUKE_CLASSES = ("neoplastic", "inflammatory", "connective", "dead", "epithelial")


@dataclass(frozen=True)
class CellSegmenterSpec(ModelSpec):
    """A nucleus instance segmenter.

    ``mpp``: the resolution the model reads (um/px). ``classes``: cell types by output channel (empty: the
    model does not classify; HoVer-Net's channel 0, "no cell", is not a type). ``weights_help``: how to get
    the weights when they are not here.
    """

    kind: str = "cell_segmenter"
    mpp: float = 0.5
    classes: tuple = ()
    weights_help: str = ""


register(CellSegmenterSpec(
    name="watershed", arch="watershed", mpp=0.5,
    source="HistomicsTK's classic nuclei segmentation (colour deconvolution, threshold, distance-transform "
           "watershed); skimage.color.rgb2hed, scipy.ndimage, skimage.segmentation.watershed",
    description="weights-free nuclei: haematoxylin optical density > 0.1, Gaussian 0.25 um, distance-transform "
                "watershed seeded 2.5 um apart, 8 to 400 um^2; no cell types",
    license="BSD-3 (pathkit's own code)",
))

register(CellSegmenterSpec(
    name="instanseg", arch="instanseg_unet", mpp=0.5,
    # the release the authors' model index (instanseg/bioimageio_models/model-index.json) names, version 0.1.1
    weights=("https://github.com/instanseg/instanseg/releases/download/instanseg_models_v0.1.1/brightfield_nuclei.zip",),
    source="https://github.com/instanseg/instanseg (instanseg-torch on PyPI; brightfield_nuclei model, "
           "0.5 um/px)",
    description="InstanSeg brightfield nuclei (Goldsborough et al. 2024): a UNet with seed and embedding "
                "heads and a pixel-classifier clustering, CPU-friendly; no cell types",
    license="Apache-2.0 (code); see the model's release for the weights",
    weights_help=("InstanSeg's brightfield_nuclei weights are not in pathkit and cannot be fetched offline. "
                  "Download brightfield_nuclei.zip from the InstanSeg release (the entry's weights URL), convert "
                  "it once: `pathkit.cells.convert_instanseg('brightfield_nuclei.zip', "
                  "'instanseg_brightfield_nuclei.safetensors')` (reads the TorchScript file's tensors and "
                  "post-processing defaults), then pass weights='instanseg_brightfield_nuclei.safetensors'. "
                  "Without weights use model='watershed'."),
))

register(CellSegmenterSpec(
    name="hovernet", arch="hovernet_fast", mpp=0.25, input_size=256, classes=PANNUKE_CLASSES,
    weights=("hovernet_fast_pannuke_type_tf2pytorch.tar (Google Drive, linked from github.com/vqdang/hover_net)",),
    source="https://github.com/vqdang/hover_net (models/hovernet/net_desc.py, mode 'fast', 6 PanNuke outputs)",
    description="HoVer-Net trained on PanNuke: nuclei with 5 cell types (neoplastic, inflammatory, connective, "
                "dead, epithelial); 256 px patches at 0.25 um/px, 164 px outputs stitched (the authors' tile "
                "mode), Sobel + marker watershed, type by majority vote",
    license="HoVer-Net code MIT; PanNuke weights CC BY-NC-SA 4.0",
    weights_help=("HoVer-Net's PanNuke weights are not in pathkit and cannot be fetched offline: download "
                  "hovernet_fast_pannuke_type_tf2pytorch.tar from the 'PanNuke checkpoint' link of the README of "
                  "github.com/vqdang/hover_net (Google Drive) and pass weights='<path>.tar': it holds tensors only "
                  "(under 'desc'), read with torch.load(weights_only=True), no code runs. Optionally convert it "
                  "once to safetensors: `sd = torch.load(p, weights_only=True)['desc']; "
                  "safetensors.torch.save_file(sd, 'hovernet_pannuke.safetensors')`. weights='random' runs "
                  "untrained weights (tests only)."),
))
