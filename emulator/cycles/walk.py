"""The result of one scoreboard pass over a block (emulator/cycles/scoreboard.py),
which the window and pipeline models read."""
from __future__ import annotations

from dataclasses import dataclass

from emulator.cycles.memdeps import MemWalk


@dataclass
class Walk:
    ready: dict[str, dict[str, float]]      # D[s][r]: longest path from r at entry to s at exit
    crit: float                             # critical path from the entry, all inputs ready at 0
    mem: MemWalk                            # the memory side: forwarding links, carried stores
    deps: list[frozenset]                   # per instruction: the entry nodes its result depends on
