"""Text tokenizers of the image-text models: CONCH's (the file conch-fork ships) and CLIP's BPE."""
from __future__ import annotations

import importlib.util
import os
from functools import lru_cache
from pathlib import Path

import torch
import torch.nn.functional as F

from ..errors import WeightsError


# ----------------------------------------------------------------------------------------- tokenizers
def conch_tokenizer_path(path=None) -> Path:
    """Where CONCH's tokenizer file is: `path`, $PATHKIT_CONCH_TOKENIZER, or the installed `conch` package."""
    candidates = [path, os.environ.get("PATHKIT_CONCH_TOKENIZER")]
    spec = importlib.util.find_spec("conch")
    for loc in (spec.submodule_search_locations or []) if spec else []:
        candidates.append(Path(loc) / "open_clip_custom" / "tokenizers" / "conch_byte_level_bpe_uncased.json")
    for c in candidates:
        if c and Path(c).is_file():
            return Path(c)
    raise WeightsError(
        "CONCH's tokenizer (conch_byte_level_bpe_uncased.json) was not found. It ships in the `conch` package: "
        "`pip install conch-fork` (or mahmoodlab/CONCH from GitHub), or pass tokenizer=PATH / set "
        "PATHKIT_CONCH_TOKENIZER.")


class ConchTokenizer:
    """CONCH's byte-level BPE: 127 tokens (<start_of_text> ... <end_of_text>, <pad> = 0) + one <pad> for CLS.

    Same settings as CONCH's `custom_tokenizer.tokenize`, called through the tokenizer itself because
    `batch_encode_plus`, which CONCH's function uses, is gone from transformers 5.
    """

    def __init__(self, path=None, context_length: int = 128):
        from transformers import PreTrainedTokenizerFast

        self.path = conch_tokenizer_path(path)
        self.context_length = context_length
        self.tok = PreTrainedTokenizerFast(tokenizer_file=str(self.path), bos_token="<start_of_text>",
                                           eos_token="<end_of_text>", pad_token="<pad>")

    def __call__(self, texts: list[str]) -> torch.Tensor:
        enc = self.tok(list(texts), max_length=self.context_length - 1, add_special_tokens=True,
                       return_token_type_ids=False, truncation=True, padding="max_length", return_tensors="pt")
        return F.pad(enc["input_ids"], (0, 1), value=self.tok.pad_token_id)


class ClipBPETokenizer:
    """The OpenAI CLIP BPE shipped with open_clip (bpe_simple_vocab_16e6): <start_of_text>=49406,
    <end_of_text>=49407, zero padding, truncated to `context_length` keeping <end_of_text>."""

    def __init__(self, context_length: int = 77):
        from open_clip.tokenizer import SimpleTokenizer

        self.context_length = context_length
        self.tok = SimpleTokenizer(context_length=context_length)

    def __call__(self, texts: list[str]) -> torch.Tensor:
        return self.tok(list(texts), context_length=self.context_length)


@lru_cache(maxsize=8)
def get_tokenizer(kind: str, path: str | None = None, context_length: int | None = None):
    """The real tokenizer of a clip entry ("conch" or "clip_bpe"), from files shipped in installed packages."""
    if kind == "conch":
        return ConchTokenizer(path, context_length or 128)
    if kind == "clip_bpe":
        return ClipBPETokenizer(context_length or 77)
    raise ValueError(f"unknown tokenizer {kind!r}; known: 'conch', 'clip_bpe'")
