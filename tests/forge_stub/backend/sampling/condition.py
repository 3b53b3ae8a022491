"""``backend/sampling/condition.py`` (Forge 2, dfdcbab6): the text conditioning as the CFG function's entries.
Forge wraps each tensor in a ``Condition`` object; the stand-in's entries hold the tensors themselves."""

from __future__ import annotations

import torch


def compile_conditions(cond):
    if cond is None:
        return None
    if isinstance(cond, torch.Tensor):
        return [{"cross_attn": cond, "model_conds": {"c_crossattn": cond}}]
    return [{"cross_attn": cond["crossattn"], "pooled_output": cond["vector"],
             "model_conds": {"c_crossattn": cond["crossattn"], "y": cond["vector"]}}]


def compile_weighted_conditions(cond, weights):
    """One entry per AND position: rows ``weights[image][part]`` of ``cond``, weighted with the last image's
    weight of that part. Forge zips the images' part lists, so parts beyond the fewest any image has are
    dropped (an image with one sub-prompt in a batch with AND prompts keeps only part 0 for every image)."""
    results = []
    for position in zip(*weights, strict=False):  # as many positions as the shortest list has parts
        indices = [row for row, _ in position]
        weight = position[-1][1]
        feed = {k: v[indices] for k, v in cond.items()} if isinstance(cond, dict) else cond[indices]
        entry = compile_conditions(feed)
        entry[0]["strength"] = weight
        results += entry
    return results
