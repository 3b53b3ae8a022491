"""FreeCure on the world's trained model, no WebUI: plain | foundation | masks | cured, side by side.

    python -m freecure_world.demo
    python -m freecure_world.demo --prompt "photo of ohwx person, long blue hair, hat" --seed 3 --out demo.png

The personalized model is the world's base model with its identity LoRA (trigger word ``ohwx``) merged;
the foundation pass runs without it, the trigger word replaced by "person".
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from freecure.identity import foundation_prompt
from freecure.options import Options
from freecure.pipeline import Branch, run_freecure
from freecure.pipeline.session import PlainHooks
from freecure.previews import overlay_preview

from . import world
from .models import load_world_model
from .quality import CFG, CURE_OPTIONS, NEGATIVE, STEPS

DEFAULT_PROMPT = "photo of ohwx person, red hair, glasses, hat"
PANEL = 192


def _pil(image: torch.Tensor) -> Image.Image:
    array = (image.permute(1, 2, 0).clamp(0, 1) * 255).round().to(torch.uint8).numpy()
    return Image.fromarray(np.ascontiguousarray(array))


def demo(prompt: str, seed: int, method: str = "fasa", lora_weight: float = 1.0) -> Image.Image:
    model = load_world_model()
    options = Options.from_dict({**CURE_OPTIONS, "method": method})
    host = model.host(seed=seed, steps=STEPS, lora_weight=lora_weight)
    plain = host.decode(host.sample(Branch(True, (prompt,), (NEGATIVE,), CFG), PlainHooks()))[0]
    text = foundation_prompt(prompt, trigger_words=options.trigger_words, class_word=options.class_word).text
    result = run_freecure(host, options, prompts=[prompt], negative_prompts=[NEGATIVE], cfg_scale=CFG,
                          foundation_prompts=[text])  # fmt: skip
    foundation_image = result.foundation_images[0] if result.foundation_images is not None else plain
    masks = result.masks[0].per_attribute if result.masks else {}
    panels = [_pil(plain), _pil(foundation_image), None, _pil(host.decode(result.latents)[0])]
    big = [p.resize((PANEL, PANEL), Image.NEAREST) if p is not None else None for p in panels]
    big_masks = {n: np.asarray(Image.fromarray(m).resize((PANEL, PANEL), Image.NEAREST)) for n, m in masks.items()}
    big[2] = overlay_preview(big[1], big_masks)
    titles = ["plain (identity on)", f"foundation: {text[:24]}", "masks", f"FreeCure {method}"]
    canvas = Image.new("RGB", (PANEL * 4, PANEL + 36), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    for index, (panel, title) in enumerate(zip(big, titles, strict=True)):
        canvas.paste(panel, (index * PANEL, 20))
        draw.text((index * PANEL + 4, 4), title, fill=(0, 0, 0))
    draw.text((4, PANEL + 22), f"{prompt}  (seed {seed})", fill=(0, 0, 0))
    return canvas


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompt", default=DEFAULT_PROMPT, help=f"the trigger word {world.TRIGGER!r} is the identity")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--method", choices=("fasa", "blend"), default="fasa")
    parser.add_argument("--out", type=Path, default=Path("freecure_demo.png"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    demo(args.prompt, args.seed, args.method).save(args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
