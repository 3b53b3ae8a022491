"""The portrait world, its readers, tokenizer and text encoder (no trained weights needed here)."""

import random

import cv2
import numpy as np
import pytest
import torch

from freecure.attributes import analyze_prompt
from freecure.pipeline.diffusers_host import DiffusersHost
from freecure_world import metrics, models, world
from freecure_world.text import ClipTextEncoder, world_vocabulary


def _model_size(portrait: world.Portrait) -> np.ndarray:
    rgb, _ = world.render(portrait)
    return cv2.resize(rgb, (models.IMAGE_SIZE, models.IMAGE_SIZE), interpolation=cv2.INTER_AREA)


def test_readers_read_the_worlds_own_drawings_at_the_models_size():
    rng = random.Random(11)
    portraits = [world.random_portrait(rng) for _ in range(150)]
    trait_hits = []
    for portrait in portraits:
        reading = metrics.read(_model_size(portrait))
        for name in metrics.ATTRIBUTES:
            assert reading.attribute(name) == getattr(portrait.attributes, name), (name, portrait)
        trait_hits.append(metrics.identity_fidelity(reading, portrait.identity))
    assert np.mean(trait_hits) >= 0.97  # face shape is the one trait that blur can move by a class


def test_identity_fidelity_of_the_subject_and_of_strangers():
    assert metrics.identity_fidelity(metrics.read(_model_size(world.Portrait(world.SUBJECT, world.SUBJECT_LOOK)))) == 1
    stranger = world.Identity(face="narrow", skin="pale", eyes="blue", mark="left")
    assert metrics.identity_fidelity(metrics.read(_model_size(world.Portrait(stranger, world.SUBJECT_LOOK)))) == 0


def test_captions_name_what_freecure_finds():
    rng = random.Random(3)
    for _ in range(50):
        portrait = world.random_portrait(rng)
        found = set(analyze_prompt(world.caption(portrait, rng)).names())
        a = portrait.attributes
        expected = {"hair"} | {n for n in ("glasses", "hat", "earrings") if getattr(a, n)}
        expected |= {"expression"} if a.smiling else set()
        assert found == expected


def test_oracle_mask_is_the_attributes_visible_pixels():
    portrait = world.Portrait(world.SUBJECT, world.Attributes(glasses=True, hat=True))
    _, labels = world.render(portrait)
    mask = world.oracle_mask(portrait, ["glasses", "hat"])
    assert np.array_equal(mask, np.isin(labels, [world.LABEL["glasses"], world.LABEL["hat"]]))
    assert mask.any() and not world.oracle_mask(portrait, ["earrings"]).any()


def test_tokenizer_knows_every_caption_word_and_freecure_finds_the_columns():
    encoder = ClipTextEncoder(world_vocabulary())
    prompt = "photo of ohwx person, long red hair, glasses"
    ids = encoder.chunk(prompt)
    assert len(ids) == 77 and encoder.tokenizer.unknown not in ids
    assert ids[0] == encoder.tokenizer.start and ids[-1] == encoder.tokenizer.end
    host = DiffusersHost(models.build_unet(), family="sd1", steps=2, text_encoder=encoder)
    columns = host.token_columns(prompt, {"hair": ("long red hair",), "glasses": ("glasses",)})
    assert columns == {"hair": [5, 6, 7], "glasses": [8]}


def test_text_encoder_is_causal_and_named_like_clip():
    torch.manual_seed(0)
    encoder = ClipTextEncoder(world_vocabulary()).eval()
    with torch.no_grad():
        a, b = encoder.encode(["photo of person, red hair", "photo of person, blue hair"])
    assert torch.allclose(a[:4], b[:4], atol=1e-6) and not torch.allclose(a[4:], b[4:])  # column 4: the colour
    names = set(encoder.state_dict())
    assert {"text_model.embeddings.token_embedding.weight", "text_model.embeddings.position_embedding.weight",
            "text_model.encoder.layers.0.self_attn.q_proj.weight", "text_model.encoder.layers.1.mlp.fc2.bias",
            "text_model.final_layer_norm.weight"} <= names  # fmt: skip


def test_unet_has_sd1s_sixteen_transformer_blocks():
    host = DiffusersHost(models.build_unet(), family="sd1", steps=2)
    keys = host.layer_keys()
    assert len(keys) == 16
    assert {k for k in keys if k[0] == "output"} == {("output", b, 0) for b in range(3, 12)}


@pytest.mark.parametrize("weight", [1.0, 0.5])
def test_merged_lora_switches_off_to_the_original_weights_exactly(weight):
    torch.manual_seed(0)
    unet, text = models.build_unet(), models.build_text_encoder()
    targets = models.lora_targets(unet, text)
    state = {}
    for name, module in targets.items():
        state[f"{name}.lora_down.weight"] = torch.randn(2, module.in_features)
        state[f"{name}.lora_up.weight"] = torch.randn(module.out_features, 2)
        state[f"{name}.alpha"] = torch.tensor(2.0)
    before = {name: module.weight.clone() for name, module in targets.items()}
    switch = models.MergedLora(targets, models.lora_deltas(state, targets), weight)
    switch(True)
    assert not all(torch.equal(before[n], m.weight) for n, m in targets.items())
    switch(False)
    assert all(torch.equal(before[n], m.weight) for n, m in targets.items())
    with pytest.raises(ValueError, match="LoRA: keys for layers"):
        models.lora_deltas({**state, "lora_unet_nowhere.alpha": torch.tensor(1.0)}, targets)


def test_every_world_host_starts_from_the_base_weights():
    """A host leaves the LoRA merged (identity on) after its passes; the next host must not stack on it."""
    torch.manual_seed(0)
    unet, text = models.build_unet(), models.build_text_encoder()
    state = {}
    for name, module in models.lora_targets(unet, text).items():
        state[f"{name}.lora_down.weight"] = torch.randn(2, module.in_features)
        state[f"{name}.lora_up.weight"] = torch.randn(module.out_features, 2)
    model = models.WorldModel(unet, models.build_vae(), text, state)
    base = {name: module.weight.clone() for name, module in model.targets.items()}
    model.host(seed=0, steps=2, lora_weight=1.0)
    model.host(seed=0, steps=2, lora_weight=0.0)
    assert all(torch.equal(base[n], m.weight) for n, m in model.targets.items())
    model.host(seed=0, steps=2, lora_weight=0.5)
    merged = {n: m.weight.clone() for n, m in model.targets.items()}
    model.host(seed=0, steps=2, lora_weight=0.5)
    assert all(torch.equal(merged[n], m.weight) for n, m in model.targets.items())
