"""A Hugging Face hub cache folder made locally, for offline loading tests (HF_HUB_OFFLINE=1)."""
from __future__ import annotations

from pathlib import Path

REV = "0123456789abcdef0123456789abcdef01234567"


def hf_cache(root: Path, repo: str, files: dict, rev: str = REV) -> Path:
    """models--org--name/snapshots/<rev>/<file> (written by files[name](path)) and refs/main -> rev."""
    org, name = repo.split("/")
    base = Path(root) / f"models--{org}--{name}"
    snap = base / "snapshots" / rev
    snap.mkdir(parents=True)
    (base / "refs").mkdir()
    (base / "refs" / "main").write_text(rev)
    for fname, writer in files.items():
        writer(snap / fname)
    return snap
