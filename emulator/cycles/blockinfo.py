"""What BlockCache (emulator/cycles/blocks.py) knows of one translated block:
its instructions, its cost, the scoreboard's analysis and the instruction
models behind it (emulator/cycles/context.py reads them)."""
from __future__ import annotations

from bisect import bisect_left
from dataclasses import dataclass, field

from emulator.cycles import scoreboard


@dataclass
class BlockInfo:
    addr: int
    size: int
    insn_addrs: tuple[int, ...]     # start address of each instruction
    prefix_cost: tuple[float, ...]  # prefix_cost[k] = cost of the first k instructions
    rep_tail: bool                  # the last instruction is a rep string op
    unfaithful: str | None          # reason, if the block holds an instruction Unicorn runs wrongly
    timing: scoreboard.BlockTiming | None = None   # the scoreboard's analysis (core cycles)
    rep_element_cost: float = 0.0   # TSC ticks per further element of the rep tail
    models: list = field(default_factory=list)     # uarch.InsnModel per instruction (context.py reads them)
    key: tuple | None = None        # its key in the shared cache; None for a block cut from a longer one

    @property
    def ninsns(self) -> int:
        return len(self.insn_addrs)

    @property
    def cost(self) -> float:
        return self.prefix_cost[-1]

    def executed_before(self, rip: int) -> int:
        """How many of this block's instructions retired if execution stopped at rip."""
        if not (self.addr <= rip < self.addr + self.size):
            return self.ninsns
        return bisect_left(self.insn_addrs, rip)
