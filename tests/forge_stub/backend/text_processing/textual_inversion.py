"""``backend/text_processing/textual_inversion.py`` (Forge 2, dfdcbab6): each text engine's own database of
embeddings, keyed by its tokenizer (here the engine's ``tokenize``); the lookup is A1111's."""

from modules.textual_inversion.textual_inversion import Embedding
from modules.textual_inversion.textual_inversion import EmbeddingDatabase as _A1111Database

__all__ = ["Embedding", "EmbeddingDatabase"]


class EmbeddingDatabase(_A1111Database):
    def __init__(self, tokenizer, expected_shape=-1):
        super().__init__()
        self.tokenizer = tokenizer
        self.expected_shape = expected_shape

    def register_embedding(self, embedding):
        return self.register_embedding_by_name(embedding, embedding.name)

    def register_embedding_by_name(self, embedding, name):
        return self.register_ids(embedding, name, self.tokenizer([name])[0])
