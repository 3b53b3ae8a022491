"""``modules/sd_models.py``: the parts processing calls around sampling. Token merging is recorded on
the model (``applied_token_merged_ratio``) but not performed: the stand-in has no tomesd."""

from __future__ import annotations

import contextlib


def apply_token_merging(sd_model, token_merging_ratio):
    current_token_merging_ratio = getattr(sd_model, "applied_token_merged_ratio", 0)
    if current_token_merging_ratio == token_merging_ratio:
        return
    sd_model.applied_token_merged_ratio = token_merging_ratio


def reload_model_weights(sd_model=None, info=None, forced_reload=False):
    from modules import shared

    return shared.sd_model


def apply_alpha_schedule_override(sd_model, p=None):
    pass


class SdModelData:
    """The loaded model (A1111 1.10.1 and Forge 2 keep it here; ``shared.sd_model`` reads it): the stand-in's
    test host sets ``shared.sd_model``, so that is what it hands out."""

    def get_sd_model(self):
        from modules import shared

        return shared.sd_model


model_data = SdModelData()


class SkipWritingToConfig(contextlib.ContextDecorator):
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False
