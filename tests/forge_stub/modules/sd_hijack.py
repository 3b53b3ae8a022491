"""``modules/sd_hijack.py`` of Forge 2 (dfdcbab6): ``model_hijack`` does nothing and has no embedding database;
embeddings live in each text engine (``backend/text_processing/textual_inversion.py``)."""


class StableDiffusionModelHijack:
    def apply_optimizations(self, option=None):
        pass

    def hijack(self, m):
        pass

    def undo_hijack(self, m):
        pass

    def get_prompt_lengths(self, text, cond_stage_model):
        from modules import shared

        return shared.sd_model.get_prompt_lengths_on_ui(text)


model_hijack = StableDiffusionModelHijack()
