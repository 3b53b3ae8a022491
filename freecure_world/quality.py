"""FreeCure's quality table on the world's trained model: attribute accuracy and identity fidelity.

    python -m freecure_world.quality            # the README's table (fixed prompts and seeds)
    python -m freecure_world.quality --batch 2  # quicker, fewer images per prompt
    python -m freecure_world.quality --sweep    # FASA's layers x strength and mask dilation (the tuning)

Each row generates a batch of images per prompt (one seed per prompt; the batch rows draw different
noise) with the reference host (Euler, 20 steps, CFG 5) and reads them back with
``freecure_world.metrics``: attribute accuracy = share of the requested attributes the image shows;
identity fidelity = share of the subject's four traits it shows.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import numpy as np
import torch
from torch import Tensor

from freecure.attributes import VOCABULARY, analyze_prompt
from freecure.identity import foundation_prompt
from freecure.options import Options
from freecure.pipeline import Branch, run_freecure
from freecure.pipeline.session import PlainHooks

from . import metrics, world
from .models import IMAGE_SIZE, WorldModel, load_world_model

STEPS, CFG = 20, 5.0
NEGATIVE = ""

# (phrases after "photo of ohwx person", the Attributes fields they ask for)
PROMPTS: tuple[tuple[tuple[str, ...], dict[str, object]], ...] = (
    (("red hair", "glasses"), {"hair_colour": "red", "glasses": True}),
    (("long blonde hair", "hat"), {"hair_colour": "blonde", "hair_length": "long", "hat": True}),
    (("blue hair", "earrings"), {"hair_colour": "blue", "earrings": True}),
    (("glasses", "hat", "smiling"), {"glasses": True, "hat": True, "smiling": True}),
    (("long red hair", "earrings", "smiling"),
     {"hair_colour": "red", "hair_length": "long", "earrings": True, "smiling": True}),
    (("blonde hair", "glasses", "hat"), {"hair_colour": "blonde", "glasses": True, "hat": True}),
)  # fmt: skip
BATCH = 4

CURE_OPTIONS = {"enabled": True, "trigger_words": world.TRIGGER, "class_word": world.CLASS_WORD,
                "face_parser": "none", "mask_source": "attention"}  # fmt: skip


def personalized_prompt(phrases: Sequence[str]) -> str:
    return world.prompt(list(phrases), subject=f"{world.TRIGGER} {world.CLASS_WORD}")


def target_portrait(wanted: dict[str, object]) -> world.Portrait:
    """The subject with the requested attributes: what a perfect cure draws."""
    return world.Portrait(world.SUBJECT, replace(world.SUBJECT_LOOK, **wanted))


def oracle_mask(prompt: str, wanted: dict[str, object]) -> Tensor:
    """Ground-truth mask of the prompt's regional attributes on the target portrait, at the model's size."""
    names = [n for n in analyze_prompt(prompt).names() if VOCABULARY[n].regional]
    mask = world.oracle_mask(target_portrait(wanted), names).astype(np.float32)
    small = torch.from_numpy(mask)[None, None]
    return torch.nn.functional.interpolate(small, size=(IMAGE_SIZE, IMAGE_SIZE), mode="area")[0, 0] > 0.25


@dataclass(frozen=True)
class Setting:
    name: str
    generate: Callable[[WorldModel, str, dict[str, object], int, int], Tensor]  # -> (B, 3, H, W) in [0, 1]


Generate = Callable[[WorldModel, str, dict[str, object], int, int], Tensor]


def plain(lora_weight: float) -> Generate:
    def generate(model: WorldModel, prompt: str, wanted: dict[str, object], seed: int, batch: int) -> Tensor:
        host = model.host(seed=seed, steps=STEPS, lora_weight=lora_weight, batch_size=batch)
        latents = host.sample(Branch(True, (prompt,) * batch, (NEGATIVE,) * batch, CFG), PlainHooks())
        return host.decode(latents)

    return generate


def foundation(model: WorldModel, prompt: str, wanted: dict[str, object], seed: int, batch: int) -> Tensor:
    host = model.host(seed=seed, steps=STEPS, lora_weight=0.0, batch_size=batch)
    text = foundation_prompt(prompt, trigger_words=[world.TRIGGER], class_word=world.CLASS_WORD).text
    return host.decode(host.sample(Branch(True, (text,) * batch, (NEGATIVE,) * batch, CFG), PlainHooks()))


def cured(oracle: bool = False, **options: object) -> Generate:
    settings = Options.from_dict({**CURE_OPTIONS, **options})

    def generate(model: WorldModel, prompt: str, wanted: dict[str, object], seed: int, batch: int) -> Tensor:
        host = model.host(seed=seed, steps=STEPS, lora_weight=1.0, batch_size=batch)
        text = foundation_prompt(prompt, trigger_words=settings.trigger_words, class_word=settings.class_word).text
        masks = [oracle_mask(prompt, wanted)] * batch if oracle else None
        result = run_freecure(host, settings, prompts=[prompt] * batch, negative_prompts=[NEGATIVE] * batch,
                              cfg_scale=CFG, foundation_prompts=[text] * batch, masks=masks)  # fmt: skip
        return host.decode(result.latents)

    return generate


SETTINGS: tuple[Setting, ...] = (
    Setting("plain personalized (LoRA 1.0)", plain(1.0)),
    Setting("foundation (LoRA off)", foundation),
    Setting("LoRA weight 0.7", plain(0.7)),
    Setting("LoRA weight 0.5", plain(0.5)),
    Setting("FreeCure fasa, attention masks, APG off", cured(apg="off")),
    Setting("FreeCure fasa, oracle masks, APG off", cured(oracle=True, apg="off")),
    Setting("FreeCure blend, attention masks, APG off", cured(method="blend", apg="off")),
    Setting("FreeCure blend, oracle masks, APG off", cured(oracle=True, method="blend", apg="off")),
    Setting("FreeCure fasa + APG (defaults), attention masks", cured()),
    Setting("FreeCure fasa one-pass, attention masks, APG off", cured(apg="off", passes="one-pass")),
    Setting("FreeCure fasa one-pass, oracle masks, APG off", cured(oracle=True, apg="off", passes="one-pass")),
    Setting("FreeCure blend one-pass, attention masks, APG off", cured(method="blend", apg="off", passes="one-pass")),
)


# The tuning sweep: FASA (APG off, attention masks) over the layer presets and strengths, the mask
# dilation at the default layers and strength, and a stronger hair (per-attribute strength).
SWEEP: tuple[Setting, ...] = (
    *(Setting(f"fasa, layers {layers}, strength {strength}", cured(apg="off", layers=layers, strength=strength))
      for layers in ("default", "all") for strength in (0.5, 1.0, 2.0, 6.0)),
    *(Setting(f"fasa, mask dilation {pixels} px", cured(apg="off", mask_dilation=pixels)) for pixels in (4, 8)),
    Setting("fasa, layers all, strength 0.5, hair:2", cured(apg="off", layers="all", attribute_strength="hair:2")),
    Setting("fasa, layers all, strength 1.0, hair:2",
            cured(apg="off", layers="all", strength=1.0, attribute_strength="hair:2")),
)  # fmt: skip


@dataclass
class Row:
    name: str
    per_attribute: dict[str, list[bool]]
    fidelity: list[float]

    @property
    def accuracy(self) -> float:
        return float(np.mean([hit for hits in self.per_attribute.values() for hit in hits]))


def evaluate(model: WorldModel, setting: Setting, batch: int = BATCH,
             prompts: Sequence[tuple[tuple[str, ...], dict[str, object]]] = PROMPTS) -> Row:  # fmt: skip
    row = Row(setting.name, {name: [] for name in metrics.ATTRIBUTES}, [])
    for seed, (phrases, wanted) in enumerate(prompts):
        prompt = personalized_prompt(phrases)
        for image in setting.generate(model, prompt, wanted, seed, batch):
            reading = metrics.read(image.numpy())
            for name, hit in metrics.attribute_scores(reading, wanted).items():
                row.per_attribute[name].append(hit)
            row.fidelity.append(metrics.identity_fidelity(reading))
    return row


def markdown(rows: Sequence[Row]) -> str:
    header = ["setting", "attribute accuracy", *metrics.ATTRIBUTES, "identity fidelity"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        cells = [row.name, f"{row.accuracy:.2f}"]
        cells += [f"{np.mean(row.per_attribute[n]):.2f}" if row.per_attribute[n] else "-" for n in metrics.ATTRIBUTES]
        cells.append(f"{np.mean(row.fidelity):.2f}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=BATCH, help="images per prompt")
    parser.add_argument("--only", default="", help="comma-separated row numbers (1-based) to compute")
    parser.add_argument("--sweep", action="store_true", help="the tuning sweep instead of the table")
    args = parser.parse_args()
    torch.set_num_threads(1)
    model = load_world_model()
    table = SWEEP if args.sweep else SETTINGS
    chosen = [table[int(i) - 1] for i in args.only.split(",")] if args.only else list(table)
    rows = []
    for setting in chosen:
        start = time.time()
        rows.append(evaluate(model, setting, args.batch))
        row = rows[-1]
        seconds = time.time() - start
        print(f"{setting.name}: {row.accuracy:.2f} / {np.mean(row.fidelity):.2f} ({seconds:.0f} s)", flush=True)
    print(markdown(rows))


if __name__ == "__main__":
    main()
