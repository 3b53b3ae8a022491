"""The host interface: what the pipeline needs from a WebUI (or the reference diffusers host).

A host owns the model, the sampler, the conditioning and the random streams of one generation. The
pipeline never touches those directly: it asks the host to sample a :class:`Branch` (identity on or off,
which prompts, which CFG scale) and gets called back once per denoiser call through :class:`CallHooks`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import torch
from torch import Tensor

from freecure.attention import LayerKey, RowRole
from freecure.tokens import PromptColumns

if TYPE_CHECKING:
    from freecure.attention import AttentionEngine

SamplerFn = Callable[..., Tensor]
"""A k-diffusion-style loop ``fn(model, x, extra_args=None, callback=None) -> Tensor`` whose sigmas are
bound in a closure; ``model(x, sigma_batch, **extra_args)`` returns the CFG-guided x0."""


class CureError(RuntimeError):
    """FreeCure could not finish; the WebUI keeps the uncured image and shows the message as the reason."""


class CureInterrupted(CureError):
    """The user interrupted or skipped the generation while FreeCure was running."""


@dataclass(frozen=True)
class Branch:
    """One way of running the model: identity on/off, the prompts per image and the CFG scale.

    ``negative_prompts`` are the guidance baseline (the source prompt for asymmetric APG guidance).
    """

    identity: bool
    prompts: tuple[str, ...]
    negative_prompts: tuple[str, ...]
    cfg_scale: float

    def __post_init__(self) -> None:
        if not self.prompts:
            raise ValueError("Branch.prompts must hold one prompt per image, got none")
        if len(self.negative_prompts) != len(self.prompts):
            raise ValueError(
                f"Branch.negative_prompts must hold one prompt per image ({len(self.prompts)}), "
                f"got {len(self.negative_prompts)}"
            )
        if not (isinstance(self.cfg_scale, (int, float)) and self.cfg_scale > 0):
            raise ValueError(f"Branch.cfg_scale must be a positive number, got {self.cfg_scale!r}")


class CallHooks(Protocol):
    """The pipeline's per-denoiser-call hooks; a host calls them from its CFG denoiser."""

    def before_call(self, roles: Sequence[RowRole], latent_hw: tuple[int, int], progress: float) -> None:
        """Called once per denoiser call, before the UNet runs: the role of every batch row in the
        order the rows reach the UNet (chunks included), the latent size and the fraction of the
        schedule done."""

    def after_cfg(self, x_t: Tensor, sigma: Tensor, x0: Tensor) -> Tensor:
        """Called after the CFG combine with the call's input latent, per-row sigma and guided x0;
        returns the x0 the sampler continues with (the same tensor, or a blended one)."""


class Host(Protocol):
    """What a WebUI adapter implements for the pipeline. Everything refers to the current generation."""

    family: str
    """Model family: "sd1", "sd2" or "sdxl"."""

    device: torch.device
    """Where the UNet computes (not where its weights wait between passes); the face parser runs there."""

    def layer_keys(self) -> list[LayerKey]:
        """Keys of every transformer block of the UNet (ldm naming), for the layer presets."""

    def attach(self, engine: AttentionEngine) -> AbstractContextManager[Any]:
        """Install attention interception routing to ``engine`` on the UNet for the duration of the
        context; removed exactly on exit, also when the body raises."""

    def sample(self, branch: Branch, hooks: CallHooks) -> Tensor:
        """A full generation of ``branch`` from the main pass's exact initial noise, with the main pass's
        sampler, schedule and ancestral noise stream; returns the final latents (B, C, h, w)."""

    def sample_together(self, branches: Sequence[Branch], hooks: CallHooks) -> Tensor:
        """One generation of every branch in the same model calls (one-pass mode): the batch holds each
        branch's images in turn (branch-major), each from the main pass's exact initial and ancestral noise,
        with its own conditioning and its identity per row; the row roles mark the identity-off branch's
        rows ``foundation``. Returns the final latents of all rows, in that order."""

    def one_pass_unavailable(self) -> str | None:
        """Why ``sample_together`` cannot run this generation (say, an identity that is switched for the whole
        batch only), or None."""

    def run(self, fn: SamplerFn, x: Tensor, branch: Branch, hooks: CallHooks) -> Tensor:
        """Run the k-diffusion-style loop ``fn`` from latent ``x`` with the host's CFG denoiser for
        ``branch`` (used by APG for inversion and regeneration)."""

    def schedule(self) -> Tensor:
        """The main pass's sigmas: descending, with a trailing 0."""

    def decode(self, latents: Tensor) -> Tensor:
        """Decode latents to images (B, 3, H, W) with values in [0, 1]."""

    def token_columns(self, prompt: str, phrases: Mapping[str, Sequence[str]]) -> dict[str, list[int]]:
        """Context columns of each attribute's phrases in one encoded text (name -> columns), as the text
        encoder chunks it; an attribute whose words are not found maps to an empty list."""

    def prompt_columns(self, prompts: Sequence[str], phrases: Mapping[str, Sequence[str]]) -> PromptColumns:
        """The columns of every conditional row a pass over ``prompts`` (one per image) sees: per image, per
        sub-prompt and per prompt-schedule entry, as the host builds each row's conditioning."""

    def check_interrupt(self) -> None:
        """Raise :class:`CureInterrupted` when the user interrupted or skipped the generation."""
