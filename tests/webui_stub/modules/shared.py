"""``modules/shared.py``: the WebUI's global singletons (settings, state, command line, loaded model)."""

from __future__ import annotations

import argparse
import os

from modules import devices, options, paths, shared_state

OptionInfo = options.OptionInfo

# The subset of the real option defaults (shared_options.py) that the stand-in's code paths read.
_option_defaults = {
    "batch_cond_uncond": True,
    "pad_cond_uncond": False,
    "pad_cond_uncond_v0": False,
    "skip_early_cond": 0.0,
    "s_min_uncond": 0.0,
    "s_min_uncond_all": False,
    "s_churn": 0.0,
    "s_tmin": 0.0,
    "s_tmax": 0.0,
    "s_noise": 1.0,
    "eta_ancestral": 1.0,
    "token_merging_ratio": 0.0,
    "token_merging_ratio_hr": 0.0,
    "initial_noise_multiplier": 1.0,
    "upcast_attn": False,
    "cross_attention_optimization": "Automatic",
    "eta_noise_seed_delta": 0,
    "randn_source": "CPU",
    "sgm_noise_multiplier": False,
    "img2img_fix_steps": False,
    "img2img_extra_noise": 0.0,
    "img2img_background_color": "#ffffff",
    "overlay_inpaint": True,
    "inpainting_mask_weight": 1.0,
    "token_merging_ratio_img2img": 0.0,
    "always_discard_next_to_last_sigma": False,
    "use_old_karras_scheduler_sigmas": False,
    "enable_quantization": False,
    "use_old_scheduling": False,
    "hires_fix_use_firstpass_conds": False,
    "CLIP_stop_at_last_layers": 1,
    "comma_padding_backtrack": 20,
    "emphasis": "Original",
    "sd_vae_encode_method": "Full",
    "sd_vae_decode_method": "Full",
    "live_previews_enable": False,
    "multiple_tqdm": True,
    "infotext_skip_pasting": [],
    "add_model_hash_to_info": False,
    "add_model_name_to_info": False,
    "add_version_to_infotext": False,
    "enable_pnginfo": True,
    "return_grid": False,
    "grid_save": False,
    "samples_save": False,
    "face_restoration_model": "CodeFormer",
    "prioritized_callbacks_script_process": [],
}

opts = options.Options({k: OptionInfo(v) for k, v in _option_defaults.items()})

cmd_opts = argparse.Namespace(
    data_dir=paths.data_path,
    models_dir=paths.models_path,
    gfpgan_models_path=os.path.join(paths.models_path, "GFPGAN"),
    codeformer_models_path=os.path.join(paths.models_path, "Codeformer"),
    embeddings_dir=os.path.join(paths.data_path, "embeddings"),
    lora_dir=os.path.join(paths.models_path, "Lora"),
    nowebui=False,
    api=False,
    no_prompt_history=True,
    skip_install=True,
    lowvram=False,
    medvram=False,
    xformers=False,
    disable_safe_unpickle=False,
)

state = shared_state.State()
device = devices.device

sd_model = None  # set by the test host (tests/webui_host.py) to a stand-in LatentDiffusion
loaded_hypernetworks: list = []

latent_upscale_default_mode = "Latent"
latent_upscale_modes = {
    "Latent": {"mode": "bilinear", "antialias": False},
    "Latent (nearest)": {"mode": "nearest", "antialias": False},
}
sd_upscalers: list = []


class TotalTQDM:
    """Console progress bar over all jobs; the stand-in only counts."""

    def __init__(self) -> None:
        self.total = 0
        self.count = 0

    def reset(self) -> None:
        self.count = 0

    def update(self) -> None:
        self.count += 1

    def updateTotal(self, new_total: int) -> None:
        self.total = new_total

    def clear(self) -> None:
        self.count = 0


total_tqdm = TotalTQDM()
