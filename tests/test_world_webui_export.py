"""The world's model exported for the A1111 WebUI (freecure_world/webui_export.py), read back by code that
is not ours: diffusers' ldm single-file converters (the yaml and the ldm key names), transformers'
CLIPTextModel and CLIPTokenizer (the text encoder's folder), the kohya LoRA rule. Each must compute what
the world's own model computes; the WebUI itself loads the same files in the lab (README)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from diffusers import AutoencoderKL, UNet2DConditionModel
from diffusers.loaders import single_file_utils
from safetensors.torch import load_file

from freecure_world import webui_export, world
from freecure_world.models import MergedLora, WorldModel, load_world_model, lora_deltas, lora_targets
from freecure_world.text import END, START, UNKNOWN

transformers = pytest.importorskip("transformers")

PROMPT = f"photo of {world.TRIGGER} person, red hair, glasses, hat"
Exported = tuple[WorldModel, webui_export.ExportedFiles]


def _bpe_files(words: list[str], directory: Path) -> Path:
    """A CLIP-style BPE tokenizer (vocab.json, merges.txt) that spells each world word as one token, as
    CLIP's does (``ohwx</w>`` is CLIP's 47993): characters merged left to right; ids spread over CLIP's
    49408, start and end at CLIP's 49406 and 49407."""
    vocab: dict[str, int] = {}
    merges: list[str] = []
    for word in words:
        symbols = [*word[:-1], word[-1] + "</w>"]
        merged, tokens = symbols[0], list(symbols)
        for symbol in symbols[1:]:
            merges.append(f"{merged} {symbol}")
            merged += symbol
            tokens.append(merged)
        for token in tokens:
            vocab.setdefault(token, 1000 * (len(vocab) + 1) % 49406)
    vocab.update({START: 49406, END: 49407})
    directory.mkdir(parents=True)
    (directory / "vocab.json").write_text(json.dumps(vocab))
    (directory / "merges.txt").write_text("#version: 0.2\n" + "\n".join(dict.fromkeys(merges)) + "\n")
    return directory


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> Exported:
    model = load_world_model()
    root = tmp_path_factory.mktemp("export")
    words = [w for w in model.text_encoder.tokenizer.vocabulary if w not in (START, END, UNKNOWN)]
    tokenizer = _bpe_files(words, root / "clip-tokenizer")
    return model, webui_export.export(model, root / "webui", tokenizer)


def _diffusers_unet(paths: webui_export.ExportedFiles) -> UNet2DConditionModel:
    checkpoint = load_file(str(paths.checkpoint))
    config = single_file_utils.create_unet_diffusers_config_from_ldm(yaml.safe_load(paths.yaml.read_text()), checkpoint)
    unet = UNet2DConditionModel(**config)
    unet.load_state_dict(single_file_utils.convert_ldm_unet_checkpoint(checkpoint, config), strict=True)
    return unet.eval()


def test_unet_in_ldm_layout_computes_the_world_unet(exported: Exported) -> None:
    model, paths = exported
    unet = _diffusers_unet(paths)
    assert list(unet.config.block_out_channels) == [64, 128, 128, 128]
    assert unet.config.norm_num_groups == 32  # ldm's, which the world's widths 16/32 could not take
    generator = torch.Generator().manual_seed(0)
    latents = torch.randn(2, 4, 8, 8, generator=generator)
    context = torch.randn(2, 77, 64, generator=generator)
    for timestep in (999.0, 500.0, 1.0):
        t = torch.tensor([timestep] * 2)
        with torch.no_grad():
            expected = model.unet(latents, t, context).sample
            got = unet(latents, t, context).sample
        assert (got - expected).abs().max() < 1e-4 * expected.abs().max()


def test_lora_on_the_exported_widths_gives_the_world_lora(exported: Exported) -> None:
    model, paths = exported
    unet = _diffusers_unet(paths)
    lora = {k: v.float() for k, v in load_file(str(paths.lora)).items()}
    assert set(lora) == set(model.lora)  # kohya names, which the WebUI maps to ldm's
    targets = {k: v for k, v in lora_targets(unet, model.text_encoder).items() if k.startswith("lora_unet")}
    deltas = lora_deltas({k: v for k, v in lora.items() if k.split(".")[0] in targets}, targets)
    with torch.no_grad():
        for name, module in targets.items():
            module.weight += deltas[name]
    latents, context = torch.randn(1, 4, 8, 8), torch.randn(1, 77, 64)
    switch = MergedLora(model.targets, model.deltas, 1.0, model.base_weights)
    try:
        switch(True)
        with torch.no_grad():
            expected = model.unet(latents, torch.tensor([400.0]), context).sample
    finally:
        switch(False)
    got = unet(latents, torch.tensor([400.0]), context).sample.detach()
    assert (got - expected).abs().max() < 1e-4 * expected.abs().max()


def test_vae_in_ldm_layout_encodes_and_decodes_as_the_world_vae(exported: Exported) -> None:
    model, paths = exported
    checkpoint = load_file(str(paths.checkpoint))
    config = single_file_utils.create_vae_diffusers_config_from_ldm(yaml.safe_load(paths.yaml.read_text()), checkpoint)
    assert config["scaling_factor"] == pytest.approx(model.vae.config.scaling_factor)
    vae = AutoencoderKL(**config)
    vae.load_state_dict(single_file_utils.convert_ldm_vae_checkpoint(checkpoint, config), strict=True)
    image = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(1)) * 2 - 1
    with torch.no_grad():
        expected_latent = model.vae.encode(image).latent_dist.mean
        assert (vae.eval().encode(image).latent_dist.mean - expected_latent).abs().max() < 1e-4
        expected = model.vae.decode(expected_latent).sample
        assert (vae.decode(expected_latent).sample - expected).abs().max() < 1e-4


def _clip_text_model(paths: webui_export.ExportedFiles) -> torch.nn.Module:
    """As the WebUI builds its SD1 text encoder: CLIPTextModel from the yaml's folder's config, then the
    checkpoint's ``cond_stage_model.transformer.*`` weights."""
    config = transformers.CLIPTextConfig.from_pretrained(str(paths.text_encoder))
    encoder = transformers.CLIPTextModel(config)
    # SD1 checkpoints (and the WebUI's transformers 4.30) name ``text_model.*``; transformers 5 drops it
    prefix = "cond_stage_model.transformer."
    if not next(iter(encoder.state_dict())).startswith("text_model."):
        prefix += "text_model."
    checkpoint = load_file(str(paths.checkpoint))
    state = {k.removeprefix(prefix): v for k, v in checkpoint.items() if k.startswith(prefix)}
    assert len(state) == sum(k.startswith("cond_stage_model.") for k in checkpoint)
    missing, unexpected = encoder.load_state_dict(state, strict=False)
    assert not unexpected and {k.rsplit(".", 1)[-1] for k in missing} <= {"position_ids"}
    return encoder.eval()


def test_text_encoder_folder_loads_in_transformers_and_encodes_as_the_world(
    exported: Exported,
) -> None:
    model, paths = exported
    tokenizer = transformers.CLIPTokenizer.from_pretrained(str(paths.text_encoder))
    encoder = _clip_text_model(paths)

    def clip_ids(prompt: str) -> list[int]:  # the WebUI's chunk: start, tokens, end, end-padding to 77
        ids = tokenizer(prompt.replace(",", ""), add_special_tokens=False)["input_ids"]
        return [tokenizer.bos_token_id, *ids, *[tokenizer.eos_token_id] * (76 - len(ids))]

    with torch.no_grad():
        expected = model.text_encoder.encode([PROMPT])
        got = encoder(input_ids=torch.tensor([clip_ids(PROMPT)])).last_hidden_state
    assert (got - expected).abs().max() < 1e-4


def test_a_tokenizer_that_cuts_a_world_word_is_refused(tmp_path: Path) -> None:
    tokenizer = _bpe_files(["photo", "hair"], tmp_path / "clip")
    with pytest.raises(ValueError, match=r"not one token each: .*glasses"):
        webui_export.export(load_world_model(), tmp_path / "webui", tokenizer)


def test_seam_layouts_are_needed_and_hold() -> None:
    """Where a skip joins widths 32 and 16 the original 8 groups straddle the seam: plain copies fail
    the group check, the seam layouts pass it, and each also passes its own stream's norms."""
    plain = webui_export.tile(32) + [32 + c for c in webui_export.tile(16)]
    with pytest.raises(ValueError, match="not a copy of one original group"):
        webui_export.check_group_norm(plain, 48, 8)
    seam = webui_export._SEAM_WIDE + [32 + c for c in webui_export._SEAM_NARROW]
    webui_export.check_group_norm(seam, 48, 8)
    webui_export.check_group_norm(webui_export._SEAM_WIDE, 32, 8)
    webui_export.check_group_norm(webui_export._SEAM_NARROW, 16, 8)


def test_clip_tokenizer_is_found_in_the_hugging_face_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    assert webui_export.find_clip_tokenizer() is None
    snapshot = tmp_path / "hub" / "models--openai--clip-vit-large-patch14" / "snapshots" / "abc"
    snapshot.mkdir(parents=True)
    (snapshot / "vocab.json").write_text("{}")
    assert webui_export.find_clip_tokenizer() is None  # merges.txt missing
    (snapshot / "merges.txt").write_text("#version: 0.2\n")
    assert webui_export.find_clip_tokenizer() == snapshot
