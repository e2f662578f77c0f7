"""A small network with HoVer-Net's interface and geometry (uint8-range RGB, 256-px patch in, ``tp`` 6 / ``np``
2 / ``hv`` 2 maps of the 164-px centre out): the authors' tile-mode patching, stitching and post-processing
are compared on it (tests/test_parity_hovernet.py and the script that made its fixtures), because the full
network takes ~20 s a patch on a loaded 2-core CPU. Nuclei are where the image is dark; hv points away from
the centre of each dark blob (minus the gradient of the blurred darkness), as a trained network's would; the
types come from seeded random convolutions."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from _seg_weights import seeded_state_dict
from torch import nn

THRESH = 0.55


class StandIn(nn.Module):
    mode = "fast"

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 5, padding=2)
        self.conv2 = nn.Conv2d(16, 6, 5, padding=2)
        self.load_state_dict(seeded_state_dict(self, seed=5))
        r = torch.arange(-7, 8, dtype=torch.float32)
        g = torch.exp(-(r ** 2) / (2 * 3.0 ** 2))
        self.register_buffer("blur", (g[:, None] * g[None, :] / g.sum() ** 2)[None, None])

    def forward(self, x):
        c = slice(46, 210)
        dark = 1 - x.mean(1, keepdim=True) / 255.0
        smooth = F.conv2d(dark, self.blur, padding=7)
        gx = smooth[:, :, c, 47:211] - smooth[:, :, c, 45:209]
        gy = smooth[:, :, 47:211, c] - smooth[:, :, 45:209, c]
        hv = torch.tanh(-torch.cat([gx, gy], 1) * 40)
        nuc = torch.cat([torch.zeros_like(dark[:, :, c, c]), (smooth[:, :, c, c] - THRESH) * 40], 1)
        tp = self.conv2(torch.tanh(self.conv1(x / 255.0 - 0.5) * 4))[:, :, c, c]
        return {"tp": tp * 3, "np": nuc, "hv": hv}
