"""``modules/sd_hijack.py``: ``model_hijack``, its embedding database, and of the hijack only the attention
optimization (``apply_optimizations`` when a model is loaded; the "sdp" one)."""

from modules.textual_inversion.textual_inversion import EmbeddingDatabase


class StableDiffusionModelHijack:
    def __init__(self):
        self.embedding_db = EmbeddingDatabase()

    def hijack(self, m):
        from modules import sd_hijack_optimizations

        sd_hijack_optimizations.apply_sdp()


model_hijack = StableDiffusionModelHijack()
