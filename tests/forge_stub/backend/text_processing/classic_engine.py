"""``backend/text_processing/classic_engine.py`` (Forge 2, dfdcbab6): ``ClassicTextProcessingEngine``
(``tokenize``, ``tokenize_line``, ``chunk_length``, ``id_start``/``id_end``/``id_pad``), over the toy encoder.
Its ``tokenize_line`` chunks as A1111's does but backtracks to a comma at most 20 tokens back whatever the
settings say (``comma_padding_backtrack = 20`` in the function), and finds embeddings in its own
``embeddings`` database."""

from __future__ import annotations

from stand_in.text import ChunkedTokenizer, ToyTextEncoder
from torch import nn

from backend.text_processing.textual_inversion import EmbeddingDatabase


class ClassicTextProcessingEngine(ChunkedTokenizer):
    def __init__(self, text_encoder: ToyTextEncoder, emphasis_name="Original", text_projection=False,
                 minimal_clip_skip=1, clip_skip=1, return_pooled=False, final_layer_norm=True):
        super().__init__()
        self.text_encoder = text_encoder
        self.return_pooled = return_pooled
        self.embeddings = EmbeddingDatabase(self.tokenize)

    def comma_padding_backtrack(self) -> int:
        return 20

    def embedding_at(self, ids, position):
        return self.embeddings.find_embedding_at_position(ids, position)

    def __call__(self, texts):
        z = self.text_encoder.encode_lines(self, list(texts))
        if self.return_pooled:
            z.pooled = z[:, 0]
        return z


class CLIPPatcher:
    """``forge_objects.clip``: the text encoder with LoRA weight patches (``backend/patcher/clip.py``)."""

    def __init__(self, patcher):
        self.patcher = patcher

    def clone(self):
        return CLIPPatcher(self.patcher.clone())

    def add_patches(self, *, filename, patches, strength_patch=1.0, strength_model=1.0, online_mode=False):
        return self.patcher.add_patches(filename=filename, patches=patches, strength_patch=strength_patch,
                                        strength_model=strength_model, online_mode=online_mode)

    @property
    def cond_stage_model(self) -> nn.Module:
        return self.patcher.model
