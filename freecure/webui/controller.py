"""FreeCure's flow inside a WebUI job, from the script hooks.

Per batch and cured pass: when the WebUI's sampler starts (set up from ``process_before_every_sampling``), the
foundation pass (identity off) runs with the WebUI's own sampler, the masks are built and the cure hooks stay
installed for the main sampling, which is the cure pass; ``post_sample`` removes them and runs APG. A cure
that cannot proceed leaves the main pass uncured and says why in the infotext and the console: the WebUI
swallows exceptions raised in script hooks, so nothing here may rely on an exception reaching the user.
"""

from __future__ import annotations

import contextlib
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import torch

from freecure.attributes import analyze_prompt
from freecure.identity import IDENTITY_TAG_KINDS, foundation_prompt
from freecure.options import Options, OptionsError
from freecure.parsing import free_models
from freecure.pipeline import CureError, CureInterrupted, CureSession, plan_cure
from freecure.pipeline.foundation_cache import FoundationCache
from freecure.webui import hosts, leftovers, settings
from freecure.webui.adetailer import FacePasses, is_face_pass
from freecure.webui.controls import options_from_script_args
from freecure.webui.debug import debug_images
from freecure.webui.foundation_key import foundation_key
from freecure.webui.leftovers import release_leftovers
from freecure.webui.xyz import merged_overrides

STATE_ATTR = "_freecure_job"
NOTES_KEY = "FreeCure notes"
IDENTITY_KEY = "FreeCure identity off"
ERROR_KEY = "FreeCure error"


# Foundation passes kept for later jobs with the same inputs (X/Y/Z cells varying cure settings, a second
# Generate): CPU memory, bounded by the settings page's size.
_FOUNDATIONS = FoundationCache(0)


def foundation_cache() -> FoundationCache | None:
    """The cache at the size the settings page asks for now; None when it is off (0 MB)."""
    _FOUNDATIONS.resize(settings.foundation_cache_bytes())
    return _FOUNDATIONS if _FOUNDATIONS.max_bytes else None


def report(message: str) -> None:
    print(f"[FreeCure] {message}")


@dataclass
class JobState:
    """What FreeCure knows about one job (one X/Y/Z cell); lives on ``p``."""

    options: Options
    owner_id: int  # id of the job's p: another extension's copy(p) carries this state but is not the job
    notes: list[str] = field(default_factory=list)
    identity_sources: list[str] = field(default_factory=list)
    session: CureSession | None = None
    host: Any = None
    apg_session: CureSession | None = None  # APG on a later, uncured pass's samples (hires=low-res)
    cure: contextlib.ExitStack | None = None
    debug: list[tuple[Any, str]] = field(default_factory=list)
    cured_passes: int = 0  # passes whose cure acted and sampled to the end without failing
    image_notes: list[str] = field(default_factory=list)  # notes of the current image's ADetailer face passes

    def note(self, p: Any, message: str) -> None:
        if message not in self.notes:
            self.notes.append(message)
            report(message)
        self._write_notes(p)

    def image_note(self, p: Any, message: str) -> None:
        """A note for the current image only (the infotext is per image; the job's notes are in every one)."""
        if message not in self.image_notes:
            self.image_notes.append(message)
            report(message)
        self._write_notes(p)

    def next_image(self, p: Any) -> None:
        self.image_notes = []
        self._write_notes(p)

    def _write_notes(self, p: Any) -> None:
        notes = self.notes + self.image_notes
        if notes:
            p.extra_generation_params[NOTES_KEY] = "; ".join(notes)
        else:
            p.extra_generation_params.pop(NOTES_KEY, None)


def job_state(p: Any) -> JobState | None:
    return getattr(p, STATE_ATTR, None)


def is_copy_of_a_job(p: Any) -> bool:
    """A copy of a FreeCure job made by another extension (ADetailer's ``copy(p)``), not a job itself."""
    state = job_state(p)
    return state is not None and state.owner_id != id(p)


def selected_pass(hires_option: str, is_hires_pass: bool) -> bool:
    """Whether this sampling pass is cured: low-res (the first pass), hi-res (the hires pass) or both."""
    if hires_option == "both":
        return True
    return is_hires_pass == (hires_option == "hi-res")


def pass_prompts(p: Any, is_hires: bool) -> tuple[list[str], list[str], float]:
    """Prompts, negative prompts and CFG scale of the first or the hires pass (Forge: ``hr_cfg``)."""
    if not is_hires:
        return list(p.prompts), list(p.negative_prompts), p.cfg_scale
    return list(p.hr_prompts), list(p.hr_negative_prompts), getattr(p, "hr_cfg", None) or p.cfg_scale


class Controller:
    """The script hooks' logic; one per script instance (tab). All per-job state lives on ``p``; ``face_passes``
    follows the job whose images ADetailer's face passes (jobs of their own, with this tab's scripts) work on."""

    def __init__(self) -> None:
        self.face_passes = FacePasses()

    def process(self, p: Any, args: tuple[Any, ...]) -> None:
        if is_copy_of_a_job(p):
            return
        release_leftovers()
        setattr(p, STATE_ATTR, None)
        face_pass = is_face_pass(p)
        if not face_pass:
            self.face_passes.start_job(p)
        try:
            # A face pass has a copy of the job's script args but not its X/Y/Z cell: take the job's overrides.
            cell = (self.face_passes.job or p) if face_pass else p
            options = merged_overrides(options_from_script_args(args), cell)
        except OptionsError as error:
            p.extra_generation_params[ERROR_KEY] = str(error)
            report(f"not run: {error}")
            return
        if not options.enabled:
            return
        if settings.downloads_forbidden() and options.allow_download:
            options = options.with_overrides({"allow_download": False})
        single_pass = hosts.is_img2img_job(p) and options.hires != "low-res"
        if single_pass:
            options = options.with_overrides({"hires": "low-res"})
        family = hosts.model_family(p.sd_model)
        state = JobState(options.resolved(family), owner_id=id(p))
        setattr(p, STATE_ATTR, state)
        p.extra_generation_params.update(options.to_infotext())
        if single_pass:
            state.note(p, "img2img has no hires pass: its one pass is cured (the hires setting does not apply)")
        reason = hosts.unsupported_reason(p) or (hosts.blend_unsupported(p) if options.method == "blend" else None)
        if reason:
            state.note(p, f"skipped: {reason}")
            setattr(p, STATE_ATTR, None)

    def process_batch(self, p: Any, **_kwargs: Any) -> None:
        state = job_state(p)
        if state is None:
            return
        from modules import shared

        hires = bool(getattr(p, "enable_hr", False))
        foundations = 0 if state.options.passes == "one-pass" else \
            sum(selected_pass(state.options.hires, is_hires) for is_hires in (False, True)[:1 + hires])
        apg = plan_cure(state.options, analyze_prompt(p.prompts[0])).apg if p.prompts else False
        shared.state.job_count += foundations + (1 if apg else 0)
        state.session = state.host = state.apg_session = None

    def before_sampling(self, p: Any, *, x: torch.Tensor, noise: torch.Tensor, c: Any, uc: Any,
                        **_kwargs: Any) -> None:
        state = job_state(p)
        if state is None:
            return
        # The first pass's cure must not leak into the hires pass.
        failure = self._finish_cure(state)
        if failure is not None:
            state.note(p, f"{failure}: the first pass is partly cured")
        is_hires = bool(getattr(p, "is_hr_pass", False))
        if not selected_pass(state.options.hires, is_hires):
            if state.session is not None and state.session.plan.apg:
                self._prepare_apg(p, state, x=x, noise=noise, c=c, uc=uc, is_hires=is_hires)
            return
        self._start_when_sampling_starts(p, state, c=c, uc=uc, is_hires=is_hires)

    def _start_when_sampling_starts(self, p: Any, state: JobState, *, c: Any, uc: Any, is_hires: bool) -> None:
        """Run the foundation when the WebUI's sampler starts this pass, not in this hook: the extensions whose
        hook runs after ours (Forge's patch the UNet here, and ``p.modified_noise`` may replace the noise) have
        then done their part, so the foundation samples what the pass samples. A one-shot instance attribute on
        this pass's sampler (``modules/processing.py`` creates it before the hook), gone at its first call:
        ``sample`` in txt2img, ``sample_img2img`` in the hires pass and in img2img/inpaint jobs (both call it as
        ``sample_img2img(p, x, noise, c, uc, ...)``, x being the latent sampling starts from).

        Forge 2 calls this hook twice in the hires pass (``sample_hr_pass``: before and after resetting
        ``forge_objects``), Forge Neo once: a later call's wrapper replaces an earlier one's."""
        from_latent = is_hires or hosts.is_img2img_job(p)
        method = "sample_img2img" if from_latent else "sample"
        sampler = getattr(p, "sampler", None)
        installed = getattr(sampler, "__dict__", {}).get(method)
        original = getattr(installed, "freecure_wraps", None) or getattr(sampler, method, None)
        if original is None:
            state.note(p, "the WebUI's sampler was not found; the image is uncured")
            return

        def sample(sampling_p: Any, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
            if sampler.__dict__.get(method) is sample:
                del sampler.__dict__[method]
            noise = args[0] if from_latent else x  # sample_img2img(p, x, noise, c, uc, ...); sample(p, x, c, uc, ...)
            cured = self._start_cure_or_note(p, state, x=x, noise=noise, c=c, uc=uc, is_hires=is_hires,
                                             main_sampling=partial(original, sampling_p))
            return original(sampling_p, x, *args, **kwargs) if cured is None else cured

        sample.freecure_wraps = original
        sampler.__dict__[method] = sample

    def _start_cure_or_note(self, p: Any, state: JobState, *, x: torch.Tensor, noise: torch.Tensor, c: Any,
                            uc: Any, is_hires: bool, main_sampling: Callable[..., torch.Tensor]) -> torch.Tensor | None:
        """Start the cure of this pass; in one-pass mode run it, returning the pass's cured samples (None: the
        WebUI's sampler samples the pass, with the cure installed or uncured)."""
        try:
            return self._start_cure(p, state, x=x, noise=noise, c=c, uc=uc, is_hires=is_hires,
                                    main_sampling=main_sampling)
        except CureInterrupted as stop:
            self._close_cure(state)
            state.note(p, f"cure stopped: {stop}; the image is uncured")
        except Exception as error:
            self._close_cure(state)
            traceback.print_exc()
            state.note(p, f"cure failed ({type(error).__name__}: {error}); the image is uncured")
        return None

    @staticmethod
    def _prepare_apg(p: Any, state: JobState, *, x: torch.Tensor, noise: torch.Tensor, c: Any, uc: Any,
                     is_hires: bool) -> None:
        """APG works on the job's final samples: with the host, prompts and CFG scale of the pass that makes
        them, also when that pass is not cured."""
        try:
            host = hosts.create_host(p, state.options, x=x, noise=noise, conditioning=c, unconditional=uc,
                                     is_hires=is_hires)
            prompts, negatives, cfg_scale = pass_prompts(p, is_hires)
            state.apg_session = CureSession(host, state.options, prompts=prompts, negative_prompts=negatives,
                                            cfg_scale=cfg_scale, models_dir=settings.models_dir())
        except Exception as error:
            traceback.print_exc()
            state.note(p, f"APG skipped ({type(error).__name__}: {error})")
            state.apg_session = state.session = None

    def _start_cure(self, p: Any, state: JobState, *, x: torch.Tensor, noise: torch.Tensor, c: Any, uc: Any,
                    is_hires: bool, main_sampling: Callable[..., torch.Tensor]) -> torch.Tensor | None:
        from modules import shared

        options = state.options
        host = hosts.create_host(p, options, x=x, noise=noise, conditioning=c, unconditional=uc,
                                 is_hires=is_hires)
        prompts, negatives, cfg_scale = pass_prompts(p, is_hires)
        embeddings = hosts.embedding_names() if "embedding" in options.identity_off else ()
        network_kinds = [kind for source in options.identity_off for kind in IDENTITY_TAG_KINDS.get(source, ())]
        cleaned = [foundation_prompt(prompt, trigger_words=options.trigger_words, class_word=options.class_word,
                                     keep_networks=options.keep_networks, template=options.foundation_prompt,
                                     embeddings=embeddings, network_kinds=network_kinds) for prompt in prompts]
        for source in [*host.identity.sources(), *(r for f in cleaned for r in f.removed)]:
            if source not in state.identity_sources:
                state.identity_sources.append(source)
        if state.identity_sources:
            p.extra_generation_params[IDENTITY_KEY] = ", ".join(state.identity_sources)
        session = CureSession(host, options, prompts=prompts, negative_prompts=negatives, cfg_scale=cfg_scale,
                              foundation_prompts=[f.text for f in cleaned], models_dir=settings.models_dir())
        state.session, state.host, state.apg_session = session, host, None
        for note in session.notes:
            state.note(p, note)
        if options.passes == "one-pass" and session.plan.cure:
            host.main_sampling = main_sampling
            reason = host.one_pass_unavailable()
            if reason is None:
                return self._one_pass(p, state, is_hires=is_hires)
            state.note(p, f"one-pass mode unavailable ({reason}): exact passes")
            shared.state.job_count += 1  # process_batch counted no foundation pass

        cache = foundation_cache()
        key = None if cache is None else foundation_key(
            p, options, x=x, noise=noise, is_hires=is_hires, foundation_prompts=[f.text for f in cleaned],
            negative_prompts=negatives, cfg_scale=cfg_scale, phrases=session.plan.phrases, embeddings=embeddings)
        shared.state.textinfo = "FreeCure: foundation pass (identity off)"
        ran = session.foundation(cache, key) is not None
        if ran:
            shared.state.nextjob()
            # Inpainting: the cure acts inside the inpaint mask only (outside it the WebUI keeps the init image).
            session.build_masks(region=host.inpaint_region())
            if options.debug_images:
                state.debug.extend(debug_images(session, _pass_label(p, is_hires)))
        self._enter_cure(state, c)
        if ran:
            shared.state.textinfo = "FreeCure: cure pass"
        for note in session.notes:
            state.note(p, note)
        return None

    @staticmethod
    def _one_pass(p: Any, state: JobState, *, is_hires: bool) -> torch.Tensor:
        """One-pass mode: the foundation rows sample in the pass's own sampling; returns its cured samples."""
        from modules import shared

        session = state.session
        shared.state.textinfo = "FreeCure: one-pass cure"
        samples = session.one_pass(region=state.host.inpaint_region())
        if session.cures:
            state.cured_passes += 1
        if state.options.debug_images:
            state.debug.extend(debug_images(session, _pass_label(p, is_hires)))
        for note in session.notes:
            state.note(p, note)
        return samples

    @staticmethod
    def _enter_cure(state: JobState, conditioning: Any) -> None:
        """Install the cure for the WebUI's main sampling; it stays until ``post_sample`` (or the next pass)."""
        stack = leftovers.opened()
        state.cure = stack
        hooks = stack.enter_context(state.session.curing())
        stack.enter_context(state.host.routed(hooks, conditioning))

    def post_sample(self, p: Any, ps: Any) -> None:
        state = job_state(p)
        if state is None:
            return
        failure = self._finish_cure(state)
        session = state.session
        if failure is not None:
            # Half-cured is not an answer: the plain personalized image, exactly as without FreeCure.
            try:
                ps.samples = hosts.rerun_uncured(session, state.host, ps.samples)
                state.note(p, f"{failure}; the image was generated again, uncured")
            except Exception as error:
                traceback.print_exc()
                state.note(p, f"{failure}; generating it again uncured failed too ({error}): the image is partly"
                              " cured")
            return
        if session is not None and session.bank is not None and session.bank.misses:
            # Every miss is a call where the foundation and the main pass did not line up (a bug, not a setting).
            state.note(p, f"{session.bank.misses} attention bank misses: those calls ran uncured")
        apg = state.apg_session or session
        if apg is None or not apg.plan.apg:
            return
        from modules import shared

        try:
            shared.state.textinfo = "FreeCure: expression (APG)"
            ps.samples = hosts.apg_on_samples(apg, apg.host, ps.samples)
            shared.state.nextjob()
        except CureInterrupted as stop:
            state.note(p, f"APG stopped: {stop}; the image has no APG")
        except Exception as error:
            traceback.print_exc()
            state.note(p, f"APG failed ({type(error).__name__}: {error}); the image has no APG")
        for note in apg.notes:
            state.note(p, note)

    def postprocess_image(self, p: Any) -> None:
        """Before an image's infotext: an earlier image's face-pass report is not this image's."""
        state = job_state(p)
        if state is not None and not is_face_pass(p) and self.face_passes.leave_other_image(p):
            state.next_image(p)

    def postprocess(self, p: Any, processed: Any) -> None:
        if is_copy_of_a_job(p):  # ADetailer's copy with an empty result: the job's own postprocess comes later
            return
        state = job_state(p)
        if is_face_pass(p):
            self._report_face_pass(state)
        else:
            self.face_passes.end_job(p)
        if state is None:
            return
        failure = self._close_cure(state)  # only still open when post_sample never ran
        if failure is not None:
            state.note(p, f"{failure}: the image is partly cured")
        # The parser networks stay loaded for the job's batches only: the GPU memory is the user's.
        free_models()
        if state.debug:
            hosts.add_result_images(p, processed, state.debug)
            state.debug = []

    def _report_face_pass(self, state: JobState | None) -> None:
        """A face pass's outcome goes to the job's infotext: ADetailer keeps only the pass's image."""
        if state is None:
            return
        job, number, first = self.face_passes.record(cured=state.cured_passes > 0)
        job_notes = job_state(job) if job is not None else None
        if job_notes is None:
            return
        if first:
            job_notes.next_image(job)
        for note in state.notes:  # a face pass is a one-image job: its "image 0: " says nothing here
            job_notes.image_note(job, f"ADetailer face {number}: {note.removeprefix('image 0: ')}")

    def _finish_cure(self, state: JobState) -> CureError | None:
        """Close a cure whose pass sampled to the end, counting it when its attention work did not fail."""
        had_cure = state.cure is not None and state.session is not None and state.session.cures
        failure = self._close_cure(state)
        if had_cure and failure is None:
            state.cured_passes += 1
        return failure

    @staticmethod
    def _close_cure(state: JobState) -> CureError | None:
        """Remove the cure from the main sampling; returns the failure of its attention work, if any (the
        host's sampling went on uncured from that call on)."""
        stack, state.cure = state.cure, None
        if stack is None:
            return None
        try:
            leftovers.close(stack)
        except CureError as failure:
            return failure
        return None


def _pass_label(p: Any, is_hires: bool) -> str:
    """How debug images name the pass they come from: only a job with a hires pass has two."""
    return ("hi-res" if is_hires else "low-res") if getattr(p, "enable_hr", False) else ""
