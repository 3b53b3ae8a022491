"""``modules/textual_inversion/textual_inversion.py`` (A1111 v1.10.1, 82a973c0): the loaded embeddings by name,
and by the token ids of their names (``ids_lookup``), which ``tokenize_line`` looks up at every position. The
stand-in's text encoder puts no vectors in the chunk: the embedding's ``vectors`` positions hold token 0."""


class Embedding:
    def __init__(self, vec, name, step=None):
        self.vec = vec
        self.name = name
        self.step = step
        self.shape = None
        self.vectors = 0  # how many tokens it takes: set from the vectors when loaded from a file


class EmbeddingDatabase:
    def __init__(self):
        self.ids_lookup: dict[int, list] = {}
        self.word_embeddings: dict[str, Embedding] = {}

    def register_embedding(self, embedding, model):
        return self.register_embedding_by_name(embedding, model, embedding.name)

    def register_embedding_by_name(self, embedding, model, name):
        return self.register_ids(embedding, name, model.cond_stage_model.tokenize([name])[0])

    def register_ids(self, embedding, name, ids):
        """Under the first token id of ``name``, longest names first; ``embedding`` None unregisters."""
        same_start = [entry for entry in self.ids_lookup.get(ids[0], []) if entry[1].name != name]
        if embedding is not None:
            same_start.append((ids, embedding))
            self.word_embeddings[name] = embedding
        else:
            self.word_embeddings.pop(name, None)
        if same_start:
            self.ids_lookup[ids[0]] = sorted(same_start, key=lambda entry: len(entry[0]), reverse=True)
        else:
            self.ids_lookup.pop(ids[0], None)
        return embedding

    def find_embedding_at_position(self, tokens, offset):
        """(embedding, length of its name in tokens) of the longest name at ``tokens[offset:]``, or (None, None)."""
        for ids, embedding in self.ids_lookup.get(tokens[offset], []):
            if tokens[offset:offset + len(ids)] == ids:
                return embedding, len(ids)
        return None, None
