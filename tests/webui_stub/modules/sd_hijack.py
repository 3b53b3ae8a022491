"""``modules/sd_hijack.py``: ``model_hijack`` and its embedding database (nothing of the hijack itself)."""

from modules.textual_inversion.textual_inversion import EmbeddingDatabase


class StableDiffusionModelHijack:
    def __init__(self):
        self.embedding_db = EmbeddingDatabase()


model_hijack = StableDiffusionModelHijack()
