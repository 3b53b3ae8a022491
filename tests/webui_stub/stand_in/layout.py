"""Where the transformer blocks of a diffusers UNet sit in the ldm/sgm naming the WebUIs use.

``input_blocks.<i>.1`` / ``middle_block.1`` / ``output_blocks.<i>.1`` hold a SpatialTransformer whose
``transformer_blocks.<j>`` carry ``attn1`` (self) and ``attn2`` (cross). diffusers down block d, attention
a is ldm input block 3d+a+1; up block u, attention a is output block 3u+a.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from torch import nn

re_diffusers_block = re.compile(
    r"^(?:(down_blocks)\.(\d+)\.attentions\.(\d+)|(mid_block)\.attentions\.0|(up_blocks)\.(\d+)\.attentions\.(\d+))"
    r"\.transformer_blocks\.(\d+)$"
)


@dataclass(frozen=True)
class TransformerSlot:
    block_name: str  # "input" | "middle" | "output"
    number: int  # ldm block index (0 for middle)
    transformer_index: int
    diffusers_block: nn.Module  # diffusers BasicTransformerBlock

    @property
    def ldm_prefix(self) -> str:
        if self.block_name == "middle":
            return f"middle_block.1.transformer_blocks.{self.transformer_index}"
        return f"{self.block_name}_blocks.{self.number}.1.transformer_blocks.{self.transformer_index}"


def transformer_slots(unet: nn.Module) -> list[TransformerSlot]:
    """Every transformer block of ``unet`` in execution order with its ldm position."""
    slots = []
    for name, module in unet.named_modules():
        m = re_diffusers_block.match(name)
        if m is None:
            continue
        j = int(m.group(8))
        if m.group(1):
            slots.append(TransformerSlot("input", 3 * int(m.group(2)) + int(m.group(3)) + 1, j, module))
        elif m.group(4):
            slots.append(TransformerSlot("middle", 0, j, module))
        else:
            slots.append(TransformerSlot("output", 3 * int(m.group(6)) + int(m.group(7)), j, module))
    return slots


def level_count(unet: nn.Module) -> int:
    return len(unet.down_blocks)


class SpatialTransformer(nn.Module):
    """Holds ``transformer_blocks`` under the ldm name; the computation stays in the diffusers UNet."""

    def __init__(self):
        super().__init__()
        self.transformer_blocks = nn.ModuleList()


class BasicTransformerBlock(nn.Module):
    def __init__(self, attn1: nn.Module, attn2: nn.Module):
        super().__init__()
        self.attn1 = attn1
        self.attn2 = attn2


def build_ldm_tree(root: nn.Module, unet: nn.Module, blocks: dict[TransformerSlot, BasicTransformerBlock]):
    """Give ``root`` ldm-named ``input_blocks``/``middle_block``/``output_blocks`` holding ``blocks``;
    positions without a transformer hold a placeholder, as ResBlocks and samplers sit there in ldm."""
    levels = level_count(unet)
    root.input_blocks = nn.ModuleList(nn.ModuleList([nn.Identity()]) for _ in range(3 * levels))
    root.middle_block = nn.ModuleList([nn.Identity(), SpatialTransformer(), nn.Identity()])
    root.output_blocks = nn.ModuleList(nn.ModuleList([nn.Identity()]) for _ in range(3 * levels))
    for slot, block in blocks.items():
        if slot.block_name == "middle":
            container = root.middle_block
        else:
            container = (root.input_blocks if slot.block_name == "input" else root.output_blocks)[slot.number]
            if len(container) == 1:
                container.append(SpatialTransformer())
        container[1].transformer_blocks.append(block)
