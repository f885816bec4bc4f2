"""Blocks in the order they ran: what a block costs after the two before it.

BlockCache analyses every translated block on its own (scoreboard.py).  What
escapes a block on its own:

* how it was reached.  The front end (fetch.py) fetches a block that falls
  through into the line already being fetched for nothing, a block reached
  by a taken branch afresh; a block on its own only guesses its exit.  Ops
  of the block before it that were fetched but not yet dispatched wait in
  the op queue while the fetch moves on [MEAS insert_sorted at -O2: two taken
  branches an iteration, 2.0 cycles, where each block's larger bound summed
  would be 2.7]; how far ahead that block's fetch was depends on how it was
  reached in turn, so a block is charged after the two before it.

* stores in flight.  Loads that read what the two blocks before stored take
  forwarding slots (memdeps.py) the block on its own never sees [-O0 code:
  a counter's read-modify-write in one block, its reloads in the next ones].

* overlap.  Straight code is charged apart on the front end (fetch and
  dispatch, in step block by block: with the two summed apart, the host
  vDSO's 1- and 4-byte calls, its bookkeeping code in blocks of 2 to 13
  instructions, come out 9% and 5% low in `faultpath bench`, within 2% in
  step) and the back end (pipes, forwarding slots, failed
  forwards); a call costs the larger of the two sums, since the front end
  runs ahead of the back end as far as the out-of-order window (320 ops on
  Zen 4 [SOG]) allows.  A loop's iteration is charged whole, its bounds
  already met inside it.  A block's recurrence "as if it ran again right
  after itself" is no charge for straight code: nothing runs it back to back.

emulator/cycles/sequence.py charges runs with these figures, cached per
triple of consecutive blocks.
"""
from __future__ import annotations

from dataclasses import dataclass

from emulator.cycles import fetch, scoreboard
from emulator.cycles.blockinfo import BlockInfo
from emulator.cycles.profile import Profile


def _last(block: BlockInfo) -> str | None:
    """The branch kind the block ends with, if any."""
    return block.models[-1].branch if block.models else None


def how_reached(prev: BlockInfo, block: BlockInfo) -> str:
    return fetch.entry_kind(prev.addr + prev.size, _last(prev), block.addr)


def forwards_after(before: list[BlockInfo], block: BlockInfo, profile: Profile) -> int:
    """Forwarding slots (memdeps.py) the block's loads take when it runs right
    after the blocks `before`: its own stores' and theirs, read in flight."""
    ahead = [m for b in before for m in b.models]
    both = scoreboard.dependencies(ahead + block.models, profile, looping=False)
    alone = scoreboard.dependencies(ahead, profile, looping=False) if ahead else None
    return both.mem.forwards - (alone.mem.forwards if alone is not None else 0)


@dataclass(frozen=True)
class Charge:
    """What running a block once adds, in core cycles.  `whole` is charged as it
    is (a loop's iteration, whose bounds already meet inside it).  `front` and
    `back` are straight code's front end and back end: sequence.py sums each
    over a call and charges the larger sum."""
    whole: float = 0.0
    front: float = 0.0
    back: float = 0.0


def _whole(block: BlockInfo, profile: Profile) -> Charge:
    t = block.timing
    if t is None:                   # a block cut from a longer one, or undecodable: its own share
        return Charge(whole=block.cost / profile.to_tsc(1.0))
    return Charge(whole=t.cost - t.detail.get("exit_credit", 0.0))


def _dispatch(block: BlockInfo) -> float:
    return block.timing.detail.get("bounds", {}).get("dispatch", 0.0) if block.timing is not None else 0.0


def _straight(block: BlockInfo, how: str, forwards: int, ahead: float, profile: Profile) -> Charge:
    """Straight code's charge.  Its front end: the larger of fetching it, less
    what the block before left to dispatch after its own fetch (`ahead`: the op
    queue holds those ops while the fetch moves on), and dispatching it.  Its
    loop-carried recurrence (as if it ran again right after itself) is no
    charge: nothing runs it back to back."""
    t = block.timing
    bounds = t.detail.get("bounds", {})
    back = max((v for k, v in bounds.items() if k not in ("dispatch", "fetch")), default=0.0)
    group = profile.core.get("rmw_forward_ports")
    if group and forwards:
        counts = dict(t.detail.get("ports", {}))
        counts[str(group)] = float(forwards)
        back = max(back, scoreboard.port_bound(counts, profile)[0])
    f = fetch.fetch_cycles(block.addr, block.addr + block.size, how, _last(block), profile) - ahead
    return Charge(t.startup - t.detail.get("exit_credit", 0.0), max(f, bounds.get("dispatch", 0.0)), back)


def is_loop(block: BlockInfo) -> bool:
    """A block whose last branch goes back into itself (or undecodable/cut:
    charged whole as well)."""
    return block.timing is None or bool(block.timing.detail.get("loop"))


def after(prev: BlockInfo, block: BlockInfo, profile: Profile, before: BlockInfo | None = None) -> Charge:
    """`block` run right after `prev` (itself run after `before`, if known): a
    loop's iteration whole, as on its own; straight code with its front end as
    it was reached, less what prev left the op queue to dispatch, and the
    forwards the two blocks' stores add to its back end."""
    if is_loop(block):
        return _whole(block, profile)
    ctx = [b for b in (before, prev) if b is not None and b.models]
    n = forwards_after(ctx, block, profile) if ctx and block.models else 0
    ahead = 0.0
    if not is_loop(prev):
        # prev's dispatch beyond its own fetch: the fetch moves on while the op
        # queue holds the rest [MEAS insert_sorted: a fetch-bound block after a
        # dispatch-bound one that fell through, 2.0 cycles an iteration, the
        # blocks' larger bounds summing to 2.7]
        how = how_reached(before, prev) if before is not None else fetch.TAKEN
        own = fetch.fetch_cycles(prev.addr, prev.addr + prev.size, how, _last(prev), profile)
        ahead = max(0.0, _dispatch(prev) - own)
    return _straight(block, how_reached(prev, block), n, ahead, profile)


def entered(block: BlockInfo, profile: Profile) -> Charge:
    """`block` run first, reached by a taken branch (a call into the code, a
    restart after a syscall or a fault)."""
    if is_loop(block):
        return _whole(block, profile)
    return _straight(block, fetch.TAKEN, 0, 0.0, profile)
