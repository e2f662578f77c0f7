"""Small configurations and engine stand-ins shared by the model and engine tests (test-local data)."""
from __future__ import annotations

import torch

# the CLIP models of the registry at a width and depth that build in milliseconds
CONCH_SMALL = {"embed_dim": 32, "vision": {"image_size": 64, "width": 48, "layers": 2, "heads": 2},
               "text": {"width": 48, "heads": 2, "layers": 2}}
QUILT_SMALL = {"embed_dim": 32, "vision_cfg": {"image_size": 64, "layers": 2, "width": 64, "head_width": 32,
                                               "patch_size": 32},
               "text_cfg": {"width": 32, "heads": 2, "layers": 2}}
PLIP_SMALL = {"projection_dim": 32,
              "vision": {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
                         "num_attention_heads": 2, "image_size": 64},
              "text": {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2}}


class NoisyRunner:
    """An OpenVINO stand-in whose output is off by 1e-3: what a broken export would give."""
    engine, precision, num_threads = "openvino", "f32", 1

    def __init__(self, path, threads, precision):
        import onnxruntime as ort

        self.s = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])

    def __call__(self, x):
        return torch.from_numpy(self.s.run(None, {"pixels": x.numpy()})[0]) + 1e-3
