"""Toy models behind the WebUI stand-ins: a CLIP-like tokenizer and text encoder, a fixed VAE, an
ldm-named UNet wrapper around the tiny diffusers UNets of ``tests/tiny_models.py``, and a LoRA-like
low-rank delta. Not a real WebUI module: the stand-ins' ``modules`` (and Forge's ``backend``) build on it.
"""
