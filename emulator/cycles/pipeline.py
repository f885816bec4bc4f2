"""A cycle-level run of a loop body: what the bounds cannot see when they meet.

The scoreboard's two bounds, throughput (uops over pipes) and recurrence (the
loop-carried chain), are each exact alone.  When they are close, the core
reaches neither: Zen binds every uop to one pipe's scheduler when it
dispatches it, so a chain's next op can find its pipe busy with another
chain's, and every such cycle is lost for good when there is no slack.
Measured natively [MEAS]: gcc's scalar ChaCha20 double round (98 ALU and
rotate ops, 4 pipes: 24.5 cycles of throughput; a 24-cycle chain) takes 36
core cycles an iteration; llvm-mca says 24.8.

This module runs the loop body for a number of iterations on a small model of
the back end:
* dispatch in program order, `core.dispatch_width` macro-ops a cycle, a taken
  branch ending the cycle's group;
* at dispatch each uop is bound to the pipe of its group with the fewest uops
  waiting (a pipe's queue holds `core.pipe_queue` uops; dispatch stalls while
  the chosen one is full);
* each cycle each pipe issues the oldest uop in its queue whose inputs are
  ready; results are ready after the uop's latency;
* loads that read a store (emulator/cycles/memdeps.py) get its data after the
  forwarding latency.
The steady-state cycles per iteration is the slope of the iterations' finish
times over the second half of the run.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from emulator.cycles.profile import Profile

if TYPE_CHECKING:
    from emulator.cycles.walk import Walk
    from emulator.cycles.uarch import InsnModel

MAX_UOPS = 3000             # simulated uops per loop (bounds the analysis time of a big body)
MIN_ITERATIONS = 6


@dataclass
class _Uop:
    pipes: tuple[str, ...]          # where it may run ((): no pipe: done at dispatch)
    lat: float
    srcs: list = field(default_factory=list)     # (uop, extra latency) it waits for before it can issue
    fwd: list = field(default_factory=list)      # (store's data uop, forwarding latency): a load's data
    done: float | None = None       # cycle its result is ready
    issued: float | None = None
    seq: int = 0


def simulate(body: list["InsnModel"], walk: "Walk", profile: Profile) -> float | None:
    """Core cycles per iteration of the loop body in steady state (None if it
    has no uops to run)."""
    nuops = sum(len(m.uops) for m in body) or 1
    iters = max(MIN_ITERATIONS, min(40, MAX_UOPS // nuops))
    core = profile.core
    width = float(core.get("dispatch_width", 6))
    qcap = float(core.get("pipe_queue", 24))
    groups = profile.ports
    links = walk.mem.links

    # Build the uop graph, iteration by iteration.
    insts: list[list[tuple[_Uop | None, float]]] = []      # per iteration: per insn (result uop, extra lat)
    order: list[tuple[_Uop, float]] = []                    # (uop, mops charged at dispatch), program order
    ends: list[int] = []                                    # index in order where each iteration ends
    last_writer: dict[str, tuple[_Uop | None, float]] = {}
    seq = 0
    for it in range(iters):
        res: list[tuple[_Uop | None, float]] = []
        store_data: dict[int, tuple[_Uop | None, float]] = {}
        for i, m in enumerate(body):
            def src(r: str):
                return last_writer.get(r, (None, 0.0))
            if m.zero_idiom:
                for d in m.dsts:
                    last_writer[d] = (None, 0.0)
                order.append((_Uop((), 0.0, seq=seq), m.mops))
                seq += 1
                res.append((None, 0.0))
                continue
            if m.eliminated:
                s = [src(r) for r in m.data_srcs if r not in m.dsts] or [src(r) for r in m.data_srcs]
                u = _Uop((), 0.0, srcs=s, seq=seq)
                seq += 1
                order.append((u, m.mops))
                for d in m.dsts:
                    last_writer[d] = (u, 0.0)
                res.append((u, 0.0))
                continue
            prev: tuple[_Uop | None, float] | None = None
            result: tuple[_Uop | None, float] = (None, 0.0)
            first = True
            for k, up in enumerate(m.uops):
                pipes = tuple(groups.get(up.ports, (up.ports,))) if up.ports else ()
                u = _Uop(pipes, up.lat, seq=seq)
                seq += 1
                if up.kind == "load":
                    u.srcs = [src(r) for r in m.addr_srcs]
                    for st_insn, carried, flat in links.get(i, ()):
                        if carried:
                            if it > 0:
                                u.fwd.append((insts[it - 1][st_insn][0], flat))
                        elif st_insn in store_data:
                            u.fwd.append((store_data[st_insn][0], flat))
                    prev = (u, 0.0)
                elif up.kind in ("op", "branch"):
                    u.srcs = [src(r) for r in m.data_srcs] + ([prev] if prev else [])
                    prev = (u, 0.0)
                else:       # store: waits for its data (and address); nothing waits for it
                    u.srcs = ([prev] if prev else [src(r) for r in m.data_srcs]) + [src(r) for r in m.addr_srcs]
                order.append((u, m.mops if first else 0.0))
                first = False
                if up.kind != "store":
                    result = (u, 0.0)
            if m.store:
                store_data[i] = prev if prev else (src(m.data_srcs[0]) if m.data_srcs else (None, 0.0))
            for d in m.dsts:
                last_writer[d] = result
            res.append(result if not m.store or prev else store_data.get(i, result))
        # A store's data for the next iteration's loads: what the store wrote.
        for i in store_data:
            res[i] = store_data[i]
        insts.append(res)
        ends.append(len(order))
    return _run(order, ends, width, qcap, profile)


def _ready(u: _Uop | None, extra: float) -> float | None:
    if u is None:
        return extra if extra > 0 else 0.0
    if u.done is None:
        return None
    return u.done + extra


def _resolve(waiting: list[_Uop]) -> list[_Uop]:
    """Result times of issued uops: issue + latency, and for a load the
    forwarded data; repeated until nothing changes (a chain of pipe-less moves)."""
    while True:
        still = []
        for u in waiting:
            ts = [_ready(s, x) for s, x in u.srcs if not u.pipes] + [_ready(s, x) for s, x in u.fwd]
            if any(t is None for t in ts):
                still.append(u)
                continue
            u.done = max([u.issued + u.lat] + ts)
        if len(still) == len(waiting):
            return still
        waiting = still


def _run(order, ends, width: float, qcap: float, profile: Profile) -> float | None:
    queues: dict[str, list[_Uop]] = {}
    # A pipe that fewer groups can use is kept for them: an op any ALU runs goes
    # to a plain ALU before one that also shifts, at equal queue length.
    share: dict[str, int] = {}
    for pipes in profile.ports.values():
        for p in pipes:
            share[p] = share.get(p, 0) + 1
    pos = 0
    cycle = 0
    it_end = 0
    waiting: list[_Uop] = []        # issued (or pipe-less) uops whose result time is not known yet
    limit = 100_000
    while (it_end < len(ends) or waiting or any(queues.values())) and cycle < limit:
        # dispatch
        budget = width
        while pos < len(order) and budget > 0:
            u, mops = order[pos]
            if u.pipes:
                pipe = min(u.pipes, key=lambda p: (len(queues.get(p, ())), share.get(p, 0), u.pipes.index(p)))
                if len(queues.get(pipe, ())) >= qcap:
                    break
                queues.setdefault(pipe, []).append(u)
            else:
                u.issued = float(cycle)
                waiting.append(u)
            budget -= mops
            pos += 1
            if it_end < len(ends) and pos == ends[it_end]:
                it_end += 1
                break           # the taken branch ends the dispatch group
        waiting = _resolve(waiting)
        # issue: each pipe, the oldest uop whose inputs are ready
        for q in queues.values():
            for k, u in enumerate(q):
                ts = [_ready(s, x) for s, x in u.srcs]
                if all(t is not None and t <= cycle for t in ts):
                    u.issued = float(cycle)
                    waiting.append(u)
                    del q[k]
                    break
        waiting = _resolve(waiting)
        cycle += 1
    if cycle >= limit:
        return None
    finish = []
    start = 0
    for e in ends:
        times = [u.done for u, _ in order[start:e] if u.done is not None]
        finish.append(max(times) if times else 0.0)
        start = e
    n = len(finish)
    a = n // 2
    if n - 1 <= a:
        return None
    return (finish[-1] - finish[a]) / (n - 1 - a)
