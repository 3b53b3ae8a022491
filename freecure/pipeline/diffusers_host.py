"""A small reference host that drives a diffusers ``UNet2DConditionModel`` the way the WebUI does.

k-diffusion conventions throughout: the sigma table of SD's scaled-linear beta schedule, c_in =
1/sqrt(sigma^2 + 1), t from sigma by log-linear interpolation, eps -> x0. CFG runs in our own code with
A1111's row layout, [cond rows..., uncond rows...], in one UNet call or (``batch_cond_uncond=False``) one
call per half. Prompts go through a toy text encoder (deterministic per-word embeddings, 77 tokens), so
context columns are exact, or any encoder with the same ``tokenize``/``chunk``/``encode`` methods (the
trained world model's CLIP-architecture encoder, ``freecure_world``). The tests and ``benchmarks/`` use
it; the WebUI adapters are the real hosts.
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager
from functools import partial
from typing import Any, Protocol

import torch
from torch import Tensor, nn

from freecure import sampling
from freecure.attention import (
    AttentionEngine,
    LayerKey,
    RowRole,
    RowTracker,
    diffusers_layer_keys,
    intercept_diffusers,
)
from freecure.tokens import CHUNK_LENGTH, PromptColumns, phrase_columns, scheduled_columns

from .host import Branch, CallHooks, CureInterrupted, SamplerFn

FAMILIES = ("sd1", "sd2", "sdxl")
_WORD = re.compile(r"[a-z0-9]+")


def sd_sigma_table(steps: int = 1000, beta_start: float = 0.00085, beta_end: float = 0.012) -> Tensor:
    """Ascending model sigmas of SD's scaled-linear beta schedule: sigma = sqrt((1 - abar) / abar)."""
    betas = torch.linspace(beta_start**0.5, beta_end**0.5, steps, dtype=torch.float64) ** 2
    alphas_cumprod = torch.cumprod(1 - betas, dim=0)
    return ((1 - alphas_cumprod) / alphas_cumprod).sqrt().float()


class TextEncoder(Protocol):
    """What the host needs of a text encoder: word token ids, the 77 ids of a prompt, the context."""

    def tokenize(self, text: str) -> list[int]: ...

    def chunk(self, prompt: str) -> list[int]: ...

    def encode(self, prompts: Sequence[str]) -> Tensor: ...


class ToyTextEncoder:
    """Deterministic random embedding per word, plus a position embedding; 77 columns per prompt:
    start token, up to 75 words, end token, padding (= the end token, as SD1's CLIP)."""

    START, END = 1, 2

    def __init__(self, dim: int, pooled_dim: int = 0, seed: int = 0, vocab: int = 4096) -> None:
        gen = torch.Generator().manual_seed(seed)
        self.vocab = vocab
        self.embeddings = torch.randn(vocab, dim, generator=gen)
        self.positions = torch.randn(CHUNK_LENGTH, dim, generator=gen) * 0.1
        self.pooled_projection = torch.randn(dim, pooled_dim, generator=gen) if pooled_dim else None

    def tokenize(self, text: str) -> list[int]:
        """Token ids of the words of ``text``, without start/end tokens."""
        return [3 + zlib.crc32(word.encode()) % (self.vocab - 3) for word in _WORD.findall(text.lower())]

    def chunk(self, prompt: str) -> list[int]:
        """The 77 token ids the encoder sees."""
        ids = self.tokenize(prompt)
        if len(ids) > CHUNK_LENGTH - 2:
            raise ValueError(f"prompt: toy encoder reads {CHUNK_LENGTH - 2} words at most; got {len(ids)}")
        return [self.START, *ids, *[self.END] * (CHUNK_LENGTH - 1 - len(ids))]

    def encode(self, prompts: Sequence[str]) -> Tensor:
        """(B, 77, dim) context."""
        ids = torch.tensor([self.chunk(p) for p in prompts])
        return self.embeddings[ids] + self.positions

    def pooled(self, prompts: Sequence[str]) -> Tensor:
        """(B, pooled_dim) pooled embedding (SDXL's ``text_embeds``)."""
        if self.pooled_projection is None:
            raise ValueError("pooled_dim: this encoder was built without a pooled projection")
        return torch.tanh(self.encode(prompts).mean(dim=1) @ self.pooled_projection)


class DiffusersHost:
    """Reference :class:`~freecure.pipeline.host.Host` over a diffusers UNet (eps prediction), on the
    UNet's device. Random draws happen on the CPU, so a seed gives the same noise on every device.

    ``set_identity(on)`` switches the simulated identity on or off (None: nothing to switch, so the
    foundation branch equals the personalized one); ``identity_rows(flags)`` switches it per row of the next
    UNet calls (None: back to ``set_identity``'s state), which one-pass mode needs. The initial noise and the
    ancestral noise stream come from ``seed``, identical for every pass, as the WebUI adapters reproduce them.
    """

    FAMILIES: tuple[str, ...] = FAMILIES
    SAMPLERS: tuple[str, ...] = tuple(sampling.SAMPLERS)

    def __init__(
        self,
        unet: nn.Module,
        *,
        family: str,
        steps: int,
        sampler: str = "euler",
        batch_size: int = 1,
        latent_hw: tuple[int, int] = (8, 8),
        seed: int = 0,
        text_encoder: TextEncoder | None = None,
        set_identity: Callable[[bool], None] | None = None,
        identity_rows: Callable[[Sequence[bool] | None], None] | None = None,
        decoder: Callable[[Tensor], Tensor] | None = None,
        batch_cond_uncond: bool = True,
        karras: bool = False,
    ) -> None:
        if family not in self.FAMILIES:
            raise ValueError(f"family: unknown value {family!r}; accepted: {', '.join(self.FAMILIES)}")
        if sampler not in self.SAMPLERS:
            raise ValueError(f"sampler: unknown value {sampler!r}; accepted: {', '.join(self.SAMPLERS)}")
        self.unet = unet
        self.family = family
        self.sampler = sampler
        self.dtype = next(unet.parameters()).dtype
        self.device = next(unet.parameters()).device
        self.latent_hw = tuple(latent_hw)
        self.seed = seed
        self.batch_cond_uncond = batch_cond_uncond
        self.set_identity = set_identity
        self.identity_rows = identity_rows
        self.decoder = decoder
        self.text_encoder = text_encoder or self._default_text_encoder(seed)
        self._sigmas = self._schedule(steps, karras).to(self.device)
        shape = (batch_size, self._latent_channels(), *self.latent_hw)
        noise = torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=self.dtype)
        self.noise = noise.to(self.device)
        self.interrupted = False
        self.unet_calls = 0

    # --- Host protocol --------------------------------------------------------------------------------

    def attach(self, engine: AttentionEngine) -> AbstractContextManager[None]:
        return intercept_diffusers(engine, self.unet, RowTracker(engine))

    def sample(self, branch: Branch, hooks: CallHooks) -> Tensor:
        return self._sample((branch,), hooks)

    def sample_together(self, branches: Sequence[Branch], hooks: CallHooks) -> Tensor:
        """The branches' generations as one batch, branch-major: every denoiser call holds every branch's rows,
        each from the main pass's noise, with its own prompts and identity (per row)."""
        reason = self.one_pass_unavailable()
        if reason is not None:
            raise ValueError(f"branches: {reason}")
        return self._sample(tuple(branches), hooks)

    def one_pass_unavailable(self) -> str | None:
        """Why the branches of a pass cannot share its calls here, or None."""
        if self.set_identity is not None and self.identity_rows is None:
            return "this identity is switched for the whole batch, not per row"
        return None

    def _sample(self, branches: tuple[Branch, ...], hooks: CallHooks) -> Tensor:
        sigmas = self._sigmas
        copies = len(branches)
        loop: SamplerFn = partial(sampling.SAMPLERS[self.sampler], sigmas=sigmas)
        if self.sampler == "euler_a":
            gen = torch.Generator().manual_seed(self.seed + 1)  # a fresh stream per pass, like the WebUI's
            def noise(_sigma: Tensor, _sigma_next: Tensor) -> Tensor:
                drawn = torch.randn(self.noise.shape, generator=gen, dtype=self.dtype).to(self.device)
                return drawn.repeat(copies, 1, 1, 1)

            loop = partial(loop, noise_sampler=noise)
        return self._run(loop, self.noise.repeat(copies, 1, 1, 1) * sigmas[0], branches, hooks)

    def run(self, fn: SamplerFn, x: Tensor, branch: Branch, hooks: CallHooks) -> Tensor:
        return self._run(fn, x, (branch,), hooks)

    def _run(self, fn: SamplerFn, x: Tensor, branches: tuple[Branch, ...], hooks: CallHooks) -> Tensor:
        rows = sum(len(branch.prompts) for branch in branches)
        if rows != x.shape[0]:
            raise ValueError(f"branch.prompts: {rows} prompts for a batch of {x.shape[0]}")
        if self.set_identity is not None and len(branches) == 1:
            self.set_identity(branches[0].identity)
        try:
            with torch.no_grad():
                return fn(self._cfg_denoiser(branches, hooks), x, extra_args={}, callback=None)
        finally:
            if self.set_identity is not None:
                self.set_identity(True)
            if self.identity_rows is not None:
                self.identity_rows(None)

    def layer_keys(self) -> list[LayerKey]:
        return [key for key, is_self in diffusers_layer_keys(self.unet).values() if is_self]

    def schedule(self) -> Tensor:
        return self._sigmas.clone()

    def decode(self, latents: Tensor) -> Tensor:
        """The ``decoder`` given (a VAE), else a fixed random 1x1 "VAE": 4 channels -> RGB, sigmoid, 8x
        nearest upsampling; on the CPU."""
        if self.decoder is not None:
            return self.decoder(latents)
        weight = torch.randn(3, latents.shape[1], generator=torch.Generator().manual_seed(12345))
        rgb = torch.sigmoid(torch.einsum("oc,bchw->bohw", weight, latents.float().cpu()))
        return rgb.repeat_interleave(8, dim=2).repeat_interleave(8, dim=3)

    def token_columns(self, prompt: str, phrases: Mapping[str, Sequence[str]]) -> dict[str, list[int]]:
        return phrase_columns([self.text_encoder.chunk(prompt)], self.text_encoder.tokenize, phrases)

    def prompt_columns(self, prompts: Sequence[str], phrases: Mapping[str, Sequence[str]]) -> PromptColumns:
        """One conditional row per image, its prompt encoded as it is (no prompt syntax here)."""
        return PromptColumns([[scheduled_columns([(0, prompt)], partial(self.token_columns, phrases=phrases))]
                              for prompt in prompts])

    def check_interrupt(self) -> None:
        if self.interrupted:
            raise CureInterrupted("interrupted by the user")

    # --- internals ------------------------------------------------------------------------------------

    def _default_text_encoder(self, seed: int) -> ToyTextEncoder:
        config = self.unet.config
        pooled_dim = 0
        if self.family == "sdxl":
            pooled_dim = config.projection_class_embeddings_input_dim - 6 * config.addition_time_embed_dim
        return ToyTextEncoder(config.cross_attention_dim, pooled_dim, seed=seed)

    def _schedule(self, steps: int, karras: bool) -> Tensor:
        """The sampling schedule (descending, trailing 0); keeps the model's ascending sigma table."""
        table = sd_sigma_table()
        self.sigma_table = table.to(self.device)
        if karras:
            return sampling.karras_sigmas(steps, float(table[0]), float(table[-1]))
        return sampling.sigmas_from_table(table, steps)

    def _latent_channels(self) -> int:
        return self.unet.config.in_channels

    def _cfg_denoiser(self, branches: tuple[Branch, ...], hooks: CallHooks) -> Callable[..., Tensor]:
        """Rows as A1111 lays them out, [cond rows..., uncond rows...], each half branch-major."""
        def contexts(texts_of: Callable[[Branch], Sequence[str]]) -> Tensor:
            return torch.cat([self._encoded(branch, texts_of(branch), len(branches) > 1) for branch in branches])

        cond = contexts(lambda branch: branch.prompts)
        uncond = contexts(lambda branch: branch.negative_prompts)
        # guidance 1 needs no uncond rows (Forge's shortcut)
        with_uncond = any(branch.cfg_scale != 1.0 for branch in branches)
        added = self._added_cond(branches)
        images = [len(branch.prompts) for branch in branches]
        identity = [branch.identity for branch, count in zip(branches, images, strict=True) for _ in range(count)]
        cond_roles = [RowRole(True, image, foundation=not branch.identity)
                      for branch, count in zip(branches, images, strict=True) for image in range(count)]
        uncond_roles = [RowRole(False, role.image, foundation=role.foundation) for role in cond_roles]

        def denoise(x: Tensor, sigma: Tensor, **_: Any) -> Tensor:
            self.check_interrupt()
            roles = list(cond_roles)
            halves = [(x, cond, None if added is None else added[0])]
            if with_uncond:
                roles += uncond_roles
                halves.append((x, uncond, None if added is None else added[1]))
            hooks.before_call(roles, self.latent_hw, self._progress(sigma[0]))
            if self.batch_cond_uncond:
                merged_added = None if added is None else _cat_dicts([h[2] for h in halves])
                x0 = self._model(torch.cat([h[0] for h in halves]), sigma.repeat(len(halves)),
                              torch.cat([h[1] for h in halves]), merged_added, identity * len(halves))
                x0_parts = x0.chunk(len(halves))
            else:
                x0_parts = tuple(self._model(h[0], sigma, h[1], h[2], identity) for h in halves)
            guided = x0_parts[0]
            if with_uncond:
                scales = torch.tensor([branch.cfg_scale for branch, count in zip(branches, images, strict=True)
                                       for _ in range(count)], dtype=x.dtype, device=x.device).view(-1, 1, 1, 1)
                guided = x0_parts[1] + scales * (x0_parts[0] - x0_parts[1])
            return hooks.after_cfg(x, sigma, guided)

        return denoise

    def _encoded(self, branch: Branch, texts: Sequence[str], switch: bool) -> Tensor:
        """The context of ``texts``; with ``switch``, encoded with the branch's identity (a text encoder may carry
        the identity too), the identity put back on afterwards."""
        if switch and self.set_identity is not None:
            self.set_identity(branch.identity)
        try:
            return self.text_encoder.encode(texts).to(self.device, self.dtype)
        finally:
            if switch and self.set_identity is not None:
                self.set_identity(True)

    def _model(self, x: Tensor, sigma: Tensor, context: Tensor, added: dict[str, Tensor] | None,
               identity: Sequence[bool]) -> Tensor:
        """One model call; ``identity`` per row, switched per row where the rows differ (one-pass mode)."""
        if self.identity_rows is not None and len(set(identity)) > 1:
            self.identity_rows(identity)
        return self._x0(x, sigma, context, added)

    def _x0(self, x: Tensor, sigma: Tensor, context: Tensor, added: dict[str, Tensor] | None) -> Tensor:
        """eps-prediction UNet -> x0 in the k-diffusion parameterization."""
        self.unet_calls += 1
        sigma_b = sigma.view(-1, 1, 1, 1).to(x.dtype)
        c_in = 1 / (sigma_b**2 + 1).sqrt()
        t = sampling.sigma_to_t(sigma.float(), self.sigma_table).to(x.dtype)
        kwargs = {} if added is None else {"added_cond_kwargs": added}
        eps = self.unet(x * c_in, t, encoder_hidden_states=context, **kwargs).sample
        return x - sigma_b * eps

    def _added_cond(self, branches: tuple[Branch, ...]) -> tuple[dict[str, Tensor], dict[str, Tensor]] | None:
        """The conditional and unconditional half's extra model inputs (SDXL's pooled text and size ids)."""
        if self.family != "sdxl":
            return None
        height, width = (8 * s for s in self.latent_hw)
        time_ids = torch.tensor([[height, width, 0, 0, height, width]], dtype=self.dtype)
        rows = sum(len(branch.prompts) for branch in branches)
        halves = ([t for b in branches for t in b.prompts], [t for b in branches for t in b.negative_prompts])
        pooled = [self.text_encoder.pooled(texts).to(self.device, self.dtype) for texts in halves]
        time_ids = time_ids.to(self.device).repeat(rows, 1)
        return tuple({"text_embeds": p, "time_ids": time_ids} for p in pooled)  # type: ignore[return-value]

    def _progress(self, sigma: Tensor) -> float:
        """Fraction of the main schedule done at ``sigma`` (its nearest step; the WebUI's step/steps)."""
        steps = self._sigmas.numel() - 1
        index = int((self._sigmas[:-1] - float(sigma)).abs().argmin())
        return index / steps


def _cat_dicts(dicts: Sequence[dict[str, Tensor]]) -> dict[str, Tensor]:
    return {key: torch.cat([d[key] for d in dicts]) for key in dicts[0]}
