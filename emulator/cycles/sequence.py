"""The figures emulator/entry.py charges for blocks in the order they ran.

A run (the entries the native block hook recorded between two stops) is
charged block by block, each block after the two before it
(emulator/cycles/context.py says what that costs); a call's first block as
reached by a taken branch.  A figure is (instructions, TSC ticks charged
whole, to the front end, to the back end, must the run be accounted in order).

What a call costs so far is the sum of its whole charges plus the larger of
its front-end and back-end sums (straight code overlaps within the
out-of-order window; context.Charge).  Where the run loop stops never
changes that: the blocks before a run's first block, the part of a block a
stop cut off, and the two sums are the call's, carried from run to run
(CallCycles, kept with the call's context so that a snapshot of the call
keeps them too), and a block cut by a stop is charged its share before the
stop and the rest after it.

The figures of a triple of blocks are a function of their code alone, so no
Machine's history changes them (shared by every Machine with the profile);
a run seen before, after the same two blocks, costs what it cost then (one
hash of its entries, in C).
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Protocol

from emulator.cycles import context
from emulator.cycles.blockinfo import BlockInfo
from emulator.cycles.profile import Profile

Figures = tuple          # (instructions, whole, front, back, in order)


class Blocks(Protocol):
    """What a Sequence uses of its BlockCache (emulator/cycles/blocks.py)."""
    profile: Profile
    shared: object          # .triples: figures shared by every Machine with the profile, by code

    def get(self, entry: int) -> BlockInfo: ...


@dataclass
class CallCycles:
    """A call's accounting state between two runs of the run loop."""
    before: int | None = None       # the entry before the last one of the last run
    prev: int | None = None         # the last entry of the last run
    done: int = 0                   # its instructions that retired, if the run stopped inside it
    cut: Figures | None = None      # then: the figures it is charged
    front: float = 0.0              # TSC ticks of straight code's front end, so far
    back: float = 0.0               # ... and back end

    def charged(self) -> float:
        return max(self.front, self.back)


def _share(info: BlockInfo, k: int) -> float:
    """The share of a block's cost its first k instructions take (of its
    instructions, when it has no cost of its own to share: a loop's exit credited)."""
    whole = info.prefix_cost[-1]
    return info.prefix_cost[k] / whole if whole > 0 else k / info.ninsns


class Sequence:
    RUN_MEMO_MAX = 8192         # runs longer than this are not remembered (entries)
    RUN_MEMO_SIZE = 256         # runs remembered at most (the oldest goes first)

    def __init__(self, blocks: Blocks):
        self.blocks = blocks
        self.profile = blocks.profile
        self.triples: dict[tuple, Figures] = {}             # (entry, entry, entry) -> charge()
        self.runs: dict[tuple, tuple] = {}                  # (two blocks before, entries) -> run figures
        self.totals = [0.0, 0.0, 0.0]   # TSC ticks charged whole, to the front end, to the back end, so far

    def clear(self) -> None:
        """Forget every figure: the code changed (BlockCache.forget, invalidate)."""
        self.triples.clear()
        self.runs.clear()

    # --- runs ---------------------------------------------------------------------
    @staticmethod
    def new_call() -> CallCycles:
        """The accounting state of a call about to run its first block."""
        return CallCycles()

    def account(self, entries: list[int], stop_rip: int, partial: bool, st: CallCycles
                ) -> tuple[int, float] | None:
        """(instructions retired, TSC ticks) a run adds to its call, whose state st
        it updates; None if it must be accounted in order (a rep-string tail)."""
        if partial:
            # A stop past the last block's end (a return to the caller's sentinel,
            # a fetch fault on the next page) cut nothing.
            info = self.blocks.get(entries[-1])
            partial = info.executed_before(stop_rip) < info.ninsns
        resume = st.done and st.prev is not None
        key = None if resume or partial or len(entries) > self.RUN_MEMO_MAX else \
            (st.before, st.prev, tuple(entries))
        r = self.runs.get(key) if key is not None else None
        if r is None:
            r = self._run(entries, stop_rip, partial, st)
            if r is None:
                return None
            if key is not None:
                if len(self.runs) >= self.RUN_MEMO_SIZE:
                    del self.runs[next(iter(self.runs))]
                self.runs[key] = r
        ninsn, whole, front, back, before, last, done, cut = r
        t = self.totals
        t[0] += whole
        t[1] += front
        t[2] += back
        was = st.charged()
        st.front += front
        st.back += back
        st.before, st.prev, st.done, st.cut = before, last, done, cut
        return ninsn, whole + st.charged() - was

    def _run(self, entries: list[int], stop_rip: int, partial: bool, st: CallCycles) -> tuple | None:
        """(instructions, whole, front, back, the last two entries, the last one's
        instructions retired if the run stopped inside it, its figures then) of
        a run.  Each block is charged after the two before it (the last run's
        last two for the first ones)."""
        blocks = self.blocks
        seq = [st.before, st.prev] + entries
        start = (0, 0.0, 0.0, 0.0)
        if st.done and st.prev is not None:
            # The run resumes inside the block the last run stopped in: the rest of
            # it, charged what it was charged then; it is the block before the
            # next one.
            cutb = blocks.get(st.prev)
            info = blocks.get(entries[0])
            j = cutb.insn_addrs.index(info.addr) if info.addr in cutb.insn_addrs else -1
            if j >= st.done and info.addr + info.size == cutb.addr + cutb.size:
                rest = 1.0 - _share(cutb, j)
                s = st.cut
                start = (cutb.ninsns - j, rest * s[1], rest * s[2], rest * s[3])
                seq = [st.before, st.prev] + entries[1:]
                if len(entries) == 1:
                    return self._close(start, seq, s, stop_rip, partial)
        ninsn, whole, front, back = start
        triples = self.triples
        s = None
        for abc, c in Counter(zip(seq, seq[1:], seq[2:])).items():
            s = triples.get(abc)
            if s is None:
                s = self.charge(*abc)
            if s[4]:
                return None
            ninsn += c * s[0]
            whole += c * s[1]
            front += c * s[2]
            back += c * s[3]
        return self._close((ninsn, whole, front, back), seq, triples[tuple(seq[-3:])], stop_rip, partial)

    def _close(self, sums: tuple, seq: list, last: Figures, stop_rip: int, partial: bool) -> tuple:
        """The run's figures, its last block cut where the run stopped inside it:
        the share of its instructions that retired now, the rest when the call
        goes on from there."""
        ninsn, whole, front, back = sums
        done, cut = 0, None
        if partial:
            info = self.blocks.get(seq[-1])
            k = info.executed_before(stop_rip)
            if k < info.ninsns:
                rest = 1.0 - _share(info, k)
                ninsn -= info.ninsns - k
                whole -= rest * last[1]
                front -= rest * last[2]
                back -= rest * last[3]
                done, cut = k, last
        return ninsn, whole, front, back, seq[-2], seq[-1], done, cut

    # --- blocks ---------------------------------------------------------------------
    def charge(self, a: int | None, b: int | None, c: int) -> Figures:
        """Block c run right after block b, itself run after block a (None: the
        call's start; context.after, context.entered).  Cached per triple, and
        by the blocks' code for every Machine with the profile."""
        s = self.triples.get((a, b, c))
        if s is None:
            blocks = self.blocks
            ia = blocks.get(a) if a is not None else None
            ib = blocks.get(b) if b is not None else None
            ic = blocks.get(c)
            skey = (ia.key if ia else None, ib.key if ib else None, ic.key)
            cacheable = ic.key is not None and (ia is None or ia.key is not None) and (ib is None or ib.key is not None)
            shared = blocks.shared.triples
            s = shared.get(skey) if cacheable else None
            if s is None:
                ch = context.after(ib, ic, self.profile, ia) if ib is not None else context.entered(ic, self.profile)
                s = self._figures(ic, ch)
                if cacheable:
                    shared[skey] = s
            self.triples[(a, b, c)] = s
        return s

    def _figures(self, info: BlockInfo, c: context.Charge) -> Figures:
        if info.rep_tail:
            return (info.ninsns, info.cost, 0.0, 0.0, True)
        t = self.profile.to_tsc
        return (info.ninsns, t(c.whole), t(c.front), t(c.back), False)
