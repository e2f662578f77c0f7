"""InstanSeg's UNet built by pathkit against the authors' class (instanseg-torch), random weights both ways."""
from __future__ import annotations

import pytest
import torch

from pathkit.cells._instanseg_net import InstanSegUNet


@pytest.mark.parametrize("out_channels,layers,norm", [
    ([[2, 2, 1]], (256, 128, 64, 32), "BATCH"),       # brightfield nuclei: 2 coords, 2 sigmas, 1 seed map
    ([[2, 2, 1], [2, 2, 1]], (64, 32, 16), "INSTANCE"),  # cells and nuclei, instance norm
])
def test_instanseg_unet_matches_the_authors(out_channels, layers, norm):
    ref_mod = pytest.importorskip("instanseg.utils.models.InstanSeg_UNet")
    torch.manual_seed(0)
    ref = ref_mod.InstanSeg_UNet(3, out_channels, layers=list(layers), norm=norm, act="ReLU").eval()
    sd = ref.state_dict()
    for k, v in sd.items():  # random BatchNorm statistics, so that eval-mode normalisation is exercised
        if k.endswith("running_var"):
            v.uniform_(0.5, 2.0)
        elif k.endswith("running_mean"):
            v.normal_(0, 0.1)
    ref.load_state_dict(sd)
    mine = InstanSegUNet(3, out_channels, layers=layers, norm=norm).eval()
    missing, unexpected = mine.load_state_dict(sd, strict=True), None
    assert not missing.missing_keys and not missing.unexpected_keys and unexpected is None
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        a, b = ref(x), mine(x)
    assert a.shape == b.shape == (2, sum(map(sum, out_channels)), 64, 64)
    assert (a - b).abs().max().item() <= 1e-5
