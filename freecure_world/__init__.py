"""A procedural portrait world small enough to train on a CPU, and FreeCure's quality measured in it.

``world`` draws the portraits, captions and ground-truth segmentations; ``text``/``models`` define the
small SD1-layout model (CLIP-architecture text encoder, UNet, AutoencoderKL, kohya identity LoRA);
``train`` trains it from fixed seeds; ``metrics`` reads attributes and identity back from images;
``quality`` computes the README's table and ``demo`` draws plain | foundation | masks | cured.

It sits beside the extension's core (``freecure/``) and never inside it: the WebUI never loads it, the
tests, the benchmarks and the demo do.
"""
