"""``modules/sd_samplers_timesteps.py``: the timestep samplers' registry (labels and aliases as in A1111 1.10).
Their sampling is not mirrored: the stand-in's tests only need to know which names they are."""

from modules import sd_samplers_common


def _not_mirrored(model):
    raise NotImplementedError("the stand-in does not sample with the timestep samplers")


samplers_timesteps = [
    ("DDIM", "ddim", ["ddim"], {}),
    ("DDIM CFG++", "ddim_cfgpp", ["ddim_cfgpp"], {}),
    ("PLMS", "plms", ["plms"], {}),
    ("UniPC", "unipc", ["unipc"], {}),
]

samplers_data_timesteps = [
    sd_samplers_common.SamplerData(label, _not_mirrored, aliases, options)
    for label, _funcname, aliases, options in samplers_timesteps
]
