"""``extensions-builtin/sd_forge_lora/networks.py`` of Forge 2 (dfdcbab6), for the stand-in.

``load_networks(names, te_multipliers, unet_multipliers)``: an unchanged LoRA set (``current_lora_hash``, over
file names, multipliers and online mode) reloads nothing, so ``forge_objects_after_applying_lora`` stays as it
is; otherwise, from ``forge_objects_original``, each file in turn goes through ``load_lora_for_models`` (the
file's keys matched to the UNet's and the text encoder's, each side added to a clone of its patcher with
``add_patches``), and the result becomes ``forge_objects`` and ``forge_objects_after_applying_lora``. Files are
read through ``load_lora_state_dict`` (an ``lru_cache`` of 5). The weights change only when a patcher is
loaded (``memory_management.load_models_gpu``).

The stand-in's Lora folder holds a file for every name asked for (``process_network_files``), made for the
model loaded when the file is first read: deterministic low-rank weight differences (``stand_in.lora``) on
the UNet's attention projections and the text encoder's projection. The real module's console messages,
infotext paste handler and metadata are left out."""

from __future__ import annotations

import functools
import os

import network
import torch
from backend.args import dynamic_args
from backend.patcher.lora import load_lora, model_lora_keys_clip, model_lora_keys_unet
from modules import errors, sd_models, shared
from stand_in.lora import LowRankPatcher

_LORA_TARGETS = (".to_q.weight", ".to_k.weight", ".to_v.weight", ".to_out.0.weight", "proj.weight")
_TOO_MANY_MISSES = 12  # the real function's tolerance for unmatched or skipped keys


def _with_patches(patcher, patches, strength, filename, online_mode):
    """A clone of ``patcher`` with ``patches`` added, or ``patcher`` itself when too many keys were skipped."""
    clone = patcher.clone()
    loaded = clone.add_patches(filename=filename, patches=patches, strength_patch=strength, online_mode=online_mode)
    skipped = [key for key in patches if key not in loaded]
    return clone if len(skipped) <= _TOO_MANY_MISSES else patcher


def load_lora_for_models(model, clip, lora, strength_model, strength_clip, filename="default", online_mode=False):
    """One LoRA file on the UNet patcher ``model`` and the CLIP ``clip``: each side that the file has keys for
    becomes a clone with the file's patches at its strength; a file that matches neither is not applied."""
    unet_patches, rest = load_lora(lora, model_lora_keys_unet(model.model) if model is not None else {})
    clip_patches, rest = load_lora(rest, model_lora_keys_clip(clip.cond_stage_model) if clip is not None else {})
    if len(rest) > _TOO_MANY_MISSES:
        return model, clip
    if model is not None and unet_patches:
        model = _with_patches(model, unet_patches, strength_model, filename, online_mode)
    if clip is not None and clip_patches:
        clip = _with_patches(clip, clip_patches, strength_clip, filename, online_mode)
    return model, clip


def _read_stand_in_file(filename):
    """What the real ``load_torch_file(filename, safe_load=True)`` reads from a LoRA file."""
    name = os.path.splitext(os.path.basename(filename))[0]
    objects = shared.sd_model.forge_objects_original
    deltas = LowRankPatcher({})
    tensors = {}
    for prefix, model in (("lora_unet_", objects.unet.model), ("lora_te_", objects.clip.cond_stage_model)):
        for key, weight in model.named_parameters():
            if key.endswith(_LORA_TARGETS):
                tensors[f"{prefix}{key.replace('.', '_')}"] = deltas.delta(name, key, weight)
    return tensors


@functools.lru_cache(maxsize=5)
def load_lora_state_dict(filename):
    return _read_stand_in_file(filename)


def load_network(name, network_on_disk):
    return network.Network(name, network_on_disk)


def _on_disk(name):
    """The file a name means: by file name when the name is an alias several files share, else by alias."""
    if name.lower() in forbidden_network_aliases:
        return available_networks.get(name)
    return available_network_aliases.get(name)


def load_networks(names, te_multipliers=None, unet_multipliers=None, dyn_dims=None):
    current_sd = sd_models.model_data.get_sd_model()
    if current_sd is None:
        return
    loaded_networks.clear()
    missing = [name for name in names if _on_disk(name) is None]
    if missing:
        update_available_networks_by_names(missing)
    files = [_on_disk(name) for name in names]
    for file, name in zip(files, names, strict=True):
        try:
            net = load_network(name, file)
        except Exception as e:
            errors.display(e, f"loading network {file.filename}")
            continue
        net.mentioned_name = name
        file.read_hash()
        loaded_networks.append(net)

    # Weights stored in a float type are patched offline whatever the setting says.
    storage_dtype = current_sd.forge_objects.unet.model.storage_dtype
    online_mode = dynamic_args.get("online_lora", False) and storage_dtype not in (torch.float32, torch.float16,
                                                                                  torch.bfloat16)
    targets = [[file.filename, unet, te, online_mode]
               for file, unet, te in zip(files, unet_multipliers, te_multipliers, strict=True)]
    if current_sd.current_lora_hash == str(targets):
        return  # the same networks are applied already
    current_sd.current_lora_hash = str(targets)
    objects = current_sd.forge_objects
    objects.unet, objects.clip = current_sd.forge_objects_original.unet, current_sd.forge_objects_original.clip
    for filename, strength_model, strength_clip, online in targets:
        objects.unet, objects.clip = load_lora_for_models(objects.unet, objects.clip, load_lora_state_dict(filename),
                                                          strength_model, strength_clip, filename=filename,
                                                          online_mode=online)
    current_sd.forge_objects_after_applying_lora = objects.shallow_copy()


def process_network_files(names=None):
    for name in names or ():
        entry = network.NetworkOnDisk(name, os.path.join(shared.cmd_opts.lora_dir, f"{name}.safetensors"))
        available_networks[name] = entry
        if entry.alias in available_network_aliases:
            forbidden_network_aliases[entry.alias.lower()] = 1
        available_network_aliases[name] = entry
        available_network_aliases[entry.alias] = entry


def update_available_networks_by_names(names):
    process_network_files(names)


def list_available_networks():
    for registry in (available_networks, available_network_aliases, forbidden_network_aliases,
                     available_network_hash_lookup):
        registry.clear()
    forbidden_network_aliases.update({"none": 1, "Addams": 1})
    process_network_files()


extra_network_lora = None

available_networks = {}
available_network_aliases = {}
loaded_networks = []
available_network_hash_lookup = {}
forbidden_network_aliases = {}

list_available_networks()
