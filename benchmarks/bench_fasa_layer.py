"""FASA self-attention layer time / plain layer time at real SD1.5 and SDXL layer sizes.

Runs the layer through the real path (``intercept_modules`` + ``AttentionEngine`` in curing mode, the
foundation K/V read from a float16 ``KVBank``), with half the tokens inside the mask, and compares
it with the layer's own forward. Two batch layouts: one conditional row, and a CFG pair
[cond, uncond] (the uncond row stays plain). Median of repeats; CPU in float32, CUDA (if present)
in float16. Run: ``python benchmarks/bench_fasa_layer.py [--repeats N]``.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F
from torch import nn

from freecure.attention import AttentionEngine, FasaSettings, KVBank, RowRole, RowTracker, intercept_modules

LAYER = ("output", 9, 0)
# (model, tokens, channels, heads): SD1.5 64x64 and 32x32 levels, SDXL 64x64 and 32x32 levels (1024 px)
SIZES = [("SD1.5", 4096, 320, 8), ("SD1.5", 1024, 640, 8), ("SDXL", 4096, 640, 10), ("SDXL", 1024, 1280, 20)]


class SelfAttention(nn.Module):
    """An ldm-style attention layer: heads, scale, to_q/to_k/to_v, to_out; SDPA forward."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads, self.scale = heads, (dim // heads) ** -0.5
        self.to_q, self.to_k, self.to_v = (nn.Linear(dim, dim, bias=False) for _ in range(3))
        self.to_out = nn.Sequential(nn.Linear(dim, dim), nn.Dropout(0.0))

    def forward(self, x, context=None, mask=None):
        context = x if context is None else context
        b, n, _ = x.shape
        q, k, v = (t.view(b, -1, self.heads, t.shape[-1] // self.heads).transpose(1, 2)
                   for t in (self.to_q(x), self.to_k(context), self.to_v(context)))
        out = F.scaled_dot_product_attention(q, k, v, scale=self.scale)
        return self.to_out(out.transpose(1, 2).reshape(b, n, -1))


def median_seconds(fn, repeats: int, device: torch.device) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def measure(tokens: int, dim: int, heads: int, roles: tuple[RowRole, ...], device, dtype, repeats: int):
    side = int(tokens**0.5)
    attn1 = SelfAttention(dim, heads).to(device, dtype).eval()
    attn2 = SelfAttention(dim, heads).to(device, dtype).eval()
    x = torch.randn(len(roles), tokens, dim, device=device, dtype=dtype)
    mask = torch.zeros(side, side, dtype=torch.bool)
    mask[: side // 2] = True  # half the tokens
    bank = KVBank(offload=False)
    bank.put(LAYER, 0, 0, torch.randn(tokens, dim, device=device), torch.randn(tokens, dim, device=device))
    settings = FasaSettings(frozenset({LAYER}), 1.5, masks=[mask.to(device)])
    engine = AttentionEngine()
    with torch.no_grad():
        plain = median_seconds(lambda: attn1(x), repeats, device)
        with intercept_modules(engine, {LAYER: (attn1, attn2)}, RowTracker(engine)), engine.curing(settings, bank):

            def cured():
                engine.call_index = -1  # every repeat is call 0 of the pass, so the bank entry is found
                engine.begin_call(roles, (side, side), 0.0)
                return attn1(x)

            fasa = median_seconds(cured, repeats, device)
    assert bank.misses == 0
    return plain, fasa


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    devices = [(torch.device("cpu"), torch.float32)]
    if torch.cuda.is_available():
        devices.append((torch.device("cuda"), torch.float16))
    layouts = {"cond": (RowRole(True, 0),), "cond+uncond": (RowRole(True, 0), RowRole(False, 0))}
    print(f"{'device':<6} {'model':<6} {'tokens':>6} {'ch':>5} {'heads':>5} {'rows':<12} "
          f"{'plain ms':>9} {'FASA ms':>9} {'ratio':>6}")
    for device, dtype in devices:
        torch.manual_seed(0)
        for model, tokens, dim, heads in SIZES:
            for layout, roles in layouts.items():
                plain, fasa = measure(tokens, dim, heads, roles, device, dtype, args.repeats)
                print(f"{device.type:<6} {model:<6} {tokens:>6} {dim:>5} {heads:>5} {layout:<12} "
                      f"{plain * 1e3:>9.2f} {fasa * 1e3:>9.2f} {fasa / plain:>6.2f}", flush=True)


if __name__ == "__main__":
    main()
