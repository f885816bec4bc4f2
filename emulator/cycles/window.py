"""The out-of-order window at the exit of a latency-bound loop.

While a loop waits on its loop-carried chain, the front end runs ahead: every
iteration it dispatches leaves the uops that depend on the chain waiting in
the schedulers.  When the loop exits, the last chains still have as many
iterations to drain as the schedulers hold: the work after the loop (the next
call of a function whose loop result nobody waits for, the next ChaCha20
block) starts that much earlier.  The overlap, in core cycles, is

    recurrence x min over scheduler pools P of  (entries(P) - dependent(P)) / waiting(P)

where waiting(P) is the loop's chain-dependent uops in P per iteration and
dependent(P) the uops after the exit that wait for the loop's result (they
occupy the same entries).  Pools and their entries are the profile's [window]
section: measured with chain loops of one pool each (`faultpath calibrate`).

Measured here [MEAS] with a chain loop called over and over: the next call's
chain starts this many cycles before the last one ends; imul: 15 waiting
uops (its one pipe), add: 54 (the integer schedulers), shl: 20, loads: 36,
paddd/pxor/pslld: 58 (the FP scheduler).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from emulator.cycles.profile import Profile

if TYPE_CHECKING:
    from emulator.cycles.walk import Walk
    from emulator.cycles.uarch import InsnModel


@dataclass
class LoopWindow:
    rec: float                                  # core cycles an iteration
    slow: frozenset                             # the loop-carried nodes the chain runs through
    waiting: dict[str, float] = field(default_factory=dict)   # pool -> chain-dependent uops an iteration


def _pools(profile: Profile) -> dict[str, tuple[frozenset, float]]:
    return {name: (frozenset(p.get("groups", ())), float(p.get("entries", 0)))
            for name, p in profile.window.items()}


def _count(models, selected, profile: Profile) -> dict[str, float]:
    out: dict[str, float] = {}
    pools = _pools(profile)
    for m, sel in zip(models, selected):
        if not sel:
            continue
        for u in m.uops:
            if not u.ports:
                continue
            for name, (groups, _) in pools.items():
                if u.ports in groups:
                    out[name] = out.get(name, 0.0) + 1.0
    return out


def loop_window(body: list["InsnModel"], walk: "Walk", rec: float, profile: Profile,
                period: float | None = None) -> LoopWindow | None:
    """What a latency-bound loop (recurrence rec; an iteration every `period`
    core cycles, rec unless the pipeline model says more) leaves waiting each
    iteration (None: no pools)."""
    if not profile.window or rec <= 0:
        return None
    waiting = [bool(deps & slow) for deps in walk.deps] if (slow := chain_nodes(walk.ready, rec)) else []
    return LoopWindow(period or rec, slow, _count(body, waiting, profile))


def chain_nodes(d: dict[str, dict[str, float]], rec: float) -> frozenset:
    """The loop-carried nodes of the critical chain: those whose path back to
    themselves takes the whole recurrence, and every node in a cycle with them
    (ChaCha20's rows rotate through four registers).  The loop counter's own
    1-cycle chain runs ahead and never waits."""
    seeds = {r for r, v in d.items() if v.get(r, float("-inf")) >= rec - 1e-6}
    succ: dict[str, set] = {}
    for s, v in d.items():
        for r in v:
            succ.setdefault(r, set()).add(s)        # r at entry reaches s at exit

    def reach(frm: set, edges) -> set:
        seen, todo = set(frm), list(frm)
        while todo:
            for n in edges.get(todo.pop(), ()):
                if n not in seen:
                    seen.add(n)
                    todo.append(n)
        return seen

    pred: dict[str, set] = {}
    for r, ss in succ.items():
        for s in ss:
            pred.setdefault(s, set()).add(r)
    return frozenset(reach(seeds, succ) & reach(seeds, pred))


def dependent(after: list["InsnModel"], slow: frozenset, profile: Profile) -> tuple[dict[str, float], set]:
    """Uops after the loop's exit that wait for its result, by pool; and the
    registers still carrying the result at the end of that block."""
    tainted = set(slow)
    sel = []
    for m in after:
        reads = set(m.data_srcs) | set(m.addr_srcs)
        hit = bool(reads & tainted)
        sel.append(hit)
        for r in m.dsts:
            if hit:
                tainted.add(r)
            else:
                tainted.discard(r)
    return _count(after, sel, profile), tainted


def overlap(w: LoopWindow, after: list["InsnModel"], again: list["InsnModel"] | None,
            profile: Profile) -> float:
    """Core cycles the work after the loop (`after`, the block at its exit)
    overlaps its last chains.  `again`: where that block branches back to, if it
    closes an enclosing loop (the code that runs the loop once more)."""
    if not w.waiting or not after:
        return 0.0
    dep, tainted = dependent(after, w.slow, profile)
    if again is not None:
        if any(n.startswith("mem:") for n in w.slow):
            return 0.0              # a chain through memory: assume the enclosing loop continues it
        for m in again:
            if (set(m.data_srcs) | set(m.addr_srcs)) & tainted & w.slow:
                # The enclosing loop runs this loop again on its result (a CRC's
                # byte loop around its bit loop): nothing overlaps the chain.
                return 0.0
            for r in m.dsts:
                tainted.discard(r)
    pools = _pools(profile)
    lead = min(max(0.0, pools[name][1] - dep.get(name, 0.0)) / n for name, n in w.waiting.items() if n > 0)
    return w.rec * lead
