"""``backend/sampling/sampling_function.py``: Forge's CFG. Entries to run are ``[cond parts..., uncond]``;
compatible ones (same context length) go into one UNet call **in reversed order** (usually
``[uncond, cond]``), with ``transformer_options`` ``cond_or_uncond`` (0 cond, 1 uncond per chunk),
``sigmas``, ``cond_mark``, ``cond_indices``, ``uncond_indices``. At ``cond_scale == 1`` uncond is skipped
unless ``model_options["disable_cfg1_optimization"]``. The patcher's ControlNet linked list is asked for its
control once per UNet call (``c["control"] = control.get_control(...)``, Forge 2 dfdcbab6 L262); the stand-in
UNet takes ``control`` and adds nothing."""

from __future__ import annotations

import math

import torch

from backend.sampling.condition import compile_conditions, compile_weighted_conditions


def compute_cond_mark(cond_or_uncond, sigmas):
    size = int(sigmas.shape[0])
    return torch.tensor([cx for cx in cond_or_uncond for _ in range(size)]).to(sigmas)


def compute_cond_indices(cond_or_uncond, sigmas):
    cond_indices, uncond_indices = [], []
    for i, cx in enumerate(compute_cond_mark(cond_or_uncond, sigmas)):
        (cond_indices if cx < 0.5 else uncond_indices).append(i)
    return cond_indices, uncond_indices


def calc_cond_uncond_batch(model, cond, uncond, x_in, timestep, model_options, control=None):
    to_run = [(entry, 0) for entry in cond] + ([(entry, 1) for entry in uncond] if uncond is not None else [])
    out_cond = torch.zeros_like(x_in)
    out_uncond = torch.zeros_like(x_in)
    while to_run:
        first = to_run[0][0]["model_conds"]["c_crossattn"].shape[1]
        to_batch = [i for i, (entry, _) in enumerate(to_run) if entry["model_conds"]["c_crossattn"].shape[1] == first]
        to_batch.reverse()
        entries = [to_run[i] for i in to_batch]
        for i in sorted(to_batch, reverse=True):
            to_run.pop(i)
        cond_or_uncond = [kind for _, kind in entries]
        input_x = torch.cat([x_in] * len(entries))
        timestep_ = torch.cat([timestep] * len(entries))
        c = {"c_crossattn": torch.cat([e["model_conds"]["c_crossattn"] for e, _ in entries])}
        if "y" in entries[0][0]["model_conds"]:
            c["y"] = torch.cat([e["model_conds"]["y"] for e, _ in entries])
        transformer_options = dict(model_options.get("transformer_options", {}))
        transformer_options["cond_or_uncond"] = cond_or_uncond[:]
        transformer_options["sigmas"] = timestep
        transformer_options["cond_mark"] = compute_cond_mark(cond_or_uncond, timestep)
        transformer_options["cond_indices"], transformer_options["uncond_indices"] = \
            compute_cond_indices(cond_or_uncond, timestep)
        c["transformer_options"] = transformer_options
        if control is not None:
            c["control"] = control.get_control(input_x, timestep_, dict(c), len(cond_or_uncond))
            c["control_model"] = control
        output = model.apply_model(input_x, timestep_, **c).chunk(len(entries))
        for (entry, kind), out in zip(entries, output, strict=True):
            if kind == 0:
                out_cond += out * entry.get("strength", 1.0)
            else:
                out_uncond += out
    return out_cond, out_uncond


def sampling_function_inner(model, x, timestep, uncond, cond, cond_scale, model_options=None, seed=None,
                            return_full=False, control=None):
    model_options = model_options or {}
    if math.isclose(cond_scale, 1.0) and not model_options.get("disable_cfg1_optimization", False):
        uncond_ = None
    else:
        uncond_ = uncond
    cond_pred, uncond_pred = calc_cond_uncond_batch(model, cond, uncond_, x, timestep, model_options, control)
    # at scale 1 the weighted cond parts are the prediction and uncond is not needed
    cfg_result = cond_pred if uncond_ is None else uncond_pred + (cond_pred - uncond_pred) * cond_scale
    if return_full:
        return cfg_result, cond_pred, uncond_pred
    return cfg_result


def sampling_function(self, denoiser_params, cond_scale, cond_composition):
    unet_patcher = self.p.sd_model.forge_objects.unet
    model = unet_patcher.model
    x = denoiser_params.x
    timestep = denoiser_params.sigma
    uncond = compile_conditions(denoiser_params.text_uncond)
    cond = compile_weighted_conditions(denoiser_params.text_cond, cond_composition)
    model_options = unet_patcher.model_options
    seed = self.p.seeds[0]
    for modifier in model_options.get("conditioning_modifiers", []):
        model, x, timestep, uncond, cond, cond_scale, model_options, seed = modifier(
            model, x, timestep, uncond, cond, cond_scale, model_options, seed)
    return sampling_function_inner(model, x, timestep, uncond, cond, cond_scale, model_options, seed,
                                   return_full=True, control=unet_patcher.controlnet_linked_list)


def sampling_prepare(unet, x):
    """Forge loads the UNet patcher (and the patchers it brings along) here: its LoRA set is merged."""
    from backend import memory_management

    additional = unet.extra_model_patchers_during_sampling
    if unet.controlnet_linked_list is not None:
        additional += unet.controlnet_linked_list.get_models()  # the real code extends the list in place too
    memory_management.load_models_gpu(models=[unet, *additional])


def sampling_cleanup(unet):
    pass
