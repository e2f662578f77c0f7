"""The generated 100k-tile slide that several benchmarks share (cached under benchmarks/results/cache)."""
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
CACHE = RESULTS / "cache"
SIDE = 81920  # px at 0.5 mpp: 320 x 320 tiles of 256 px
BLOBS = [{"kind": "rect", "x0": 256, "y0": 256, "x1": SIDE - 256, "y1": SIDE - 256}]  # a one-tile margin
SLIDE = CACHE / "synthetic_100k.svs"
