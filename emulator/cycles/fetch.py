"""The front end: how many cycles fetching a block's bytes takes.

Measured natively on this Zen 4 [MEAS] with loops whose placement was varied
byte by byte (the same bytes at every offset of a 64-byte line):

* a loop runs at least one cycle per 64-byte line its body touches: gcc's
  copy_words loop (17 bytes) takes 1.0 cycle an iteration from offsets 0-46
  of a line and 2.0 from 47-63, where it reaches into the next line; four
  15-byte NOPs plus dec/jnz (65 bytes) take 2.0 from any offset, eight (125
  bytes) 2.0 from offset 0 and 3.0 from 8-56.  No 32-byte effect: the same
  17 bytes across a 32-byte boundary still take 1.0.  Other bounds take the
  max with it, not the sum: 4 adds + dec/jnz take 1.28 in one line, 2.0 in
  two; 12 adds 3.28 either way.
* a taken branch ends the cycle's fetch: the target is fetched the next
  cycle (one taken jump a cycle, 8 jumps to the next instruction 1.13 each);
  a not-taken branch does not, so a block that falls through into the line
  already being fetched costs no fetch cycle of its own.
* a return costs more than a jump: `call f` / `f: ret` takes 4.1 cycles a
  pair (nested pairs 4.07 each) where `call next; pop` takes 1.0: the
  predicted return redirects about 2.1 cycles later than a jump would.

So the fetch cycles of a block are its fresh lines (every line it touches,
less the first when it falls through into a line already being fetched),
the first of them a redirect when a taken branch led to it, and a return's
extra redirect cycles when the block returns.  Zen 4 fetches from its op cache in
64-byte lines [SOG 2.9: op cache lines cover 64-byte aligned code]; the
line size is the profile's core.fetch_line_bytes.
"""
from __future__ import annotations

from emulator.cycles.profile import Profile

TAKEN = "taken"             # entered through a taken branch, a call or a return
FALL = "fall"               # fell through from the block before it


def line_bytes(profile: Profile) -> int:
    return int(profile.core.get("fetch_line_bytes", 64))


def lines(lo: int, hi: int, size: int) -> int:
    """How many `size`-byte lines the bytes [lo, hi) touch (hi > lo)."""
    return (hi - 1) // size - lo // size + 1


def entry_kind(prev_end: int, prev_branch: str | None, start: int) -> str:
    """How a block starting at `start` was reached from the block before it
    (which ended at prev_end with a branch of kind prev_branch, or none)."""
    if prev_end == start and prev_branch not in ("jmp", "call", "ret"):
        return FALL             # a not-taken jcc, or no branch at all (Unicorn split the block)
    return TAKEN                # a jump is taken even to the next instruction [MEAS: 1.13 cycles each]


def exit_extra(last_branch: str | None, profile: Profile) -> float:
    """A return's fetch cycles beyond an ordinary redirect, charged to the block
    that returns (it always redirects, wherever to)."""
    return float(profile.core.get("ret_extra_cycles", 0.0)) if last_branch == "ret" else 0.0


def fetch_cycles(start: int, end: int, how: str, last_branch: str | None, profile: Profile) -> float:
    """Front-end cycles to fetch the block [start, end) reached in the way
    `how`, whose last instruction is a branch of kind last_branch (or none)."""
    size = line_bytes(profile)
    n = lines(start, end, size)
    extra = exit_extra(last_branch, profile)
    if how == FALL:
        # The first line was already being fetched unless the block starts one.
        return float(n - (1 if start % size else 0)) + extra
    return float(profile.core.get("taken_branch_cycles", 1.0)) + (n - 1) + extra


def standalone(start: int, end: int, last_branch: str | None, loop_start: int | None,
               profile: Profile) -> float:
    """The fetch bound of a block costed on its own, where the blocks around it
    are not known: a loop's body is fetched afresh every iteration (its closing
    branch is taken); otherwise the block's lines after its first one, and its
    own exit: a jump, call or return is taken (a return with its extra cycles),
    a jcc that closes no loop is taken core.cond_taken_fraction of the time."""
    size = line_bytes(profile)
    core = profile.core
    taken = float(core.get("taken_branch_cycles", 1.0))
    if loop_start is not None:
        return taken + (lines(loop_start, end, size) - 1)
    exit_ = 0.0
    if last_branch == "cond":
        exit_ = taken * float(core.get("cond_taken_fraction", 1.0))
    elif last_branch in ("jmp", "call", "ret"):
        exit_ = taken + exit_extra(last_branch, profile)
    return exit_ + (lines(start, end, size) - 1)
