"""Where the stepped call has been: positions and snapshots for going back.

A position is (instruction index, fault): fault 0 is the arrival at the
instruction (injections due there applied, nothing of it executed); fault
k > 0 is the k-th fault stop at that instruction (a store that faulted, not
handled yet; a retried store can fault several times at one index).

The call is deterministic (seeded entropy, injections at fixed indices,
memory decisions from mm's state), so any earlier position is reached by
restoring a snapshot taken at or before it and running forward again.
Snapshots (Task.snapshot: mm copy-on-write, CPU, kernel state, the call's
context) are taken at the call's start and then every `every` instructions,
so going back re-runs at most `every` instructions.  At most MAX_SNAPSHOTS
are kept; past that every other one is dropped and the interval doubles.

A change made by hand (a register or memory write, an injection, the
policy or memory budget) is not part of the call's deterministic history:
it becomes a barrier, and history before it is no longer reachable (going
back stops there).  `restart` goes back to the first snapshot, discarding
those changes.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

DEFAULT_EVERY = 1 << 16
MAX_SNAPSHOTS = 256


class Pos(NamedTuple):
    index: int
    fault: int = 0

    def __str__(self) -> str:
        return f"#{self.index}" + (f" (fault {self.fault})" if self.fault else "")


@dataclass
class Snapshot:
    pos: Pos
    task: object                 # emulator.task.TaskSnapshot


class Timeline:
    def __init__(self, task, every: int = DEFAULT_EVERY):
        self.task = task
        self.every = every
        self.snaps: list[Snapshot] = []
        self.origin: Snapshot | None = None     # the call's start, before any change by hand
        self.barrier_why = ""                   # what was changed by hand at the start of history

    def take(self, pos: Pos, ctx) -> None:
        """A snapshot at `pos` (an arrival).  Later snapshots of another history
        must have been dropped (forget_after) before."""
        if self.snaps and self.snaps[-1].pos >= pos:
            return
        snap = Snapshot(pos, self.task.snapshot(ctx))
        self.snaps.append(snap)
        if self.origin is None:
            self.origin = snap
        if len(self.snaps) > MAX_SNAPSHOTS:
            keep = [self.snaps[0]] + self.snaps[2::2]
            self.snaps = keep
            self.every *= 2

    def due(self, index: int) -> int:
        """The next index at which a snapshot is due after `index`."""
        return (index // self.every + 1) * self.every

    def barrier(self, pos: Pos, ctx, why: str) -> None:
        """A change by hand at `pos`: history before it is gone."""
        self.snaps = []
        self.barrier_why = why
        self.take(pos, ctx)

    def forget_after(self, pos: Pos) -> None:
        self.snaps = [s for s in self.snaps if s.pos <= pos]

    def before(self, pos: Pos) -> Snapshot | None:
        """The latest snapshot at or before `pos`."""
        best = None
        for s in self.snaps:
            if s.pos <= pos:
                best = s
        return best

    def earlier(self, snap: Snapshot) -> Snapshot | None:
        i = self.snaps.index(snap)
        return self.snaps[i - 1] if i > 0 else None

    @property
    def start(self) -> Pos:
        return self.snaps[0].pos if self.snaps else Pos(0)

    def restore(self, snap: Snapshot):
        """Back to `snap`; returns a fresh copy of its call context."""
        return self.task.restore(snap.task)

    def reset_to_origin(self):
        self.snaps = [self.origin]
        self.barrier_why = ""
        return self.task.restore(self.origin.task)
