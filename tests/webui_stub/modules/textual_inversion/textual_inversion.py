"""``modules/textual_inversion/textual_inversion.py``: the loaded embeddings by name (only what FreeCure reads;
the stand-in's text encoder does not apply them)."""


class Embedding:
    def __init__(self, vec, name, step=None):
        self.vec = vec
        self.name = name
        self.step = step


class EmbeddingDatabase:
    def __init__(self):
        self.word_embeddings: dict[str, Embedding] = {}

    def register_embedding(self, embedding, model=None):
        self.word_embeddings[embedding.name] = embedding
        return embedding
