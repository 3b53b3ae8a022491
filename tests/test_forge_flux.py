"""FLUX on Forge 2 and Neo: the adapter's interception of ``backend/nn/flux.py`` (tests/forge_stub stand-in,
which names the real files), driven by a small flow-matching Euler loop with Forge's row layout
(``transformer_options["cond_or_uncond"]``, uncond chunk first).

Properties that hold on any weights: an engine with nothing to do leaves the output bit for bit and puts
everything back; with identity off changing nothing, the cure equals a test-side FASA written from the
formula over the host's own RoPE (keys banked after RoPE); Forge 2's and Neo's attention signatures give
the same cure.
"""

from __future__ import annotations

import contextlib
import importlib
from types import SimpleNamespace

import pytest
import torch
from identity_sim import block_mask, tokens_in_block_mask
from webui_host import installed_host

from freecure.attention import AttentionEngine, FasaSettings, KVBank, RowRole, joint_blocks, patch_grid
from freecure.webui.forge_flux import intercepted_flux, is_flux, t5_token_columns

LATENT = (8, 12)
STEPS = 2
ATOL = 1e-4


@pytest.fixture(scope="module")
def flux():
    with installed_host("forge"):
        yield importlib.import_module("backend.nn.flux")


@pytest.fixture(scope="module")
def model(flux):
    torch.manual_seed(3)
    return flux.IntegratedFluxTransformer2DModel().eval()


def inputs(chunks: list[int]):
    gen = torch.Generator().manual_seed(11)
    noise = torch.randn(2, 4, *LATENT, generator=gen)
    contexts = {0: torch.randn(2, 7, 16, generator=gen), 1: torch.randn(2, 7, 16, generator=gen)}
    pooled = {0: torch.randn(2, 8, generator=gen), 1: torch.randn(2, 8, generator=gen)}
    return noise, [contexts[c] for c in chunks], [pooled[c] for c in chunks]


def generate(model, chunks: list[int], engine: AttentionEngine | None = None, on_call=None, cfg: float = 3.0,
             copies: int = 1):
    """Euler on the flow ODE; ``chunks`` as Forge's ``cond_or_uncond`` (0 cond, 1 uncond); x0 = x - sigma v.
    ``copies`` > 1: the images again as foundation rows in every chunk (one-pass mode's layout)."""
    noise, contexts, pooled = inputs(chunks)
    contexts, pooled = [c.repeat(copies, 1, 1) for c in contexts], [p.repeat(copies, 1) for p in pooled]
    sigmas = torch.tensor([1.0, 0.6, 0.0])
    x = noise.repeat(copies, 1, 1, 1)
    images = len(noise)
    with torch.no_grad():
        for i in range(STEPS):
            options = {"cond_or_uncond": list(chunks)}
            batch = x.repeat(len(chunks), 1, 1, 1)
            roles = [RowRole(chunk == 0, row % images, foundation=row >= images)
                     for chunk in chunks for row in range(len(x))]
            if engine is not None:
                engine.begin_call(roles, LATENT, i / STEPS)
            if on_call is not None:
                on_call(i, roles)
            sigma = sigmas[i].repeat(batch.shape[0])
            velocity = model(batch, sigma, torch.cat(contexts), torch.cat(pooled), guidance=torch.full_like(sigma, 3.5),
                             transformer_options=options)
            x0 = dict(zip(chunks, (batch - sigmas[i] * velocity).chunk(len(chunks)), strict=True))
            guided = x0[0] if 1 not in x0 else x0[1] + cfg * (x0[0] - x0[1])
            x = x + (x - guided) / sigmas[i] * (sigmas[i + 1] - sigmas[i])
    return x


def masks() -> list[torch.Tensor]:
    return [block_mask(LATENT, slice(None), slice(0, 6)), block_mask(LATENT, slice(0, 4), slice(4, 10))]


class ReferenceAttention:
    """Test-side replacement of flux.py's ``attention``: plain joint attention from the formula, the blocks
    told apart by call order; records post-RoPE image K/V of cond rows (``masks`` None) or applies FASA."""

    def __init__(self, flux, layers, masks, weight) -> None:
        self.flux, self.layers, self.masks, self.weight = flux, layers, masks, weight
        self.bank: dict = {}
        self.call, self.index, self.rows = -1, 0, []

    def on_call(self, call, rows) -> None:
        self.call, self.index, self.rows = call, 0, rows

    def __call__(self, q, k, v, pe, *args, **kwargs):
        layer = self.layers[self.index]
        self.index += 1
        q, k = self.flux.apply_rope(q, k, pe)
        grid = patch_grid(LATENT)
        n_text = q.shape[2] - grid[0] * grid[1]
        scale = q.shape[-1] ** -0.5
        out = []
        for row, role in enumerate(self.rows):
            logits = q[row] @ k[row].transpose(-1, -2) * scale
            result = logits.softmax(-1) @ v[row]
            if role.cond and self.masks is None:
                self.bank[(self.call, layer, role.image)] = (k[row, :, n_text:], v[row, :, n_text:])
            elif role.cond:
                inside = tokens_in_block_mask(self.masks[role.image], grid)
                k_f, v_f = (t[:, inside] for t in self.bank[(self.call, layer, role.image)])
                found = q[row, :, n_text:] @ k_f.transpose(-1, -2) * scale + self.weight
                probs = torch.cat([logits[:, n_text:], found], dim=-1).softmax(-1)
                result[:, n_text:] = probs @ torch.cat([v[row], v_f], dim=1)
            out.append(result.transpose(0, 1).flatten(1))
        return torch.stack(out)


@contextlib.contextmanager
def replaced_attention(flux, function):
    original = flux.attention
    flux.attention = function
    try:
        yield
    finally:
        flux.attention = original


def reference(flux, model, chunks, weight):
    layers = list(joint_blocks(model))
    ref = ReferenceAttention(flux, layers, None, weight)
    with replaced_attention(flux, ref):
        generate(model, chunks, on_call=ref.on_call)
        ref.masks = masks()
        return generate(model, chunks, on_call=ref.on_call)


def cure(model, chunks, weight, cure_masks):
    layers = frozenset(joint_blocks(model))
    engine, bank = AttentionEngine(), KVBank(dtype=torch.float32)
    with intercepted_flux(engine, model), engine.recording(bank, layers, None):
        generate(model, chunks, engine)
    settings = FasaSettings(layers=layers, weight=weight, masks=cure_masks)
    with intercepted_flux(engine, model), engine.curing(settings, bank):
        result = generate(model, chunks, engine)
    assert engine.failure is None and bank.misses == 0
    assert len(bank) == STEPS * len(layers) * 2
    return result


def test_the_stand_in_is_found_as_flux(flux, model, monkeypatch):
    assert is_flux(model)
    assert list(joint_blocks(model))[:3] == [("double", 0, 0), ("double", 1, 0), ("single", 0, 0)]
    monkeypatch.setattr(model, "global_modulation", True, raising=False)  # Neo's Flux.2 flag
    assert not is_flux(model)


@pytest.mark.parametrize("chunks", [[1, 0], [0]])  # real CFG (uncond first, as Forge batches), distilled
def test_nothing_to_do_is_plain_bit_for_bit_and_everything_is_put_back(flux, model, chunks):
    plain = generate(model, chunks)
    original = flux.attention
    empty = [torch.zeros(LATENT, dtype=torch.bool)] * 2
    assert torch.equal(cure(model, chunks, 1.5, empty), plain)
    assert flux.attention is original
    assert all("forward" not in m.__dict__ for m in [model, *joint_blocks(model).values()])
    with pytest.raises(RuntimeError, match="boom"), intercepted_flux(AttentionEngine(), model):
        raise RuntimeError("boom")
    assert flux.attention is original and "forward" not in model.__dict__


@pytest.mark.parametrize(("chunks", "weight"), [([1, 0], 1.5), ([0], 0.5)])
def test_identity_alignment_equals_the_reference(flux, model, chunks, weight):
    plain = generate(model, chunks)
    result = cure(model, chunks, weight, masks())
    torch.testing.assert_close(result, reference(flux, model, chunks, weight), rtol=1e-4, atol=ATOL)
    assert (result - plain).abs().max() > 100 * ATOL


def test_neo_signature_gives_the_same_cure(flux, model, monkeypatch):
    forge2 = cure(model, [1, 0], 1.5, masks())
    monkeypatch.setattr(flux, "NEO_SIGNATURE", True)
    torch.testing.assert_close(cure(model, [1, 0], 1.5, masks()), forge2, rtol=1e-5, atol=1e-6)


def test_extra_image_tokens_fail_the_pass_and_leave_it_plain(flux, model):
    """Reference latents appended to the image tokens (Kontext) do not match the token grid."""
    engine, bank = AttentionEngine(), KVBank(dtype=torch.float32)
    layers = frozenset(joint_blocks(model))
    with intercepted_flux(engine, model), engine.recording(bank, layers, None):
        engine.begin_call([RowRole(True, 0)], (8, 8), 0.0)  # 4x4 grid, the model gets 8x12
        noise, contexts, pooled = inputs([0])
        model(noise[:1], torch.ones(1), contexts[0][:1], pooled[0][:1], guidance=torch.ones(1),
              transformer_options={"cond_or_uncond": [0]})
    assert "image tokens" in str(engine.failure) and len(bank) == 0


class T5Chunks:
    """``backend/text_processing/t5_engine.py`` (Forge 2 dfdcbab6) ``tokenize_line``: one chunk of the prompt's
    tokens (no start token), the end token 1, padded with 0 to 256; ``tokenize`` without special tokens.
    One id per word here."""

    def tokenize(self, texts):
        return [[10 + sum(map(ord, word)) for word in text.split()] for text in texts]

    def tokenize_line(self, line):
        tokens = self.tokenize([line])[0] + [1]
        return [SimpleNamespace(tokens=tokens + [0] * (256 - len(tokens)))], len(tokens)


def test_t5_token_columns():
    columns = t5_token_columns(T5Chunks(), "a woman with red hair", {"hair": ("red hair",), "hat": ("hat",)})
    assert columns == {"hair": [3, 4], "hat": []}


def forge_job(diffusion_model):
    unet = SimpleNamespace(model=SimpleNamespace(diffusion_model=diffusion_model))
    sd_model = SimpleNamespace(forge_objects=SimpleNamespace(unet=unet))
    return SimpleNamespace(sd_model=sd_model, refiner_checkpoint=None, enable_hr=False, scripts=None, script_args=(),
                           get_token_merging_ratio=lambda for_hr=False: 0)


def test_a_forge_flux_job_is_family_flux_and_not_skipped(model, monkeypatch):
    from freecure.webui import hosts

    job = forge_job(model)
    assert hosts.model_family(job.sd_model) == "flux"
    assert hosts.unsupported_reason(job) is None
    monkeypatch.setattr(model, "global_modulation", True, raising=False)  # Flux.2 in Neo's flux.py
    assert "nor FLUX joint-attention blocks" in hosts.unsupported_reason(job)


@pytest.mark.parametrize("chunks", [[1, 0], [0]])
def test_one_pass_reads_the_foundation_rows_of_the_same_call(flux, model, chunks):
    """Forge's row layout with the foundation rows after the images: with identity off changing nothing, one-pass
    FASA gives the exact cure (the foundation rows are the plain generation)."""
    layers = frozenset(joint_blocks(model))
    engine = AttentionEngine()
    with intercepted_flux(engine, model), engine.one_pass(None):
        engine.start_fasa(FasaSettings(layers=layers, weight=2.0, masks=masks()))
        doubled = generate(model, chunks, engine, copies=2)
    assert engine.failure is None and engine.source_misses == 0
    torch.testing.assert_close(doubled[:2], cure(model, chunks, 2.0, masks()), rtol=1e-4, atol=ATOL)
    torch.testing.assert_close(doubled[2:], generate(model, chunks), rtol=1e-4, atol=ATOL)
