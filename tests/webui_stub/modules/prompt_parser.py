"""``modules/prompt_parser.py``: prompt schedules, AND sub-prompts, emphasis, and the conditioning data
shapes the samplers consume. Prompt editing is limited to non-nested ``[from:to:when]``; the shapes
(``ScheduledPromptConditioning`` lists, ``MulticondLearnedConditioning``) are the real ones."""

from __future__ import annotations

import re
from collections import namedtuple

import torch

ScheduledPromptConditioning = namedtuple("ScheduledPromptConditioning", ["end_at_step", "cond"])

re_edit = re.compile(r"\[([^\[\]:]*):([^\[\]:]*):\s*([0-9]*\.?[0-9]+)\s*\]")


class SdConditioning(list):
    """A list of prompts that also carries what the model needs to encode them (size, negativity)."""

    def __init__(self, prompts, is_negative_prompt=False, width=None, height=None, copy_from=None):
        super().__init__()
        self.extend(prompts)
        if copy_from is None:
            copy_from = prompts
        self.is_negative_prompt = is_negative_prompt or getattr(copy_from, "is_negative_prompt", False)
        self.width = width or getattr(copy_from, "width", None)
        self.height = height or getattr(copy_from, "height", None)


def get_learned_conditioning_prompt_schedules(prompts, base_steps, hires_steps=None, use_old_scheduling=False):
    """For each prompt, ``[[end_at_step, text], ...]``: the text to use up to and including each step."""
    steps = base_steps if hires_steps is None or use_old_scheduling else hires_steps

    def when_step(token):
        value = float(token)
        if use_old_scheduling:
            value = value * steps if value < 1 else value
        elif "." in token:
            value = value * steps
        else:
            value = value - 1
        return min(steps, int(value))

    def schedule(prompt):
        edits = [(m, when_step(m.group(3))) for m in re_edit.finditer(prompt)]
        boundaries = sorted({w for _, w in edits if w >= 1} | {steps})

        def text_at(step):
            return re_edit.sub(lambda m: m.group(1) if step <= when_step(m.group(3)) else m.group(2), prompt)

        return [[t, text_at(t)] for t in boundaries]

    return [schedule(prompt) for prompt in prompts]


def get_learned_conditioning(model, prompts, steps, hires_steps=None, use_old_scheduling=False):
    """``list`` (one per prompt) of ``list[ScheduledPromptConditioning]``; SDXL conds are dicts."""
    res = []
    schedules = get_learned_conditioning_prompt_schedules(prompts, steps, hires_steps, use_old_scheduling)
    cache = {}
    for prompt, prompt_schedule in zip(prompts, schedules, strict=True):
        cached = cache.get(prompt)
        if cached is not None:
            res.append(cached)
            continue
        texts = SdConditioning([x[1] for x in prompt_schedule], copy_from=prompts)
        conds = model.get_learned_conditioning(texts)
        cond_schedule = []
        for i, (end_at_step, _) in enumerate(prompt_schedule):
            cond = {k: v[i] for k, v in conds.items()} if isinstance(conds, dict) else conds[i]
            cond_schedule.append(ScheduledPromptConditioning(end_at_step, cond))
        cache[prompt] = cond_schedule
        res.append(cond_schedule)
    return res


re_AND = re.compile(r"\bAND\b")
re_weight = re.compile(r"^((?:\s|.)*?)(?:\s*:\s*([-+]?(?:\d+\.?|\d*\.\d+)))?\s*$")


def get_multicond_prompt_list(prompts):
    res_indexes = []
    prompt_indexes = {}
    prompt_flat_list = SdConditioning(prompts)
    prompt_flat_list.clear()
    for prompt in prompts:
        subprompts = re_AND.split(prompt)
        indexes = []
        for subprompt in subprompts:
            match = re_weight.search(subprompt)
            text, weight = match.groups() if match is not None else (subprompt, 1.0)
            weight = float(weight) if weight is not None else 1.0
            index = prompt_indexes.get(text)
            if index is None:
                index = len(prompt_flat_list)
                prompt_flat_list.append(text)
                prompt_indexes[text] = index
            indexes.append((index, weight))
        res_indexes.append(indexes)
    return res_indexes, prompt_flat_list, prompt_indexes


class ComposableScheduledPromptConditioning:
    def __init__(self, schedules, weight=1.0):
        self.schedules: list[ScheduledPromptConditioning] = schedules
        self.weight: float = weight


class MulticondLearnedConditioning:
    def __init__(self, shape, batch):
        self.shape: tuple = shape  # (len(prompts),)
        self.batch: list[list[ComposableScheduledPromptConditioning]] = batch


def get_multicond_learned_conditioning(model, prompts, steps, hires_steps=None, use_old_scheduling=False):
    """One ``ComposableScheduledPromptConditioning`` per AND sub-prompt of every prompt."""
    res_indexes, prompt_flat_list, _ = get_multicond_prompt_list(prompts)
    learned = get_learned_conditioning(model, prompt_flat_list, steps, hires_steps, use_old_scheduling)
    res = [[ComposableScheduledPromptConditioning(learned[i], weight) for i, weight in indexes]
           for indexes in res_indexes]
    return MulticondLearnedConditioning(shape=(len(prompts),), batch=res)


def _schedule_index(cond_schedule, current_step):
    for index, entry in enumerate(cond_schedule):
        if current_step <= entry.end_at_step:
            return index
    return 0


class DictWithShape(dict):
    def __init__(self, x, shape=None):
        super().__init__()
        self.update(x)

    @property
    def shape(self):
        return self["crossattn"].shape


def reconstruct_cond_batch(c, current_step):
    param = c[0][0].cond
    is_dict = isinstance(param, dict)
    if is_dict:
        res = {k: torch.zeros((len(c), *v.shape), device=v.device, dtype=v.dtype) for k, v in param.items()}
        res = DictWithShape(res)
    else:
        res = torch.zeros((len(c), *param.shape), device=param.device, dtype=param.dtype)
    for i, cond_schedule in enumerate(c):
        target = cond_schedule[_schedule_index(cond_schedule, current_step)].cond
        if is_dict:
            for k, v in target.items():
                res[k][i] = v
        else:
            res[i] = target
    return res


def stack_conds(tensors):
    """Stack token sequences of different lengths by repeating each one's last vector."""
    token_count = max(x.shape[0] for x in tensors)
    padded = []
    for x in tensors:
        if x.shape[0] != token_count:
            x = torch.vstack([x, x[-1:].repeat([token_count - x.shape[0], 1])])
        padded.append(x)
    return torch.stack(padded)


def reconstruct_multicond_batch(c: MulticondLearnedConditioning, current_step):
    """``(conds_list, tensor)``: ``conds_list[i]`` lists ``(row, weight)`` of image i's sub-prompts."""
    tensors = []
    conds_list = []
    for composable_prompts in c.batch:
        conds_for_batch = []
        for composable_prompt in composable_prompts:
            target = _schedule_index(composable_prompt.schedules, current_step)
            conds_for_batch.append((len(tensors), composable_prompt.weight))
            tensors.append(composable_prompt.schedules[target].cond)
        conds_list.append(conds_for_batch)
    if isinstance(tensors[0], dict):
        stacked = DictWithShape({k: stack_conds([x[k] for x in tensors]) for k in tensors[0]})
    else:
        stacked = stack_conds(tensors)
    return conds_list, stacked


re_attention = re.compile(r"\\\(|\\\)|\\\[|\\]|\\\\|\\|\(|\[|:\s*([+-]?[.\d]+)\s*\)|\)|]|[^\\()\[\]:]+|:", re.X)
re_break = re.compile(r"\s*\bBREAK\b\s*", re.S)


def parse_prompt_attention(text):
    """``[[text, weight], ...]``: ``(x)`` x1.1, ``[x]`` /1.1, ``(x:w)``; ``BREAK`` is ``["BREAK", -1]``."""
    res = []
    round_brackets = []
    square_brackets = []

    def multiply_range(start_position, multiplier):
        for p in range(start_position, len(res)):
            res[p][1] *= multiplier

    for m in re_attention.finditer(text):
        token = m.group(0)
        weight = m.group(1)
        if token.startswith("\\"):
            res.append([token[1:], 1.0])
        elif token == "(":
            round_brackets.append(len(res))
        elif token == "[":
            square_brackets.append(len(res))
        elif weight is not None and round_brackets:
            multiply_range(round_brackets.pop(), float(weight))
        elif token == ")" and round_brackets:
            multiply_range(round_brackets.pop(), 1.1)
        elif token == "]" and square_brackets:
            multiply_range(square_brackets.pop(), 1 / 1.1)
        else:
            parts = re.split(re_break, token)
            for i, part in enumerate(parts):
                if i > 0:
                    res.append(["BREAK", -1])
                res.append([part, 1.0])
    for pos in round_brackets:
        multiply_range(pos, 1.1)
    for pos in square_brackets:
        multiply_range(pos, 1 / 1.1)
    if len(res) == 0:
        res = [["", 1.0]]
    merged = []
    for text_, weight_ in res:
        if merged and merged[-1][1] == weight_ and weight_ != -1:
            merged[-1][0] += text_
        else:
            merged.append([text_, weight_])
    return merged
