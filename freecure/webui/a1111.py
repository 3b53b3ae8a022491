"""The Automatic1111 host (>= 1.10): attention through per-instance forwards on the ldm/sgm ``CrossAttention``
modules, row roles from the CFG denoiser callbacks, passes through the WebUI's own sampler objects.

Every WebUI import happens inside a function: importing this module must work on a host without ``ldm``/``sgm``
(Forge 2) and in tests without any WebUI.
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Callable, Iterator, Mapping, Sequence
from functools import partial
from typing import Any

import torch

from freecure.attention import (
    AttentionEngine,
    LayerKey,
    RowRole,
    RowTracker,
    intercept_modules,
)
from freecure.pipeline.host import Branch, CallHooks, CureInterrupted
from freecure.tokens import PromptColumns, phrase_columns, scheduled_columns
from freecure.webui.hosts import attention_modules, is_img2img_job, model_family
from freecure.webui.identity import IdentitySwitch, controlnet_hooks
from freecure.webui.leftovers import release_leftovers
from freecure.webui.row_identity import RowLora


def _sampler_total_steps(sampler_name: str, steps: int) -> int:
    """``steps`` as the WebUI schedules prompts for a sampler: second-order samplers count their extra calls."""
    from modules import sd_samplers

    config = sd_samplers.find_sampler_config(sampler_name)
    total = getattr(config, "total_steps", None)
    return total(steps) if callable(total) else steps


def _parameter_names(function: Callable[..., Any]) -> set[str]:
    try:
        return set(inspect.signature(function).parameters)
    except (TypeError, ValueError):  # no signature to read: pass only what every version takes
        return set()


def cond_rows_per_image(conditioning: Any) -> list[int]:
    """How many conditional rows each image has in a multicond conditioning (more than one with AND)."""
    return [len(parts) for parts in conditioning.batch]


def hypernetwork_inputs(context: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """What A1111's attention forwards project to keys and values: the context through the hypernetworks
    loaded now (``modules/sd_hijack_optimizations.py``; none loaded: the context itself)."""
    from modules import shared
    from modules.hypernetworks import hypernetwork

    return hypernetwork.apply_hypernetworks(shared.loaded_hypernetworks, context)


class CallRouter:
    """Turns the WebUI's CFG denoiser callbacks into the pipeline's per-call hooks.

    A1111 lays a denoiser call out as all conditional rows (image-major, one per AND sub-prompt) followed by
    one unconditional row per image; the rows may reach the UNet in one call or in chunks, which the
    attention interceptors' ``RowTracker`` follows per module.
    """

    def __init__(self, job: Any) -> None:
        self.job = job  # the ``p`` whose samplings these callbacks belong to
        self.hooks: CallHooks | None = None
        self.cond_counts: list[int] = []
        self.images_per_branch = 0  # one-pass mode: the batch holds the personalized images, then the foundation's
        self.roles: tuple[RowRole, ...] = ()  # the current denoiser call's rows, in the order they reach the UNet
        self._rows_taken = 0
        self._x_t: torch.Tensor | None = None
        self._sigma: torch.Tensor | None = None

    def route(self, hooks: CallHooks | None, cond_counts: Sequence[int], images_per_branch: int = 0) -> None:
        """Route the callbacks to ``hooks``; ``images_per_branch``: in a one-pass batch, the number of images of
        each branch (rows of image ``images_per_branch`` on are the foundation's), 0 otherwise."""
        self.hooks = hooks
        self.cond_counts = list(cond_counts)
        self.images_per_branch = images_per_branch

    def _role(self, cond: bool, image: int, part: int = 0) -> RowRole:
        per_branch = self.images_per_branch
        if not per_branch:
            return RowRole(cond=cond, image=image, part=part)
        return RowRole(cond=cond, image=image % per_branch, part=part, foundation=image >= per_branch)

    def latents(self, params: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """The call's input latent and sigma, one row per image: A1111 hands the batched rows, and the last
        ones (the unconditional rows) are the latent itself."""
        batch = params.x.shape[0] - sum(self.cond_counts)
        return params.x[-batch:], params.sigma[-batch:]

    def on_cfg_denoiser(self, params: Any) -> None:
        if self.hooks is None:
            return
        sampling_job = getattr(getattr(params, "denoiser", None), "p", None)
        if sampling_job is not None and sampling_job is not self.job:
            # Another job samples, so ours raised inside the WebUI's sampling: release it before this job's
            # first UNet call.
            release_leftovers()
            return
        self._x_t, self._sigma = self.latents(params)
        roles = [self._role(True, i, j) for i, count in enumerate(self.cond_counts) for j in range(count)]
        roles += [self._role(False, i) for i in range(self._x_t.shape[0])]
        self.roles, self._rows_taken = tuple(roles), 0
        # The denoiser's own call count over the calls it expects, as the WebUI's prompt schedules and CFG
        # options count (``state.sampling_step`` is set after each step: one step late).
        denoiser = params.denoiser
        progress = min(1.0, denoiser.step / max(1, denoiser.total_steps))
        self.hooks.before_call(roles, tuple(params.x.shape[-2:]), progress)

    def foundation_rows(self, batch: int) -> list[int]:
        """Which of the next ``batch`` rows to reach the UNet in this denoiser call are foundation rows (their
        indices among those rows): the rows arrive in the announced order, in one call or in chunks."""
        start, self._rows_taken = self._rows_taken, self._rows_taken + batch
        return [row for row, role in enumerate(self.roles[start:start + batch]) if role.foundation]

    def on_cfg_after_cfg(self, params: Any) -> None:
        if self.hooks is None or self._x_t is None:
            return
        params.x = self.hooks.after_cfg(self._x_t, self._sigma, params.x)


@contextlib.contextmanager
def registered_callbacks(router: CallRouter) -> Iterator[None]:
    """The router's CFG callbacks, registered for the duration and removed on every path."""
    from modules import script_callbacks

    script_callbacks.on_cfg_denoiser(router.on_cfg_denoiser, name="freecure")
    script_callbacks.on_cfg_after_cfg(router.on_cfg_after_cfg, name="freecure")
    try:
        yield
    finally:
        # A release can run inside the host's walk over a callback list (``CallRouter.on_cfg_denoiser``) and
        # the host removes from the list it walks, which skips the callback after ours: hand it new lists.
        ordered = getattr(script_callbacks, "ordered_callbacks_map", None)
        if ordered is not None:
            for category, callbacks in list(ordered.items()):
                ordered[category] = list(callbacks)
        script_callbacks.remove_callbacks_for_function(router.on_cfg_denoiser)
        script_callbacks.remove_callbacks_for_function(router.on_cfg_after_cfg)


_LORA_SOURCES = ("lora:", "lyco:")  # IdentitySwitch.sources() of the Lora extension's tags


class RepeatedNoise:
    """The job's ``p.rng`` for a batch that holds its images ``copies`` times (one-pass mode): every draw is
    the images' own draw, repeated, so each copy gets the noise the job's sampling would give it."""

    def __init__(self, rng: Any, copies: int) -> None:
        self.rng = rng
        self.copies = copies

    def next(self) -> torch.Tensor:
        return self.rng.next().repeat(self.copies, 1, 1, 1)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.rng, name)


class A1111Host:
    """The pipeline's host interface for one sampling pass of one batch of an A1111 job."""

    def __init__(self, p: Any, *, x: torch.Tensor, noise: torch.Tensor, conditioning: Any,
                 unconditional: Any, identity: IdentitySwitch, is_hires: bool) -> None:
        self.p = p
        self.x = x
        self.noise = noise
        self.conditioning = conditioning
        self.unconditional = unconditional
        self.identity = identity
        self.is_hires = is_hires
        # img2img/inpaint main pass: ``sample_img2img`` from the init latent, then the inpaint mask blend.
        self.is_img2img = not is_hires and is_img2img_job(p)
        # What ``conditioning`` and ``unconditional`` were made from: a branch with the same gets them.
        self.conditioned_on = (tuple(p.hr_prompts if is_hires else p.prompts),
                               tuple(p.hr_negative_prompts if is_hires else p.negative_prompts))
        self.family = model_family(p.sd_model)
        self.router = CallRouter(p)
        # One-pass mode: the pass's own sampler call, ``(x, c, uc, image_conditioning=...)``, set by the controller.
        self.main_sampling: Callable[..., torch.Tensor] | None = None

    # -- attention and callbacks -------------------------------------------------------------------------
    @contextlib.contextmanager
    def attach(self, engine: AttentionEngine) -> Iterator[None]:
        with intercept_modules(engine, attention_modules(self.unet), RowTracker(engine), hypernetwork_inputs):
            yield

    @contextlib.contextmanager
    def routed(self, hooks: CallHooks, conditioning: Any, images_per_branch: int = 0) -> Iterator[None]:
        """The CFG callbacks, routed to ``hooks`` for sampling with ``conditioning``; also used around the
        WebUI's own main sampling, which is the cure pass (``images_per_branch``: see ``CallRouter.route``)."""
        self.router.route(hooks, cond_rows_per_image(conditioning), images_per_branch)
        try:
            with registered_callbacks(self.router):
                yield
        finally:
            self.router.route(None, ())

    @property
    def unet(self) -> torch.nn.Module:
        return self.p.sd_model.model.diffusion_model

    @property
    def device(self) -> torch.device:
        """The WebUI's compute device (``modules/devices.py``; on Forge 2 ``memory_management.get_torch_device()``):
        the UNet's parameters are on the CPU between uses with --medvram/--lowvram or Forge's offload."""
        from modules import devices

        return devices.device

    def layer_keys(self) -> list[LayerKey]:
        return list(attention_modules(self.unet))

    # -- passes --------------------------------------------------------------------------------------------
    def _steps(self) -> int:
        return (self.p.hr_second_pass_steps or self.p.steps) if self.is_hires else self.p.steps

    def _img2img_steps(self) -> int | None:
        """The ``steps`` argument the WebUI hands ``sample_img2img`` in this pass: the hires steps, none in
        img2img (``StableDiffusionProcessingImg2Img.sample``)."""
        return self._steps() if self.is_hires else None

    def _sampler_name(self) -> str:
        return (getattr(self.p, "hr_sampler_name", None) or self.p.sampler_name) if self.is_hires \
            else self.p.sampler_name

    def _total_steps(self) -> int:
        """Steps as the WebUI schedules prompts: second-order samplers count their extra calls."""
        return _sampler_total_steps(self._sampler_name(), self._steps())

    def _schedule_arguments(self, function: Callable[..., Any]) -> tuple[int, dict[str, Any]]:
        """The steps and step options the WebUI conditions this pass with, for a ``prompt_parser`` function
        (``processing.py`` ``get_conds_with_caching``): the first pass's total steps, and in the hires pass
        also the hires pass's as ``hires_steps`` (edits count on from the first pass); the
        ``use_old_scheduling`` setting where the host's function names it (Forge Neo dropped it)."""
        from modules import shared

        steps: dict[str, Any] = {}
        if self.is_hires:
            steps["hires_steps"] = self._total_steps()
        if "use_old_scheduling" in _parameter_names(function):
            steps["use_old_scheduling"] = bool(getattr(shared.opts, "use_old_scheduling", False))
        return _sampler_total_steps(self.p.sampler_name, self.p.steps), steps

    def _conds(self, branch: Branch) -> tuple[Any, Any]:
        given = branch.identity and (branch.prompts, branch.negative_prompts) == self.conditioned_on
        # Forge hands no unconditional conditioning at CFG 1 (p.uc = None); another scale needs one.
        if given and (self.unconditional is not None or branch.cfg_scale == 1):
            return self.conditioning, self.unconditional
        from modules import prompt_parser, shared

        size = {"width": self.p.width, "height": self.p.height}
        if self.is_hires:
            size = {"width": self.p.hr_upscale_to_x, "height": self.p.hr_upscale_to_y}
        if "distilled_cfg_scale" in _parameter_names(prompt_parser.SdConditioning):
            # Forge and Neo: FLUX's guidance rides on the prompts (processing.py setup_conds and
            # calculate_hr_conds); their engines fall back to a fixed 3.5 (Neo 3.0) when it is missing.
            field = "hr_distilled_cfg" if self.is_hires else "distilled_cfg_scale"
            size["distilled_cfg_scale"] = getattr(self.p, field, None)
        positive = prompt_parser.SdConditioning(list(branch.prompts), **size)
        negative = prompt_parser.SdConditioning(list(branch.negative_prompts), is_negative_prompt=True, **size)
        multicond, learned = prompt_parser.get_multicond_learned_conditioning, prompt_parser.get_learned_conditioning
        steps, options = self._schedule_arguments(multicond)
        c = multicond(shared.sd_model, positive, steps, **options)
        steps, options = self._schedule_arguments(learned)
        uc = learned(shared.sd_model, negative, steps, **options)
        return c, uc

    @contextlib.contextmanager
    def _pass_state(self) -> Iterator[None]:
        """``p.is_hr_pass`` of this host's pass: the WebUI's sampler reads it (the hires scheduler; Forge's
        ``hr_cfg``), and ``post_sample`` (uncured rerun, APG) runs after the WebUI reset it."""
        saved = self.p.is_hr_pass
        self.p.is_hr_pass = self.is_hires
        try:
            yield
        finally:
            self.p.is_hr_pass = saved

    @contextlib.contextmanager
    def _branch_state(self, branch: Branch) -> Iterator[None]:
        """Identity per branch, the pass's hires state, and a fresh RNG so ancestral samplers draw the main
        pass's exact noise."""
        from modules import rng

        saved_rng = self.p.rng
        # Forked: Forge's inpainting noises the init latent outside the mask with torch's global generator at
        # every call (``torch.randn_like``), which ``rng.randn`` seeds when it draws the initial noise; the
        # main pass must draw from where it would have without our passes.
        with torch.random.fork_rng(devices=self._cuda_devices()):
            fresh = rng.ImageRNG(self.x.shape[1:], self.p.seeds, subseeds=self.p.subseeds,
                                 subseed_strength=self.p.subseed_strength,
                                 seed_resize_from_h=self.p.seed_resize_from_h,
                                 seed_resize_from_w=self.p.seed_resize_from_w)
            fresh.next()  # the main pass has drawn its initial noise already
            self.p.rng = fresh
            try:
                with self._pass_state(), self.identity.switched(on=branch.identity):
                    yield
            finally:
                self.p.rng = saved_rng

    def _cuda_devices(self) -> list[torch.device]:
        device = torch.device(self.device)
        return [device] if device.type == "cuda" else []

    def sample(self, branch: Branch, hooks: CallHooks) -> torch.Tensor:
        from modules import sd_samplers

        with self._branch_state(branch):
            c, uc = self._conds(branch)
            with self.routed(hooks, c):
                sampler = sd_samplers.create_sampler(self._sampler_name(), self.p.sd_model)
                if self.is_img2img:
                    # As StableDiffusionProcessingImg2Img.sample: no steps (they follow the denoising strength),
                    # the init images' conditioning (inpainting models), and the mask blend afterwards.
                    result = sampler.sample_img2img(self.p, self.x, self.noise, c, uc,
                                                    image_conditioning=self.p.image_conditioning)
                    result = self._inpaint_blend(result)
                elif self.is_hires:
                    result = sampler.sample_img2img(self.p, self.x, self.noise, c, uc, steps=self._steps(),
                                                    image_conditioning=self.p.txt2img_image_conditioning(self.x))
                else:
                    result = sampler.sample(self.p, self.x, c, uc,
                                            image_conditioning=self.p.txt2img_image_conditioning(self.x))
        self.check_interrupt()
        return result

    def one_pass_unavailable(self) -> str | None:
        """Why the foundation rows cannot ride in this pass's sampling (one-pass mode), or None: the WebUI's
        sampler must sample a txt2img first pass with seeded noise that can be repeated per branch, and every
        identity source must act through the prompts (embeddings, trigger words), which are per row."""
        from modules import sd_samplers

        if self.is_hires or self.is_img2img:
            return "it cures the first pass of txt2img only"
        if self.main_sampling is None:
            return "the WebUI's sampler call was not found"
        config = sd_samplers.find_sampler_config(self._sampler_name())
        if config is None or config.options.get("brownian_noise", False):
            return f"{self._sampler_name()} draws its noise per seed for the batch it is given"
        whole_batch = self._whole_batch_sources()
        if whole_batch:
            return f"{', '.join(whole_batch)} acts on the whole batch, not per row"
        row_lora = self._row_lora()
        if isinstance(row_lora, str):
            return row_lora
        if controlnet_hooks(self.p):
            return "ControlNet's units are set up for the job's own batch"
        return None

    def _whole_batch_sources(self) -> list[str]:
        """The identity sources that cannot be switched per row: all but the Lora extension's networks."""
        return [source for source in self.identity.sources() if not source.startswith(_LORA_SOURCES)]

    def _row_lora(self) -> RowLora | str | None:
        """The identity LoRAs switched per row (one-pass mode), why they cannot be, or None without any."""
        from modules import extra_networks

        names = [source.split(":", 1)[1] for source in self.identity.sources() if source.startswith(_LORA_SOURCES)]
        if not names:
            return None
        return RowLora.find(extra_networks.extra_network_registry.get("lora"), names, self.unet)

    def sample_together(self, branches: Sequence[Branch], hooks: CallHooks) -> torch.Tensor:
        """The branches in one sampling of the WebUI's own sampler (``main_sampling``): the latent, the
        conditionings and the ancestral noise repeated per branch, image-major within each."""
        from modules import prompt_parser

        reason = self.one_pass_unavailable()
        if reason is not None:
            raise ValueError(f"branches: {reason}")
        assert self.main_sampling is not None
        conds = []
        for branch in branches:  # the text encoder's LoRA too: the foundation's prompts are encoded without it
            with self.identity.switched(on=branch.identity):
                conds.append(self._conds(branch))
        batch = [row for c, _ in conds for row in c.batch]
        c = prompt_parser.MulticondLearnedConditioning(shape=(len(batch),), batch=batch)
        # Forge and Neo hand no unconditional conditioning at CFG 1 (p.uc = None): none for the batch either.
        uncond = [branch_uc for _, branch_uc in conds]
        uc = None if any(u is None for u in uncond) else [row for branch_uc in uncond for row in branch_uc]
        x = self.x.repeat(len(branches), 1, 1, 1)
        saved_rng = self.p.rng
        self.p.rng = RepeatedNoise(saved_rng, len(branches))  # k-diffusion's noise: TorchHijack reads p.rng
        row_lora = self._row_lora()
        try:
            with contextlib.ExitStack() as stack:
                stack.enter_context(self._pass_state())
                stack.enter_context(self.routed(hooks, c, images_per_branch=self.x.shape[0]))
                if isinstance(row_lora, RowLora):
                    stack.enter_context(row_lora.installed(self.unet, self.router.foundation_rows))
                result = self.main_sampling(x, c, uc, image_conditioning=self.p.txt2img_image_conditioning(x))
        finally:
            self.p.rng = saved_rng
        self.check_interrupt()
        return result

    def _inpaint_blend(self, samples: torch.Tensor) -> torch.Tensor:
        """The init latent outside the inpaint mask after sampling, and the scripts' ``on_mask_blend``, as
        ``StableDiffusionProcessingImg2Img.sample`` does (A1111 1.10.1 and Forge 2)."""
        p = self.p
        if getattr(p, "mask", None) is None:
            return samples
        from modules import scripts

        blended = samples * p.nmask + p.init_latent * p.mask
        if p.scripts is not None:
            args = scripts.MaskBlendArgs(samples, p.nmask, p.init_latent, p.mask, blended)
            p.scripts.on_mask_blend(p, args)
            blended = args.blended_latent
        return blended

    def inpaint_region(self) -> torch.Tensor | None:
        """Where this pass may change the image: the inpaint mask at latent size (``p.nmask``, in the crop of
        "Only masked"); None when the whole image is sampled."""
        nmask = getattr(self.p, "nmask", None) if self.is_img2img else None
        return None if nmask is None else nmask[0]

    def run(self, fn: Callable[..., torch.Tensor], x: torch.Tensor, branch: Branch,
            hooks: CallHooks) -> torch.Tensor:
        """Run a k-diffusion-style function with the WebUI's CFG denoiser (``sample_img2img`` with zero noise
        hands ``x`` through unchanged and keeps progress, interruption and prompt schedules working)."""
        from modules import sd_samplers

        saved_strength, saved_cfg = self.p.denoising_strength, self.p.cfg_scale
        with self._branch_state(branch):
            c, uc = self._conds(branch)
            # A strength of 0 or None would make the WebUI schedule zero steps; our fn has its own schedule.
            self.p.denoising_strength, self.p.cfg_scale = 1.0, branch.cfg_scale
            try:
                with self.routed(hooks, c):
                    sampler = sd_samplers.create_sampler("Euler", self.p.sd_model)

                    # The WebUI passes `disable`, and `sigmas`/`n`/... when the signature names them: this
                    # signature names none, so the loop keeps its own schedule.
                    def loop(model: Any, x: torch.Tensor, extra_args: Any = None, callback: Any = None,
                             disable: Any = None) -> torch.Tensor:
                        return fn(model, x, extra_args=extra_args, callback=callback)

                    sampler.func = loop
                    # An inpainting model needs the masked init image it sampled with in img2img.
                    image_conditioning = self.p.image_conditioning if self.is_img2img \
                        else self.p.txt2img_image_conditioning(x)
                    result = sampler.sample_img2img(self.p, x, torch.zeros_like(x), c, uc, steps=self._steps(),
                                                    image_conditioning=image_conditioning)
            finally:
                self.p.denoising_strength, self.p.cfg_scale = saved_strength, saved_cfg
        self.check_interrupt()
        return result

    def schedule(self) -> torch.Tensor:
        """The sigmas this pass samples: txt2img's whole schedule; in a ``sample_img2img`` pass (img2img,
        inpaint, hires) the tail that the denoising strength leaves, as ``sample_img2img`` cuts it."""
        from modules import sd_samplers, sd_samplers_common

        sampler = sd_samplers.create_sampler(self._sampler_name(), self.p.sd_model)
        with self._pass_state():
            if not (self.is_img2img or self.is_hires):
                return sampler.get_sigmas(self.p, self._steps())
            steps, t_enc = sd_samplers_common.setup_img2img_steps(self.p, self._img2img_steps())
            return sampler.get_sigmas(self.p, steps)[steps - t_enc - 1:]

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        from modules import devices, processing

        decoded = processing.decode_latent_batch(self.p.sd_model, latents, target_device=devices.cpu,
                                                 check_for_nans=True)
        return torch.clamp((torch.stack(list(decoded)).float() + 1.0) / 2.0, 0.0, 1.0)

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        from modules import sd_samplers_common, shared

        method = sd_samplers_common.approximation_indexes.get(shared.opts.sd_vae_encode_method)
        return sd_samplers_common.images_tensor_to_samples(images, method, self.p.sd_model)

    def text_embedder(self) -> Any:
        """The CLIP wrapper with ``tokenize_line``: SD1/SD2 ``cond_stage_model``, SDXL's first (CLIP-L) one."""
        model = self.p.sd_model
        return model.conditioner.embedders[0] if getattr(model, "is_sdxl", False) else model.cond_stage_model

    def token_columns(self, prompt: str, phrases: Mapping[str, Sequence[str]]) -> dict[str, list[int]]:
        embedder = self.text_embedder()
        chunks, _ = embedder.tokenize_line(prompt)
        return phrase_columns([list(chunk.tokens) for chunk in chunks],
                              lambda text: embedder.tokenize([text])[0], phrases)

    def prompt_columns(self, prompts: Sequence[str], phrases: Mapping[str, Sequence[str]]) -> PromptColumns:
        """Rows as ``modules/prompt_parser.py`` builds them: ``get_multicond_prompt_list`` splits each prompt at
        AND into sub-prompts (one conditional row each, weights stripped), and
        ``get_learned_conditioning_prompt_schedules`` gives each sub-prompt's texts over the schedule
        (``[from:to:when]``, ``[a|b]``), with the steps and timeline of this pass's conditioning."""
        from modules import prompt_parser

        parts, flat, _ = prompt_parser.get_multicond_prompt_list(list(prompts))
        schedule_of = prompt_parser.get_learned_conditioning_prompt_schedules
        steps, options = self._schedule_arguments(schedule_of)
        schedules = schedule_of(list(flat), steps, **options)
        columns_of = partial(self.token_columns, phrases=phrases)
        rows = [scheduled_columns(schedule, columns_of) for schedule in schedules]
        return PromptColumns([[rows[index] for index, _ in image_parts] for image_parts in parts])

    def check_interrupt(self) -> None:
        from modules import shared

        if shared.state.interrupted or shared.state.skipped:
            raise CureInterrupted("interrupted" if shared.state.interrupted else "skipped")
