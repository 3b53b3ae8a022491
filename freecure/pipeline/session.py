"""FreeCure's stages, written so a WebUI can call them from separate hooks.

``foundation`` (identity off, recording) -> ``build_masks`` -> ``curing`` (a context manager around the
personalized pass: FASA or noise blending) -> ``apg`` (inversion and regeneration for expressions).
``run_freecure`` chains them for hosts that run every pass themselves (the reference host, benchmarks).

Foundation and cure passes line up by denoiser-call index: the host runs both with the same initial
noise, sampler, schedule and ancestral noise, so call i of one is call i of the other, for first-order,
ancestral and second-order samplers alike. Every stage installs its attention hooks for its own duration
only (``with host.attach(...)``), so nothing stays installed after a stage returns or raises.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from freecure import sampling
from freecure.attention import (
    AttentionEngine,
    CrossAttentionRecorder,
    FasaSettings,
    KVBank,
    LayerKey,
    RowRole,
    preset_layers,
)
from freecure.attributes import VOCABULARY, PromptAnalysis, analyze_prompt, subject_phrase
from freecure.masks import AttributeMasks, build_masks, region_on_image, to_latent
from freecure.options import Options
from freecure.parsing import parse_faces

from .foundation_cache import FoundationCache, FoundationRecord
from .host import Branch, CureError, Host


class PlainHooks:
    """Hooks that change nothing; they count the denoiser calls."""

    def __init__(self) -> None:
        self.calls = 0

    def before_call(self, roles: Sequence[RowRole], latent_hw: tuple[int, int], progress: float) -> None:
        self.calls += 1

    def after_cfg(self, x_t: Tensor, sigma: Tensor, x0: Tensor) -> Tensor:
        return x0


class EngineHooks(PlainHooks):
    """Announce every denoiser call to the attention engine (recording or curing)."""

    def __init__(self, engine: AttentionEngine) -> None:
        super().__init__()
        self.engine = engine

    def before_call(self, roles: Sequence[RowRole], latent_hw: tuple[int, int], progress: float) -> None:
        super().before_call(roles, latent_hw, progress)
        self.engine.begin_call(roles, latent_hw, progress)


class FoundationHooks(EngineHooks):
    """Foundation pass: engine recording, and (for noise blending) the (x_t, guided x0) of every call."""

    def __init__(self, engine: AttentionEngine, keep_predictions: bool) -> None:
        super().__init__(engine)
        self.keep_predictions = keep_predictions
        self.predictions: list[tuple[Tensor, Tensor]] = []

    def after_cfg(self, x_t: Tensor, sigma: Tensor, x0: Tensor) -> Tensor:
        if self.keep_predictions:
            self.predictions.append((x_t.detach().clone(), x0.detach().clone()))
        return x0


class BlendHooks(PlainHooks):
    """Cure pass by noise blending: from ``start`` on, the guided x0 of call i is pulled toward the
    foundation's call i inside the mask (``weight_map`` = a * M, (B, 1, h, w))."""

    def __init__(
        self, predictions: Sequence[tuple[Tensor, Tensor]], weight_map: Tensor, start: float
    ) -> None:
        super().__init__()
        self.predictions = predictions
        self.weight_map = weight_map
        self.start = start
        self.misses = 0
        self._progress = 0.0

    def before_call(self, roles: Sequence[RowRole], latent_hw: tuple[int, int], progress: float) -> None:
        super().before_call(roles, latent_hw, progress)
        self._progress = progress

    def after_cfg(self, x_t: Tensor, sigma: Tensor, x0: Tensor) -> Tensor:
        if self._progress < self.start:
            return x0
        index = self.calls - 1
        if index >= len(self.predictions) or self.predictions[index][0].shape != x_t.shape:
            self.misses += 1
            return x0
        x_f, x0_f = self.predictions[index]
        weight = self.weight_map.to(device=x0.device, dtype=x0.dtype)
        return sampling.blend_prediction(x_t, x0, x_f.to(x0.device), x0_f.to(x0.device), weight)


class OnePassHooks(EngineHooks):
    """One-pass mode: the personalized rows (the first ``images`` rows of every latent) and the foundation rows
    (the rest) in the same denoiser calls. At the first call at or after ``masks_at`` the session builds the
    masks from what the foundation rows showed so far (``start_cure``), and the cure acts from that call on:
    FASA through the engine, or blending the personalized rows' x0 toward the foundation rows' here."""

    def __init__(self, engine: AttentionEngine, images: int, masks_at: float, blend_start: float,
                 start_cure: Callable[[Tensor | None, tuple[int, int]], Tensor | None]) -> None:
        super().__init__(engine)
        self.images = images
        self.masks_at = masks_at
        self.blend_start = blend_start
        self.start_cure = start_cure
        self.started = False
        self.blend_weight_map: Tensor | None = None  # from start_cure: a * M per image, for noise blending
        self.failure: Exception | None = None  # what start_cure raised; the pass then runs uncured
        self._foundation_x0: Tensor | None = None  # the foundation rows' guided x0 of the latest call
        self._progress = 0.0

    def before_call(self, roles: Sequence[RowRole], latent_hw: tuple[int, int], progress: float) -> None:
        self._progress = progress
        if not self.started and progress >= self.masks_at:
            self.started = True
            try:
                self.blend_weight_map = self.start_cure(self._foundation_x0, latent_hw)
            except Exception as error:  # a WebUI swallows its callbacks' errors: kept for the session
                self.failure = error
        super().before_call(roles, latent_hw, progress)

    def after_cfg(self, x_t: Tensor, sigma: Tensor, x0: Tensor) -> Tensor:
        images = self.images
        self._foundation_x0 = x0[images:]
        weight = self.blend_weight_map
        if weight is None or self._progress < self.blend_start:
            return x0
        weight = weight.to(device=x0.device, dtype=x0.dtype)
        cured = sampling.blend_prediction(x_t[:images], x0[:images], x_t[images:], x0[images:], weight)
        return torch.cat([cured, x0[images:]])


BANK_SHARE_OF_MODEL = 0.2  # DESIGN.md section 5: peak GPU memory <= 1.25x a plain generation


def bank_device_budget(device: torch.device) -> int | None:
    """GPU bytes the key/value bank may hold before the rest goes to CPU memory: a share of what is allocated
    on ``device`` (the model, the bulk of a plain generation's peak). The bank asks at its first K/V, on the
    device attention runs on, once the host has loaded the model there for sampling. None on the CPU."""
    device = torch.device(device)
    if device.type != "cuda":
        return None
    return int(BANK_SHARE_OF_MODEL * torch.cuda.memory_allocated(device))


@dataclass
class CurePlan:
    """What the session will do, decided from the options and the prompt before any sampling."""

    attributes: tuple[str, ...]  # regional attributes to cure in masks
    phrases: dict[str, tuple[str, ...]]  # their phrases in the prompt (for attention maps)
    cure: bool  # the regional cure can change the image (attributes and a positive weight)
    apg: bool
    notes: list[str] = field(default_factory=list)


@dataclass
class CureResult:
    """Everything a caller may show: the cured latents and how they came about."""

    latents: Tensor
    foundation_images: Tensor | None
    masks: list[AttributeMasks]
    maps: dict[str, Tensor]
    notes: list[str]
    bank_bytes: int
    bank_misses: int
    calls: dict[str, int]


def plan_cure(options: Options, analysis: PromptAnalysis) -> CurePlan:
    """Which attributes to cure and whether APG runs (``options`` resolved for the model family)."""
    notes: list[str] = []
    names = analysis.names() if options.attributes == "auto" else tuple(options.attributes)
    regional = tuple(n for n in names if VOCABULARY[n].regional)
    abstract = tuple(n for n in names if not VOCABULARY[n].regional)
    weight = options.strength if options.method == "fasa" else options.blend_weight
    if options.method == "fasa" and options.attribute_strength:
        strengths = {name: options.strength_of(name) for name in regional}
        weight = max(strengths.values(), default=weight)
        uncured = [name for name in regional if strengths[name] <= 0]
        if uncured and weight > 0:
            regional = tuple(name for name in regional if strengths[name] > 0)
            notes.append(f"strength 0 for {', '.join(uncured)}: not cured")
    elif options.attribute_strength:
        notes.append("attribute_strength is for fasa; blend uses blend_weight in every mask")
    if not regional:
        notes.append("no regional attribute in the prompt: nothing to cure in masks")
    elif weight is None or weight <= 0:
        notes.append(f"{options.method} weight is {weight}: the cure pass is the plain personalized pass")
    apg = options.apg == "on" or (options.apg == "auto" and bool(abstract))
    phrases = {name: analysis.phrases(name) or (name,) for name in regional}
    return CurePlan(regional, phrases, bool(regional) and weight is not None and weight > 0, apg, notes)


class CureSession:
    """One FreeCure run over a host: call ``foundation``, ``build_masks``, ``curing`` and ``apg`` in order
    (or ``run_freecure``). ``options`` are resolved for ``host.family`` here."""

    def __init__(
        self,
        host: Host,
        options: Options,
        *,
        prompts: Sequence[str],
        negative_prompts: Sequence[str],
        cfg_scale: float,
        foundation_prompts: Sequence[str] | None = None,
        models_dir: str | Path | None = None,
    ) -> None:
        self.host = host
        self.options = options.resolved(host.family)
        self.personalized = Branch(True, tuple(prompts), tuple(negative_prompts), cfg_scale)
        self.foundation_branch = Branch(
            False, tuple(foundation_prompts or prompts), tuple(negative_prompts), cfg_scale
        )
        self.models_dir = models_dir
        self.analyses = [analyze_prompt(p) for p in self.personalized.prompts]
        self.plan = plan_cure(self.options, self.analyses[0])
        self.notes = list(self.plan.notes)
        self.engine = AttentionEngine()
        self.layers: frozenset[LayerKey] = frozenset()
        self.bank: KVBank | None = None
        self.maps: dict[str, Tensor] = {}  # attribute -> (images, h, w) cross-attention maps of the foundation
        self.foundation_predictions: list[tuple[Tensor, Tensor]] = []
        self.foundation_reused = False
        self.foundation_latents: Tensor | None = None
        self.foundation_images: Tensor | None = None
        self.masks: list[AttributeMasks] = []
        self.calls: dict[str, int] = {}

    # --- stage 1: foundation ------------------------------------------------------------------------

    def foundation(self, cache: FoundationCache | None = None, key: str | None = None) -> Tensor | None:
        """The identity-off pass, recording what the cure needs. Returns the foundation latents, or
        None when there is nothing to cure in masks (the pass is skipped).

        With a ``cache`` and the ``key`` of this pass's inputs, a record of an earlier pass with the same key
        that covers this cure is used instead of sampling, and a pass that ran is kept for later jobs."""
        if not self.plan.cure:
            return None
        self.host.check_interrupt()
        if self.options.method == "fasa":
            self.layers = preset_layers(self.options.layers, self.host.layer_keys(), self.host.family)
        needs_predictions = self.options.method == "blend"
        record = cache.get(key) if cache is not None and key is not None else None
        if record is not None and record.covers(self.layers, needs_predictions):
            return self._reuse(record)
        notes_before = len(self.notes)
        if self.options.method == "fasa":
            # Stored in the dtype attention computes in: the weights' storage dtype (FP8, NF4, GGUF) is not it.
            self.bank = KVBank(dtype=None, offload=self.options.offload_bank, device_budget=bank_device_budget)
        # Each conditional row (image, AND sub-prompt, prompt-schedule entry) is matched with its own columns.
        columns = self.host.prompt_columns(self.foundation_branch.prompts, self.plan.phrases)
        found = columns.names()
        for name in self.plan.attributes:
            if name not in found:
                self.notes.append(f"{name}: its words were not found in the encoded prompt, no attention map")
        for image in range(len(self.foundation_branch.prompts)):
            missing = [name for name in found if name not in columns.names(image)]
            if missing:
                self.notes.append(f"image {image}: {', '.join(missing)}: not in this image's prompt, no attention map")
        # Maps from the decoder layers FASA uses by default (the paper's maps come from 32x32 decoder
        # layers): a third of SD1's cross-attention layers, and the cost of recording with them.
        map_layers = preset_layers("default", self.host.layer_keys(), self.host.family)
        recorder = CrossAttentionRecorder(columns, layers=map_layers) if found else None
        # Predictions are a few latents per call: kept for a cached record too, so that a later cell of a
        # method sweep can blend from it.
        hooks = FoundationHooks(self.engine, keep_predictions=needs_predictions or cache is not None)
        with self.host.attach(self.engine), self.engine.recording(self.bank, self.layers, recorder):
            latents = self.host.sample(self.foundation_branch, hooks)
        self._raise_attention_failure("foundation pass")
        self.foundation_predictions = hooks.predictions
        self.maps = recorder.maps() if recorder is not None else {}
        self.calls["foundation"] = hooks.calls
        self.foundation_latents = latents
        self.foundation_images = self.host.decode(latents)
        if cache is not None and key is not None:
            record = FoundationRecord.capture(
                latents=latents, images=self.foundation_images, maps=self.maps, bank=self.bank,
                bank_layers=self.layers, predictions=hooks.predictions, calls=hooks.calls,
                notes=tuple(self.notes[notes_before:]))
            if not cache.put(key, record):
                self.notes.append(f"foundation not kept for reuse: {record.nbytes / 2**20:.0f} MB is more than the"
                                  f" foundation cache holds ({cache.max_bytes / 2**20:.0f} MB, Settings → FreeCure)")
        return latents

    def _reuse(self, record: FoundationRecord) -> Tensor:
        """Take an earlier job's foundation pass (same inputs) instead of sampling it again."""
        device = self.host.device
        self.bank = record.bank.offloaded() if record.bank is not None else None
        self.maps = dict(record.maps)
        self.foundation_predictions = [(x.to(device), x0.to(device)) for x, x0 in record.predictions]
        self.foundation_latents = record.latents.to(device)
        self.foundation_images = record.images.clone()
        self.calls["foundation"] = 0
        self.foundation_reused = True
        self.notes.extend(record.notes)
        self.notes.append("foundation reused from an earlier job with the same inputs")
        return self.foundation_latents

    # --- stage 2: masks --------------------------------------------------------------------------------

    def build_masks(self, region: Tensor | None = None) -> list[AttributeMasks]:
        """Per image: face parsing of the foundation image and/or the recorded attention maps; with a
        ``region`` ((h, w), on where non-zero: an inpaint mask at any grid size, e.g. the latent's), every mask
        is cut to it."""
        if self.foundation_images is None:
            return []
        self.host.check_interrupt()
        maps = self.maps
        images = self.foundation_images
        height, width = images.shape[-2:]
        parts_of = {name: VOCABULARY[name].parts for name in self.plan.attributes}
        self.masks = []
        for index in range(images.shape[0]):
            parse = self._parse(images[index])
            # Softmax probabilities are positive: an all-zero map is an image whose rows lacked the words.
            image_maps = {name: m[index].numpy() for name, m in maps.items() if index < m.shape[0] and m[index].any()}
            masks = build_masks(
                self.plan.attributes,
                parts_of,
                (int(height), int(width)),
                parse=parse,
                attention_maps=image_maps,
                source=self.options.mask_source,
                combine=self.options.mask_combine,
                dilation={name: self.options.dilation_of(name) for name in self.plan.attributes},
            )
            if region is not None:
                masks = masks.within(region_on_image(region, (int(height), int(width))))
            self.notes.extend(f"image {index}: {note}" for note in masks.notes)
            self.masks.append(masks)
        return self.masks

    def _parse(self, image: Tensor) -> Any:
        options = self.options
        if options.mask_source == "attention" or options.face_parser == "none":
            return None
        if self.models_dir is None:
            self.notes.append("no models folder for the face parser: attention masks only")
            return None
        rgb = (image.permute(1, 2, 0).clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy()
        try:
            return parse_faces(
                np.ascontiguousarray(rgb),
                parser=options.face_parser,
                models_dir=self.models_dir,
                device=self.host.device,
                faces=options.faces,
                allow_download=options.allow_download,
            )
        except Exception as error:  # the parser is an aid: attention maps still localize the attributes
            self.notes.append(f"face parser failed ({type(error).__name__}: {error}): attention masks only")
            return None

    # --- stage 3: cure --------------------------------------------------------------------------------

    @property
    def cures(self) -> bool:
        """Whether the cure pass (with the masks of ``build_masks``) is more than the plain personalized pass."""
        return self._cures_with(self._union_masks())

    def _attribute_weights(self) -> list[list[tuple[float, Tensor]]] | tuple[()]:
        """Per image, (strength, mask) of each cured attribute, when strengths differ per attribute."""
        strengths = {name: self.options.strength_of(name) for name in self.plan.attributes}
        if len(set(strengths.values())) <= 1:
            return ()  # one strength for all: the plain bias, as without per-attribute strengths
        return [[(strengths[name], torch.from_numpy(mask)) for name, mask in masks.per_attribute.items()]
                for masks in self.masks]

    def _union_masks(self) -> list[Tensor]:
        return self._union_masks_of(self.masks)

    @staticmethod
    def _union_masks_of(masks: Sequence[AttributeMasks]) -> list[Tensor]:
        return [torch.from_numpy(m.union) for m in masks]

    def _cures_with(self, masks: Sequence[Tensor]) -> bool:
        return self.plan.cure and self.foundation_latents is not None and any(bool(m.any()) for m in masks)

    def _fasa_settings(self, masks: Sequence[Tensor], own_masks: bool) -> FasaSettings:
        return FasaSettings(
            layers=self.layers,
            weight=self.options.strength,
            progress_range=(self.options.step_start, self.options.step_end),
            masks=masks,
            attribute_weights=self._attribute_weights() if own_masks else (),
        )

    @contextmanager
    def curing(self, masks: Sequence[Tensor] | None = None) -> Iterator[PlainHooks]:
        """Context for the personalized pass; yields the hooks the host's denoiser must call.

        ``masks``: one 2-D mask per image (default: the union masks of ``build_masks``). With nothing
        to cure (no attribute, weight <= 0, every mask empty) nothing is installed and the pass is the
        plain personalized one, bit for bit.
        """
        own_masks = masks is None
        masks = list(masks) if masks is not None else self._union_masks()
        if not self._cures_with(masks):
            if self.plan.cure:
                self.notes.append("every mask is empty: the cure pass is the plain personalized pass")
            hooks = PlainHooks()
            yield hooks
            self.calls["cure"] = hooks.calls
            return
        if len(masks) != len(self.personalized.prompts):
            raise ValueError(f"masks: {len(masks)} mask(s) for {len(self.personalized.prompts)} image(s)")
        if self.options.method == "fasa":
            assert self.bank is not None
            settings = self._fasa_settings(masks, own_masks)
            hooks = EngineHooks(self.engine)
            with self.host.attach(self.engine), self.engine.curing(settings, self.bank):
                yield hooks
            self._raise_attention_failure("cure pass")
        else:
            latent_hw = tuple(self.foundation_predictions[0][0].shape[-2:])
            coverage = torch.stack([to_latent(m, latent_hw) for m in masks])[:, None]
            weight_map = self.options.blend_weight * coverage
            hooks = BlendHooks(self.foundation_predictions, weight_map, self.options.blend_start)
            yield hooks
            if hooks.misses:
                self.notes.append(f"noise blending: {hooks.misses} call(s) had no foundation prediction")
        self.calls["cure"] = hooks.calls

    def _raise_attention_failure(self, stage: str) -> None:
        """The interceptors keep the host sampling when our attention work fails; the pass is still lost."""
        failure = self.engine.failure
        if failure is not None:
            raise CureError(f"attention failed in the {stage} ({type(failure).__name__}: {failure})") from failure

    # --- one-pass mode: stages 1 to 3 in one pass -----------------------------------------------------

    def one_pass(self, region: Tensor | None = None, masks: Sequence[Tensor] | None = None) -> Tensor:
        """Foundation and cure in one pass: the foundation rows (identity off) run in the personalized pass's
        model calls. Their cross-attention over the first ``one_pass_masks_at`` of the schedule and their
        guided x0 then (for the face parser) build the masks, as ``build_masks`` does (``region`` as there);
        from that call on FASA reads the foundation rows' K/V of the same call (no bank), or the personalized
        x0 is blended toward theirs. ``masks`` (one 2-D mask per image) replaces the mask stage: the cure
        then acts from the first call. Returns the personalized latents; ``foundation_latents`` and
        ``foundation_images`` are the foundation rows' final ones."""
        self.host.check_interrupt()
        options = self.options
        masks_at = options.one_pass_masks_at if masks is None else 0.0
        if options.method == "fasa":
            self.layers = preset_layers(options.layers, self.host.layer_keys(), self.host.family)
        columns = self.host.prompt_columns(self.foundation_branch.prompts, self.plan.phrases)
        map_layers = preset_layers("default", self.host.layer_keys(), self.host.family)
        recorder = None
        if columns.names() and masks is None:
            recorder = CrossAttentionRecorder(columns, layers=map_layers, progress_range=(0.0, masks_at))
        images = len(self.personalized.prompts)
        given = None if masks is None else list(masks)
        if given is not None and len(given) != images:
            raise ValueError(f"masks: {len(given)} mask(s) for {images} image(s)")

        def start_cure(foundation_x0: Tensor | None, latent_hw: tuple[int, int]) -> Tensor | None:
            """Masks from the foundation rows so far; starts FASA, or returns the blend weight map."""
            if given is not None:
                cure_masks = given
            else:
                assert foundation_x0 is not None  # masks_at > 0: a call has run
                self.maps = recorder.maps() if recorder is not None else {}
                self.foundation_images = self.host.decode(foundation_x0)
                cure_masks = self._union_masks_of(self.build_masks(region))
            if not any(bool(m.any()) for m in cure_masks):
                self.notes.append("every mask is empty: the cure pass is the plain personalized pass")
                return None
            if options.method == "fasa":
                self.engine.start_fasa(self._fasa_settings(cure_masks, own_masks=given is None))
                return None
            return options.blend_weight * torch.stack([to_latent(m, latent_hw) for m in cure_masks])[:, None]

        hooks = OnePassHooks(self.engine, images, masks_at, options.blend_start, start_cure)
        branches = (self.personalized, self.foundation_branch)
        with self.host.attach(self.engine), self.engine.one_pass(recorder):
            latents = self.host.sample_together(branches, hooks)
        if hooks.failure is not None:
            failure = hooks.failure
            raise CureError(f"one-pass masks failed ({type(failure).__name__}: {failure})") from failure
        self._raise_attention_failure("one-pass cure")
        if not hooks.started:
            self.notes.append(f"one-pass: no call at or after {masks_at:g} of the schedule: nothing was cured")
        if self.engine.source_misses:
            self.notes.append(f"one-pass: {self.engine.source_misses} FASA row(s) had no foundation row in their call")
        self.calls["one-pass"] = hooks.calls
        self.foundation_latents = latents[images:]
        self.foundation_images = self.host.decode(self.foundation_latents)
        if given is None:
            self.notes.append(f"one pass: masks from the foundation rows over the first {masks_at:g} of the schedule")
        return latents[:images]

    # --- stage 4: APG ---------------------------------------------------------------------------------

    def apg_prompts(self) -> tuple[tuple[str, ...], tuple[str, ...]]:
        """(source, target) prompt per image: the options' prompts, or subject and subject + expression."""
        sources, targets = [], []
        for prompt, analysis in zip(self.personalized.prompts, self.analyses, strict=True):
            source = self.options.apg_source or subject_phrase(prompt)
            expression = analysis.expression_phrase()
            target = self.options.apg_target or (f"{source}, {expression}" if expression else source)
            sources.append(source)
            targets.append(target)
        return tuple(sources), tuple(targets)

    def apg(self, latents: Tensor) -> Tensor:
        """Invert ``latents`` with the source prompt (guidance 1) over the last ``apg_strength`` of the
        schedule, then regenerate with the target prompt; identity on. Returns ``latents`` itself when
        APG is off or covers no step."""
        if not self.plan.apg:
            return latents
        sigmas = self.host.schedule()
        if sampling.apg_step_count(sigmas.numel() - 1, self.options.apg_strength) == 0:
            self.notes.append("apg_strength covers no step: APG skipped")
            return latents
        self.host.check_interrupt()
        sources, targets = self.apg_prompts()
        negatives = self.personalized.negative_prompts
        inversion = Branch(True, sources, negatives, 1.0)
        hooks = PlainHooks()
        inverted = self.host.run(
            partial(_inversion_loop, sigmas=sampling.inversion_sigmas(sigmas, self.options.apg_strength)),
            latents,
            inversion,
            hooks,
        )
        baseline = sources if self.options.apg_guidance == "asymmetric" else negatives
        regeneration = Branch(True, targets, baseline, self.personalized.cfg_scale)
        regenerate = partial(
            sampling.sample_euler, sigmas=sampling.regeneration_sigmas(sigmas, self.options.apg_strength)
        )
        result = self.host.run(regenerate, inverted, regeneration, hooks)
        self.calls["apg"] = hooks.calls
        return result

    # --- summary --------------------------------------------------------------------------------------

    def result(self, latents: Tensor) -> CureResult:
        return CureResult(
            latents=latents,
            foundation_images=self.foundation_images,
            masks=self.masks,
            maps=self.maps,
            notes=self.notes,
            bank_bytes=self.bank.nbytes if self.bank is not None else 0,
            bank_misses=self.bank.misses if self.bank is not None else 0,
            calls=dict(self.calls),
        )


def _inversion_loop(
    model: Any, x: Tensor, sigmas: Tensor, extra_args: dict[str, Any] | None = None, callback: Any = None
) -> Tensor:
    """k-diffusion-style wrapper of :func:`freecure.sampling.invert` for ``Host.run``."""
    ones = x.new_ones(x.shape[0])
    return sampling.invert(lambda z, sigma: model(z, sigma * ones, **(extra_args or {})), x, sigmas)


def run_freecure(
    host: Host,
    options: Options,
    *,
    prompts: Sequence[str],
    negative_prompts: Sequence[str],
    cfg_scale: float,
    foundation_prompts: Sequence[str] | None = None,
    models_dir: str | Path | None = None,
    masks: Sequence[Tensor] | None = None,
    foundation_cache: FoundationCache | None = None,
    foundation_key: str | None = None,
) -> CureResult:
    """foundation -> masks -> cure -> APG on a host that runs every pass itself.

    ``masks`` (one 2-D mask per image) replaces the mask stage; ``foundation_cache`` and ``foundation_key`` (a
    digest of every input of the foundation pass) reuse an earlier foundation (see ``CureSession.foundation``).
    Any failure raises :class:`CureError` (the cause chained) with nothing left installed on the model.
    """
    session = CureSession(
        host,
        options,
        prompts=prompts,
        negative_prompts=negative_prompts,
        cfg_scale=cfg_scale,
        foundation_prompts=foundation_prompts,
        models_dir=models_dir,
    )
    stage = "foundation pass"
    try:
        one_pass = session.options.passes == "one-pass" and session.plan.cure
        blocker = host.one_pass_unavailable() if one_pass else None
        if blocker is not None:
            session.notes.append(f"one-pass mode unavailable ({blocker}): exact passes")
        if one_pass and blocker is None:
            stage = "one-pass cure"
            latents = session.one_pass(masks=masks)
        else:
            session.foundation(foundation_cache, foundation_key)
            stage = "masks"
            if masks is None:
                session.build_masks()
            stage = "cure pass"
            with session.curing(masks) as hooks:
                latents = host.sample(session.personalized, hooks)
        stage = "APG"
        latents = session.apg(latents)
    except CureError:
        raise
    except Exception as error:
        raise CureError(f"FreeCure failed in the {stage}: {error}") from error
    return session.result(latents)
