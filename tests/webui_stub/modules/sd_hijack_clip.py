"""``modules/sd_hijack_clip.py``: the WebUI's CLIP wrappers (``tokenize``, ``tokenize_line``, chunked
``forward``), here over the toy encoder of ``stand_in.text``."""

from __future__ import annotations

import torch
from stand_in.text import ChunkedTokenizer, PromptChunk, PromptChunkFix, ToyTextEncoder
from torch import nn

__all__ = ["FrozenCLIPEmbedderForSDXLWithCustomWords", "FrozenCLIPEmbedderWithCustomWords", "PromptChunk",
           "PromptChunkFix"]


class FrozenCLIPEmbedderWithCustomWords(ChunkedTokenizer, nn.Module):
    """``shared.sd_model.cond_stage_model`` of SD1: ``forward(texts)`` -> (B, 77 * chunks, dim)."""

    def __init__(self, dim: int, seed: int = 11):
        ChunkedTokenizer.__init__(self)
        nn.Module.__init__(self)
        self.wrapped = ToyTextEncoder(dim, seed)
        self.return_pooled = False

    def forward(self, texts: list[str]) -> torch.Tensor:
        z = self.wrapped.encode_lines(self, list(texts))
        if self.return_pooled:
            z.pooled = z[:, 0]
        return z


class FrozenCLIPEmbedderForSDXLWithCustomWords(FrozenCLIPEmbedderWithCustomWords):
    """``shared.sd_model.conditioner.embedders[0]`` of SDXL (the CLIP-L half with ``tokenize_line``)."""
