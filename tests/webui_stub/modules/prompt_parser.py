r"""``modules/prompt_parser.py`` (A1111 v1.10.1, 82a973c0; Forge 2 dfdcbab6 has the same schedule, AND and
emphasis code): prompt schedules, AND sub-prompts, emphasis, and the conditioning data shapes the samplers
consume (``ScheduledPromptConditioning`` lists, ``MulticondLearnedConditioning``).

The real schedules come from a lark (Earley) grammar; here a recursive-descent reader of the same syntax:
``[from:to:when]``, ``[to:when]``, ``[from::when]``, nested in one another, ``[a|b|...]`` alternation (one
option per step, cycling), ``(...)``, ``(...:w)`` and ``[...]`` kept as text, ``\x`` escapes. As in the real
grammar, brackets, parentheses and colons that close nothing are text at the top level only; inside a
construct they end it; a ``|`` outside an alternation or a lone ``\`` makes the whole prompt unreadable
(one schedule entry: the prompt as it is). A construct directly followed by a stray closing bracket or colon
(``[a:b:2]]``) is ambiguous in the real grammar, and lark resolves it differently from one process to the
next (it follows set order, so ``PYTHONHASHSEED``): the stand-in always reads the construct, one of the
real outcomes.
"""

from __future__ import annotations

import re
from collections import namedtuple
from dataclasses import dataclass

import torch

ScheduledPromptConditioning = namedtuple("ScheduledPromptConditioning", ["end_at_step", "cond"])

# The step of an edit: lark's SIGNED_NUMBER (a sign, then a float with an exponent or a decimal point, else an
# integer: the first alternative that matches, as in lark's regex), spaces around it, then "]".
re_when = re.compile(r"\s*([+-]?(?:\d+[eE][+-]?\d+|(?:\d+\.\d*|\.\d+)(?:[eE][+-]?\d+)?|\d+))\s*\]")
SYNTAX = "\\[]():|"


@dataclass
class Edit:
    """``[before:after:when]``; ``before`` is None for ``[after:when]``."""

    before: list | None
    after: list
    when: str


@dataclass
class Alternation:
    """``[a|b|...]``: option ``(step - 1) % len(options)`` at each step."""

    options: list


class _Reader:
    """One prompt as a list of text pieces, ``Edit`` and ``Alternation`` nodes."""

    def __init__(self, text):
        self.text = text

    def char(self, pos):
        return self.text[pos] if pos < len(self.text) else ""

    def plain_end(self, pos):
        """End of the text from ``pos`` that is no syntax: other characters, or ``\\`` and one character that
        is not a newline."""
        while pos < len(self.text):
            if self.text[pos] == "\\":
                if self.char(pos + 1) in ("", "\n"):
                    break
                pos += 2
            elif self.text[pos] in SYNTAX:
                break
            else:
                pos += 1
        return pos

    def line(self):
        """The whole prompt; None where the real grammar cannot read it."""
        nodes = []
        pos = 0
        while pos < len(self.text):
            char = self.text[pos]
            read = self.construct(pos) if char in "[(" else None
            if read is not None:
                nodes += read[0]
                pos = read[1]
            elif char in "[]():":
                nodes.append(char)  # opens or closes nothing: text, at the top level only
                pos += 1
            else:
                end = self.plain_end(pos)
                if end == pos:
                    return None  # a "|" outside an alternation, or a lone backslash
                nodes.append(self.text[pos:end])
                pos = end
        return nodes

    def prompt(self, pos):
        """Text and constructs from ``pos`` up to the first character that continues neither."""
        nodes = []
        while pos < len(self.text):
            read = self.construct(pos) if self.text[pos] in "[(" else None
            if read is None:
                end = self.plain_end(pos)
                if end == pos:
                    break
                read = [self.text[pos:end]], end
            nodes += read[0]
            pos = read[1]
        return nodes, pos

    def when(self, pos):
        match = re_when.match(self.text, pos)
        return (match.group(1), match.end()) if match else None

    def construct(self, start):
        """The construct opening at ``start`` (its nodes, the position after it), or None."""
        first, pos = self.prompt(start + 1)
        closer = self.char(pos)
        if self.text[start] == "(":  # emphasis: "(a)" or "(a:b)", kept as text
            if closer == ")":
                return ["(", *first, ")"], pos + 1
            if closer == ":":
                second, end = self.prompt(pos + 1)
                if self.char(end) == ")":
                    return ["(", *first, ":", *second, ")"], end + 1
            return None
        if closer == "]":  # "[a]": emphasis, kept as text
            return ["[", *first, "]"], pos + 1
        if closer == "|":
            options = [first]
            while self.char(pos) == "|":
                option, pos = self.prompt(pos + 1)
                options.append(option)
            return ([Alternation(options)], pos + 1) if self.char(pos) == "]" else None
        if closer != ":":
            return None
        when = self.when(pos + 1)
        if when is not None:  # "[after:when]"
            return [Edit(None, first, when[0])], when[1]
        second, pos = self.prompt(pos + 1)
        when = self.when(pos + 1) if self.char(pos) == ":" else None
        return ([Edit(first, second, when[0])], when[1]) if when is not None else None


def _nodes_of_kind(nodes, kind):
    """Every ``kind`` node in ``nodes``, at any depth."""
    for node in nodes:
        if isinstance(node, kind):
            yield node
        if isinstance(node, Edit):
            yield from _nodes_of_kind((node.before or []) + node.after, kind)
        elif isinstance(node, Alternation):
            for option in node.options:
                yield from _nodes_of_kind(option, kind)


def _text_at(nodes, step, edit_steps):
    pieces = []
    for node in nodes:
        if isinstance(node, Edit):
            pieces.append(_text_at((node.before or []) if step <= edit_steps[id(node)] else node.after, step,
                                   edit_steps))
        elif isinstance(node, Alternation):
            pieces.append(_text_at(node.options[(step - 1) % len(node.options)], step, edit_steps))
        else:
            pieces.append(node)
    return "".join(pieces)


def get_learned_conditioning_prompt_schedules(prompts, base_steps, hires_steps=None, use_old_scheduling=False):
    """For each prompt, ``[[end_at_step, text], ...]``: the text to use up to and including each step.

    ``when`` of an edit: old timelines: below 1 a fraction of the steps, else a step. New timelines: with a
    decimal point a fraction, else a step; in the hires pass (``hires_steps`` given) counted on from the
    first pass: fractions from 1 to 2 and steps from ``base_steps`` on.
    """
    hires = hires_steps is not None and not use_old_scheduling
    steps = hires_steps if hires else base_steps
    step_offset, fraction_offset = (base_steps, 1.0) if hires else (0, 0.0)

    def edit_step(when):
        value = float(when)
        if use_old_scheduling:
            value = value * steps if value < 1 else value
        elif "." in when:
            value = (value - fraction_offset) * steps
        else:
            value = value - step_offset
        return min(steps, int(value))

    def schedule(prompt):
        nodes = _Reader(prompt).line()
        if nodes is None:
            return [[steps, prompt]]
        edit_steps = {id(edit): edit_step(edit.when) for edit in _nodes_of_kind(nodes, Edit)}
        boundaries = {steps, *(s for s in edit_steps.values() if s >= 1)}
        if any(True for _ in _nodes_of_kind(nodes, Alternation)):
            boundaries.update(range(1, steps + 1))
        return [[step, _text_at(nodes, step, edit_steps)] for step in sorted(boundaries)]

    return [schedule(prompt) for prompt in prompts]


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
