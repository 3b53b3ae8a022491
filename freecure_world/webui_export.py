"""The world's model as the A1111 WebUI loads it: an ldm single-file checkpoint with its ``.yaml``, the
identity LoRA in kohya format.

    python -m freecure_world.webui_export --webui /path/to/stable-diffusion-webui

writes ``models/Stable-diffusion/freecure-world.safetensors`` (+ ``.yaml`` and the text encoder's
``freecure-world-clip/`` config and tokenizer) and ``models/Lora/ohwx.safetensors``. Prompt it as the
world is prompted, without commas (the world's word tokenizer skips punctuation, CLIP's does not):
``photo of ohwx person red hair glasses <lora:ohwx:1>``.

ldm normalizes with 32 groups everywhere; the world's UNet and VAE use 8 groups at widths 16 and 32,
which cannot be cut into 32 groups with the same statistics. The export is exact all the same: every
activation of width ``c`` becomes one of width ``4c`` that holds each channel several times (a *layout*:
which original channel each ldm channel copies), so that every 32-group norm sees groups that copy one of
the original 8 groups, and every conv and linear layer reads its input copies weighted by ``1 / copies``.
Attention heads keep their width (4 heads of ``c/4`` become 16, each a copy of one). Where a skip
connection concatenates a 32-wide and a 16-wide tensor, the original groups straddle the seam, and those
tensors get layouts that put the straddling group right at it (``_SEAM_WIDE``, ``_SEAM_NARROW``). Every
norm's layout is checked as it is written. The text encoder keeps its width; its embedding table moves to
CLIP's token ids (every world word, the trigger ``ohwx`` too, is one CLIP token), every other token the
world's unknown word.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import torch
from safetensors.torch import save_file
from torch import Tensor

from . import world
from .models import CONTEXT_DIM, IMAGE_SIZE, UNET_CONFIG, VAE_CONFIG, WorldModel, load_world_model
from .text import END, START, UNKNOWN

TILE = 4  # 8 groups x 4 = ldm's 32
LDM_GROUPS = 32
CHECKPOINT_NAME = "freecure-world"
CLIP_TOKENIZER_REPO = "openai/clip-vit-large-patch14"
TOKENIZER_FILES = ("vocab.json", "merges.txt")

Layout = list[int | None]  # ldm channel -> original channel (None: a channel the original lacks, weight 0)


def tile(width: int) -> Layout:
    return list(range(width)) * TILE


def identity(width: int) -> Layout:
    return list(range(width))


def geglu(hidden: int) -> Layout:
    """GEGLU's projection output: its two halves (value, gate) tiled each, so ``chunk(2)`` splits the copies."""
    return tile(hidden) + [hidden + c for c in tile(hidden)]


# A 32-wide tensor concatenated before a 16-wide one (original groups of 6; the sixth group holds
# channels 30, 31 of the wide one and 0-3 of the narrow one): pairs of groups 0-1 and 2-3 repeated, then
# 24-31 once, so the wide part ends on channels 30, 31 and its 4-channel groups stay whole as well.
_SEAM_WIDE = [*list(range(12)) * 5, *list(range(12, 24)) * 5, *range(24, 32)]
# The 16-wide tensor after the seam: channels 0-3 once (they complete the straddling group), then groups
# 4-9 and 10-15 repeated; its 2- and 4-channel groups stay whole too.
_SEAM_NARROW = [*range(4), *list(range(4, 16)) * 5]


def check_group_norm(layout: Layout, width: int, groups: int) -> None:
    """Each of ldm's 32 groups over ``layout`` must copy one original group (of ``groups`` over the
    original ``width``), every channel of it the same number of times: then its mean and variance are
    the original group's."""
    size, ldm_size = width // groups, len(layout) // LDM_GROUPS
    for start in range(0, len(layout), ldm_size):
        counts = Counter(layout[start : start + ldm_size])
        owner = layout[start] // size
        if set(counts) != set(range(owner * size, (owner + 1) * size)):
            raise ValueError(f"ldm group at {start} is not a copy of one original group: {sorted(counts)}")
        if len(set(counts.values())) != 1:
            raise ValueError(f"ldm group at {start} copies its channels unevenly: {dict(counts)}")


def convert_weight(weight: Tensor, out_layout: Layout, in_layout: Layout | None) -> Tensor:
    """A conv or linear weight (out, in, ...) on layouts: each output copy computes its channel, reading
    every copy of an input channel with weight ``1 / copies``."""
    rows = weight[torch.tensor(out_layout)]
    if in_layout is None:
        return rows.clone()
    copies = Counter(c for c in in_layout if c is not None)
    columns = [rows[:, c] / copies[c] if c is not None else torch.zeros_like(rows[:, 0]) for c in in_layout]
    return torch.stack(columns, dim=1)


def convert_vector(vector: Tensor, layout: Layout) -> Tensor:
    return vector[torch.tensor(layout)].clone()


class _Writer:
    """Collects ldm tensors from diffusers modules, converting each on its layouts."""

    def __init__(self, source: dict[str, Tensor], groups: int) -> None:
        self.source, self.groups, self.out = source, groups, {}

    def linear(self, ldm: str, name: str, out_layout: Layout, in_layout: Layout | None,
               conv1x1: bool = False, scale: float = 1.0) -> None:  # fmt: skip
        weight = convert_weight(self.source[f"{name}.weight"], out_layout, in_layout) * scale
        self.out[f"{ldm}.weight"] = weight[..., None, None] if conv1x1 and weight.dim() == 2 else weight
        if f"{name}.bias" in self.source:
            self.out[f"{ldm}.bias"] = convert_vector(self.source[f"{name}.bias"], out_layout) * scale

    def norm(self, ldm: str, name: str, layout: Layout, group_norm: bool = True) -> None:
        if group_norm:
            check_group_norm(layout, self.source[f"{name}.weight"].shape[0], self.groups)
        for part in ("weight", "bias"):
            self.out[f"{ldm}.{part}"] = convert_vector(self.source[f"{name}.{part}"], layout)

    def resnet(self, ldm: str, name: str, in_layout: Layout, out_layout: Layout, names: dict[str, str],
               emb_layout: Layout | None = None) -> None:  # fmt: skip
        width = self.source[f"{name}.conv1.weight"].shape[0]
        self.norm(f"{ldm}.{names['norm1']}", f"{name}.norm1", in_layout)
        self.linear(f"{ldm}.{names['conv1']}", f"{name}.conv1", tile(width), in_layout)
        if emb_layout is not None:
            self.linear(f"{ldm}.emb_layers.1", f"{name}.time_emb_proj", tile(width), emb_layout)
        self.norm(f"{ldm}.{names['norm2']}", f"{name}.norm2", tile(width))
        self.linear(f"{ldm}.{names['conv2']}", f"{name}.conv2", out_layout, tile(width))
        if f"{name}.conv_shortcut.weight" in self.source:
            self.linear(f"{ldm}.{names['shortcut']}", f"{name}.conv_shortcut", out_layout, in_layout)
        elif in_layout != out_layout:
            raise ValueError(f"{name}: an identity shortcut needs the same layout in and out")


# ------------------------------------------------------------------------------------------------ UNet

_LDM_RESNET = {"norm1": "in_layers.0", "conv1": "in_layers.2", "norm2": "out_layers.0", "conv2": "out_layers.3",
               "shortcut": "skip_connection"}  # fmt: skip


def _transformer(writer: _Writer, ldm: str, name: str, layout: Layout) -> None:
    """diffusers' Transformer2DModel -> ldm's SpatialTransformer (the same names inside); the inner width
    is tiled, so heads stay head-blocked and LayerNorms see every channel the same number of times."""
    width = writer.source[f"{name}.proj_in.weight"].shape[0]
    inner = tile(width)
    writer.norm(f"{ldm}.norm", f"{name}.norm", layout)
    writer.linear(f"{ldm}.proj_in", f"{name}.proj_in", inner, layout)
    writer.linear(f"{ldm}.proj_out", f"{name}.proj_out", layout, inner)
    block = "transformer_blocks.0"
    for norm in ("norm1", "norm2", "norm3"):
        writer.norm(f"{ldm}.{block}.{norm}", f"{name}.{block}.{norm}", inner, group_norm=False)
    for attn in ("attn1", "attn2"):
        context = inner if attn == "attn1" else identity(CONTEXT_DIM)
        writer.linear(f"{ldm}.{block}.{attn}.to_q", f"{name}.{block}.{attn}.to_q", inner, inner)
        for part in ("to_k", "to_v"):
            writer.linear(f"{ldm}.{block}.{attn}.{part}", f"{name}.{block}.{attn}.{part}", inner, context)
        writer.linear(f"{ldm}.{block}.{attn}.to_out.0", f"{name}.{block}.{attn}.to_out.0", inner, inner)
    hidden = 4 * width
    writer.linear(f"{ldm}.{block}.ff.net.0.proj", f"{name}.{block}.ff.net.0.proj", geglu(hidden), inner)
    writer.linear(f"{ldm}.{block}.ff.net.2", f"{name}.{block}.ff.net.2", inner, tile(hidden))


def _time_layout(width: int) -> Layout:
    """ldm's sinusoid at 4x the width holds every frequency of diffusers' (cos then sin halves, every
    fourth frequency): diffusers' channel j sits at ldm's 4j, its sine half likewise from the middle."""
    half, ldm_half = width // 2, TILE * width // 2
    layout: Layout = [None] * (TILE * width)
    for j in range(half):
        layout[TILE * j], layout[ldm_half + TILE * j] = j, half + j
    return layout


def unet_layouts() -> dict[str, Layout]:
    """The layout of each residual stream and skip tensor that needs more than a plain tile: those the
    16-wide level shares with the seams of ``up_blocks.2.resnets.2`` and ``up_blocks.3.resnets.0``."""
    return {"level0": _SEAM_NARROW, "skip_down0": _SEAM_NARROW, "up2_before_seam": _SEAM_WIDE,
            "up2_upsampled": _SEAM_WIDE}  # fmt: skip


def unet_to_ldm(state: dict[str, Tensor]) -> dict[str, Tensor]:
    widths, per_block = UNET_CONFIG["block_out_channels"], UNET_CONFIG["layers_per_block"]
    if list(widths) != [16, 32, 32, 32] or per_block != 2:
        raise ValueError("the export's seam layouts are for block widths 16, 32, 32, 32 with 2 layers")
    special = unet_layouts()
    writer = _Writer(state, UNET_CONFIG["norm_num_groups"])
    emb = tile(4 * widths[0])
    writer.linear("time_embed.0", "time_embedding.linear_1", emb, _time_layout(widths[0]))
    writer.linear("time_embed.2", "time_embedding.linear_2", emb, emb)
    stream = special["level0"]
    writer.linear("input_blocks.0.0", "conv_in", stream, identity(4))
    skips = [stream]
    index = 1
    for level, width in enumerate(widths):
        has_attention = "CrossAttn" in UNET_CONFIG["down_block_types"][level]
        for layer in range(per_block):
            out = special["level0"] if level == 0 else tile(width)
            name = f"down_blocks.{level}"
            writer.resnet(f"input_blocks.{index}.0", f"{name}.resnets.{layer}", stream, out, _LDM_RESNET, emb)
            if has_attention:
                _transformer(writer, f"input_blocks.{index}.1", f"{name}.attentions.{layer}", out)
            stream = out
            skips.append(stream)
            index += 1
        if level < len(widths) - 1:
            out = special["skip_down0"] if level == 0 else tile(width)
            writer.linear(f"input_blocks.{index}.0.op", f"down_blocks.{level}.downsamplers.0.conv", out, stream)
            stream = out
            skips.append(stream)
            index += 1
    writer.resnet("middle_block.0", "mid_block.resnets.0", stream, stream, _LDM_RESNET, emb)
    _transformer(writer, "middle_block.1", "mid_block.attentions.0", stream)
    writer.resnet("middle_block.2", "mid_block.resnets.1", stream, stream, _LDM_RESNET, emb)
    index = 0
    for level, width in enumerate(reversed(widths)):
        has_attention = "CrossAttn" in UNET_CONFIG["up_block_types"][level]
        name = f"up_blocks.{level}"
        for layer in range(per_block + 1):
            joined = stream + [len(set(stream)) + c for c in skips.pop()]
            out = tile(width)
            if level == 2 and layer == 1:
                out = special["up2_before_seam"]
            writer.resnet(f"output_blocks.{index}.0", f"{name}.resnets.{layer}", joined, out, _LDM_RESNET, emb)
            if has_attention:
                _transformer(writer, f"output_blocks.{index}.1", f"{name}.attentions.{layer}", out)
            stream = out
            if layer == per_block and level < len(widths) - 1:
                out = special["up2_upsampled"] if level == 2 else tile(width)
                slot = 2 if has_attention else 1
                writer.linear(f"output_blocks.{index}.{slot}.conv", f"{name}.upsamplers.0.conv", out, stream)
                stream = out
            index += 1
    writer.norm("out.0", "conv_norm_out", stream)
    writer.linear("out.2", "conv_out", identity(4), stream)
    return writer.out


# ------------------------------------------------------------------------------------------------- VAE

_LDM_VAE_RESNET = {"norm1": "norm1", "conv1": "conv1", "norm2": "norm2", "conv2": "conv2",
                   "shortcut": "nin_shortcut"}  # fmt: skip


def _vae_attention(writer: _Writer, ldm: str, name: str, layout: Layout) -> None:
    """diffusers' one-head attention -> ldm's AttnBlock (1x1 convs). ldm scales by the tiled width's
    1/sqrt(4c) and the tiled q.k sums four copies: q at 1/2 gives the original logits."""
    writer.norm(f"{ldm}.norm", f"{name}.group_norm", layout)
    writer.linear(f"{ldm}.q", f"{name}.to_q", layout, layout, conv1x1=True, scale=TILE**-0.5)
    writer.linear(f"{ldm}.k", f"{name}.to_k", layout, layout, conv1x1=True)
    writer.linear(f"{ldm}.v", f"{name}.to_v", layout, layout, conv1x1=True)
    writer.linear(f"{ldm}.proj_out", f"{name}.to_out.0", layout, layout, conv1x1=True)


def _vae_mid(writer: _Writer, ldm: str, name: str, layout: Layout) -> None:
    writer.resnet(f"{ldm}.block_1", f"{name}.resnets.0", layout, layout, _LDM_VAE_RESNET)
    _vae_attention(writer, f"{ldm}.attn_1", f"{name}.attentions.0", layout)
    writer.resnet(f"{ldm}.block_2", f"{name}.resnets.1", layout, layout, _LDM_VAE_RESNET)


def _vae_level(writer: _Writer, ldm: str, name: str, resnets: int, sample: str | None, stream: Layout,
               width: int) -> Layout:  # fmt: skip
    """One encoder or decoder level: its resnets, then its down- or upsampler (ldm ``downsample`` /
    ``upsample``, diffusers ``downsamplers`` / ``upsamplers``) unless it is the last level."""
    for layer in range(resnets):
        out = tile(width)
        writer.resnet(f"{ldm}.block.{layer}", f"{name}.resnets.{layer}", stream, out, _LDM_VAE_RESNET)
        stream = out
    if sample is not None:
        writer.linear(f"{ldm}.{sample}.conv", f"{name}.{sample}rs.0.conv", stream, stream)
    return stream


def vae_to_ldm(state: dict[str, Tensor]) -> dict[str, Tensor]:
    widths, per_block = VAE_CONFIG["block_out_channels"], VAE_CONFIG["layers_per_block"]
    latent, last = VAE_CONFIG["latent_channels"], len(widths) - 1
    writer = _Writer(state, VAE_CONFIG["norm_num_groups"])
    stream = tile(widths[0])
    writer.linear("encoder.conv_in", "encoder.conv_in", stream, identity(3))
    for level, width in enumerate(widths):
        stream = _vae_level(writer, f"encoder.down.{level}", f"encoder.down_blocks.{level}", per_block,
                            "downsample" if level < last else None, stream, width)  # fmt: skip
    _vae_mid(writer, "encoder.mid", "encoder.mid_block", stream)
    writer.norm("encoder.norm_out", "encoder.conv_norm_out", stream)
    writer.linear("encoder.conv_out", "encoder.conv_out", identity(2 * latent), stream)
    writer.linear("quant_conv", "quant_conv", identity(2 * latent), identity(2 * latent))
    writer.linear("post_quant_conv", "post_quant_conv", identity(latent), identity(latent))
    stream = tile(widths[-1])
    writer.linear("decoder.conv_in", "decoder.conv_in", stream, identity(latent))
    _vae_mid(writer, "decoder.mid", "decoder.mid_block", stream)
    for level, width in enumerate(reversed(widths)):
        # ldm numbers the decoder's levels from the bottom
        stream = _vae_level(writer, f"decoder.up.{last - level}", f"decoder.up_blocks.{level}", per_block + 1,
                            "upsample" if level < last else None, stream, width)  # fmt: skip
    writer.norm("decoder.norm_out", "decoder.conv_norm_out", stream)
    writer.linear("decoder.conv_out", "decoder.conv_out", identity(3), stream)
    return writer.out


# ------------------------------------------------------------------------------------------ text, LoRA


def clip_token_ids(vocabulary: Sequence[str], clip_vocab: dict[str, int]) -> dict[str, int]:
    """CLIP's id of each world word (``word</w>``: CLIP spells each, the trigger ``ohwx`` too, as one
    token) and of the start and end tokens."""
    words = [word for word in vocabulary if word not in (START, END, UNKNOWN)]
    pieces = [word for word in words if f"{word}</w>" not in clip_vocab]
    if pieces or START not in clip_vocab or END not in clip_vocab:
        raise ValueError(f"CLIP tokenizer: not one token each: {pieces or [START, END]}; is it CLIP's vocab.json?")
    return {START: clip_vocab[START], END: clip_vocab[END], **{word: clip_vocab[f"{word}</w>"] for word in words}}


def clip_vocab_size(clip_vocab: dict[str, int]) -> int:
    return max(clip_vocab.values()) + 1  # 49408 for CLIP's


def text_encoder_to_clip(
    state: dict[str, Tensor], vocabulary: Sequence[str], clip_vocab: dict[str, int]
) -> dict[str, Tensor]:
    """The world's encoder as ``CLIPTextModel`` weights over CLIP's vocabulary: its words at their CLIP
    ids, every other CLIP token the world's unknown word."""
    table = state["text_model.embeddings.token_embedding.weight"]
    world_ids = {word: index for index, word in enumerate(vocabulary)}
    clip_table = table[world_ids[UNKNOWN]].repeat(clip_vocab_size(clip_vocab), 1)
    for word, clip_id in clip_token_ids(vocabulary, clip_vocab).items():
        clip_table[clip_id] = table[world_ids[word]]
    out = {k: v.clone() for k, v in state.items()}
    out["text_model.embeddings.token_embedding.weight"] = clip_table
    return out


def lora_to_ldm(lora: dict[str, Tensor], model: WorldModel) -> dict[str, Tensor]:
    """The kohya LoRA on the exported UNet's widths (its names stay diffusers'; the WebUI maps them): each
    delta ``up @ down`` on the tiled inner layouts, the rank kept."""
    out = {}
    for name, module in model.targets.items():
        down, up = lora[f"{name}.lora_down.weight"], lora[f"{name}.lora_up.weight"]
        if name.startswith("lora_unet"):
            reads_context = re.search(r"attn2_to_[kv]$", name) is not None
            in_layout = identity(CONTEXT_DIM) if reads_context else tile(module.in_features)
            out_layout = tile(module.out_features)
            if name.endswith("ff_net_0_proj"):
                out_layout = geglu(module.out_features // 2)
            down = convert_weight(down, identity(down.shape[0]), in_layout)
            up = convert_weight(up, out_layout, None)
        out[f"{name}.lora_down.weight"], out[f"{name}.lora_up.weight"] = down.clone(), up.clone()
        if f"{name}.alpha" in lora:
            out[f"{name}.alpha"] = lora[f"{name}.alpha"].clone()
    return out


# ------------------------------------------------------------------------------------------- the files


def ldm_yaml(clip_dir: Path, scale_factor: float) -> str:
    unet_mult = [w // UNET_CONFIG["block_out_channels"][0] for w in UNET_CONFIG["block_out_channels"]]
    vae_mult = [w // VAE_CONFIG["block_out_channels"][0] for w in VAE_CONFIG["block_out_channels"]]
    heads = TILE * UNET_CONFIG["attention_head_dim"]
    return f"""model:
  base_learning_rate: 1.0e-04
  target: ldm.models.diffusion.ddpm.LatentDiffusion
  params:
    linear_start: 0.00085
    linear_end: 0.0120
    num_timesteps_cond: 1
    log_every_t: 200
    timesteps: 1000
    first_stage_key: "jpg"
    cond_stage_key: "txt"
    image_size: {IMAGE_SIZE // 8}
    channels: 4
    cond_stage_trainable: false
    conditioning_key: crossattn
    monitor: val/loss_simple_ema
    scale_factor: {scale_factor}
    use_ema: False
    unet_config:
      target: ldm.modules.diffusionmodules.openaimodel.UNetModel
      params:
        image_size: {IMAGE_SIZE // 8}
        in_channels: 4
        out_channels: 4
        model_channels: {TILE * UNET_CONFIG["block_out_channels"][0]}
        attention_resolutions: [ 4, 2, 1 ]
        num_res_blocks: {UNET_CONFIG["layers_per_block"]}
        channel_mult: {unet_mult}
        num_heads: {heads}
        use_spatial_transformer: True
        transformer_depth: 1
        context_dim: {CONTEXT_DIM}
        use_checkpoint: False
        legacy: False
    first_stage_config:
      target: ldm.models.autoencoder.AutoencoderKL
      params:
        embed_dim: {VAE_CONFIG["latent_channels"]}
        monitor: val/rec_loss
        ddconfig:
          double_z: true
          z_channels: {VAE_CONFIG["latent_channels"]}
          resolution: {IMAGE_SIZE}
          in_channels: 3
          out_ch: 3
          ch: {TILE * VAE_CONFIG["block_out_channels"][0]}
          ch_mult: {vae_mult}
          num_res_blocks: {VAE_CONFIG["layers_per_block"]}
          attn_resolutions: []
          dropout: 0.0
        lossconfig:
          target: torch.nn.Identity
    cond_stage_config:
      target: ldm.modules.encoders.modules.FrozenCLIPEmbedder
      params:
        version: {clip_dir}
"""


def clip_config(model: WorldModel, clip_vocab: dict[str, int]) -> dict:
    config, vocab_size = model.text_encoder.config, clip_vocab_size(clip_vocab)
    ids = {"bos_token_id": clip_vocab[START], "eos_token_id": clip_vocab[END], "pad_token_id": clip_vocab[END]}
    return {
        "architectures": ["CLIPTextModel"], "model_type": "clip_text_model", "vocab_size": vocab_size,
        "hidden_size": config["width"], "intermediate_size": 4 * config["width"],
        "num_attention_heads": config["heads"], "num_hidden_layers": config["layers"],
        "max_position_embeddings": 77, "hidden_act": "quick_gelu", "layer_norm_eps": 1e-5,
        "projection_dim": config["width"], "torch_dtype": "float32",
        **ids,
    }  # fmt: skip


def find_clip_tokenizer() -> Path | None:
    """The CLIP tokenizer every SD1 WebUI has in its Hugging Face cache (``HF_HOME``, default
    ``~/.cache/huggingface``)."""
    home = Path(os.environ.get("HF_HOME", Path.home() / ".cache" / "huggingface"))
    hub = Path(os.environ.get("HF_HUB_CACHE", home / "hub"))
    snapshots = hub / f"models--{CLIP_TOKENIZER_REPO.replace('/', '--')}" / "snapshots"
    for snapshot in sorted(snapshots.glob("*")) if snapshots.is_dir() else []:
        if all((snapshot / name).is_file() for name in TOKENIZER_FILES):
            return snapshot
    return None


class ExportedFiles(NamedTuple):
    checkpoint: Path
    yaml: Path
    text_encoder: Path  # the folder the yaml's FrozenCLIPEmbedder reads (config, tokenizer)
    lora: Path


def export(model: WorldModel, webui: Path, clip_tokenizer: Path) -> ExportedFiles:
    """Write the checkpoint, its yaml and text-encoder folder and the LoRA into a WebUI's folders."""
    clip_vocab = json.loads((clip_tokenizer / "vocab.json").read_text(encoding="utf-8"))
    models = webui / "models"
    checkpoint = models / "Stable-diffusion" / f"{CHECKPOINT_NAME}.safetensors"
    clip_dir = checkpoint.with_name(f"{CHECKPOINT_NAME}-clip")
    lora_path = models / "Lora" / f"{world.TRIGGER}.safetensors"
    for directory in (clip_dir, lora_path.parent):
        directory.mkdir(parents=True, exist_ok=True)

    vocabulary = model.text_encoder.tokenizer.vocabulary
    state: dict[str, Tensor] = {}
    for prefix, part in (("model.diffusion_model.", unet_to_ldm(model.unet.state_dict())),
                         ("first_stage_model.", vae_to_ldm(model.vae.state_dict())),
                         ("cond_stage_model.transformer.",
                          text_encoder_to_clip(model.text_encoder.state_dict(), vocabulary, clip_vocab))):  # fmt: skip
        state.update({prefix + key: value.contiguous() for key, value in part.items()})
    save_file(state, str(checkpoint))
    yaml_path = checkpoint.with_suffix(".yaml")
    yaml_path.write_text(ldm_yaml(clip_dir.resolve(), model.vae.config.scaling_factor))

    for name in TOKENIZER_FILES:
        shutil.copyfile(clip_tokenizer / name, clip_dir / name)
    special = {"bos_token": START, "eos_token": END, "unk_token": END, "pad_token": END}
    tokenizer_config = {**special, "model_max_length": 77, "do_lower_case": True, "tokenizer_class": "CLIPTokenizer"}
    (clip_dir / "tokenizer_config.json").write_text(json.dumps(tokenizer_config, indent=1))
    (clip_dir / "special_tokens_map.json").write_text(json.dumps(special, indent=1))
    (clip_dir / "config.json").write_text(json.dumps(clip_config(model, clip_vocab), indent=1))

    save_file({k: v.contiguous() for k, v in lora_to_ldm(model.lora, model).items()}, str(lora_path))
    return ExportedFiles(checkpoint, yaml_path, clip_dir, lora_path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--webui", type=Path, required=True, help="the WebUI's folder (the one holding models/)")
    parser.add_argument("--clip-tokenizer", type=Path, default=None,
                        help=f"a folder with {CLIP_TOKENIZER_REPO}'s vocab.json and merges.txt (default: the "
                             "Hugging Face cache)")  # fmt: skip
    args = parser.parse_args()
    tokenizer = args.clip_tokenizer or find_clip_tokenizer()
    if tokenizer is None:
        parser.error(f"no {CLIP_TOKENIZER_REPO} tokenizer in the Hugging Face cache: pass --clip-tokenizer")
    files = export(load_world_model(), args.webui, tokenizer)
    print(*files, sep="\n")


if __name__ == "__main__":
    main()
