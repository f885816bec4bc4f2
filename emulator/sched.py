"""The emulated machine under `faultpath exec`: one kernel, its processes, a
run queue, and the console their fd 1 and 2 write to.

Scheduling is deterministic and cooperative: the process at the head of the
run queue runs until it sleeps or ends; a woken or newly forked process goes
to the tail.  After fork the parent runs on (Linux's default,
sched_child_runs_first = 0), and the child runs when the parent sleeps
(a read of the pipe, wait4) or exits.  When every live process sleeps and
none can wake the others, the run ends as a deadlock.
"""
from __future__ import annotations

import sys
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, BinaryIO, Protocol

from emulator.errors import EmulationError

if TYPE_CHECKING:
    from emulator.kernel import Kernel
    from emulator.records import CallContext

# Task states, as ps shows them (include/linux/sched.h's TASK_* and EXIT_*).
# STOPPED ("t", traced): a tool stopped the process from one of its callbacks
# (emulator/process.py's tool API), as a debugger's ptrace stop does; it
# does not run again unless the tool makes it RUNNING and enqueues it.
RUNNING, SLEEPING, ZOMBIE, DEAD, STOPPED = "R", "S", "Z", "X", "t"
FIRST_PID = 31000           # deterministic; unlike the small counts programs print (normalised traces replace pids in text)


class Schedulable(Protocol):
    """What the scheduler sees of a process (emulator/process.py)."""
    pid: int
    state: str
    sleep_reason: str
    ctx: "CallContext"
    exit: object                 # process.ExitState: outcome, detail, signal
    parent: "Schedulable | None"
    children_procs: list
    observers: list
    files: object                # fdtable.FdTable

    def run_slice(self) -> None: ...
    def snapshot(self) -> object: ...
    def restore(self, snap) -> object: ...
    def finish(self, ctx: "CallContext", outcome: str, detail: str = "") -> None: ...
    def release_mm(self) -> None: ...
    def close(self) -> None: ...
    def notify_parent(self) -> None: ...


@dataclass
class Console:
    """Where the programs' fd 1 and 2 go: faultpath's own stdout/stderr
    (passthrough), and always a copy kept for the report."""
    passthrough: bool = True
    out: BinaryIO | None = None
    err: BinaryIO | None = None
    captured: dict[int, bytearray] = field(default_factory=lambda: {1: bytearray(), 2: bytearray()})
    writes: list[tuple[int, int, bytes]] = field(default_factory=list)     # (pid, fd, data)

    def write(self, fd: int, pid: int, data: bytes) -> None:
        self.captured[fd] += data
        self.writes.append((pid, fd, bytes(data)))
        if self.passthrough:
            stream = (self.out or sys.stdout.buffer) if fd == 1 else (self.err or sys.stderr.buffer)
            stream.write(data)
            stream.flush()

    def text(self, fd: int) -> str:
        return self.captured[fd].decode("utf-8", "replace")

    def save_state(self) -> tuple[int, int, int]:
        return (len(self.captured[1]), len(self.captured[2]), len(self.writes))

    def restore_state(self, st: tuple[int, int, int]) -> None:
        """Forget what was written since (what went through to faultpath's
        own streams stays written: a tool that restores turns passthrough off)."""
        del self.captured[1][st[0]:], self.captured[2][st[1]:], self.writes[st[2]:]


@dataclass
class SystemSnapshot:
    """System.snapshot(): every process's snapshot and the machine around them."""
    processes: list[tuple["Schedulable", object]]
    order: list["Schedulable"]
    runqueue: list["Schedulable"]
    next_pid: int
    deadlock: str
    console: tuple[int, int, int]
    kernel: dict
    cache: object                 # mm.physmem.CacheSnapshot
    observers: list[tuple[object, object]]


class System:
    """The process table and the run queue of one emulated machine."""

    def __init__(self, kernel: "Kernel", console: Console):
        self.kernel = kernel
        self.console = console
        self.procs: dict[int, "Schedulable"] = {}
        self.order: list["Schedulable"] = []          # every process, in pid order
        self.runqueue: deque["Schedulable"] = deque()
        self.next_pid = FIRST_PID
        self.reaper_pid = FIRST_PID - 1           # the parent of the first process (a shell)
        self.deadlock: str = ""
        self.current: "Schedulable | None" = None     # the process in run_slice

    def alloc_pid(self) -> int:
        pid = self.next_pid
        self.next_pid += 1
        return pid

    def add(self, p: "Schedulable") -> None:
        self.procs[p.pid] = p
        self.order.append(p)
        self.runqueue.append(p)

    def enqueue(self, p: "Schedulable") -> None:
        if p not in self.runqueue:
            self.runqueue.append(p)

    def run(self) -> None:
        """Run until no process can run."""
        while self.runqueue:
            p = self.runqueue.popleft()
            if p.state != RUNNING:
                continue
            self.current = p
            try:
                p.run_slice()
            finally:
                self.current = None
        asleep = [p for p in self.order if p.state == SLEEPING]
        if asleep:
            self.deadlock = "; ".join(f"pid {p.pid} sleeps in {p.sleep_reason}" for p in asleep)
            for p in asleep:
                p.finish(p.ctx, "deadlock", f"no process can run: {self.deadlock}")
                p.exit.outcome = "deadlock"
                p.exit.detail = p.ctx.result.outcome_detail
                self.exit_process(p)

    def exit_process(self, p: "Schedulable") -> None:
        """do_exit(): close the files, release the mm, tell the parent."""
        if p.state in (ZOMBIE, DEAD):
            return
        res = p.ctx.result
        if not p.exit.outcome:
            p.exit.outcome = res.outcome
            p.exit.detail = res.outcome_detail
            if res.outcome in ("killed", "budget", "livelock"):
                p.exit.signal = 9           # ended by faultpath or the OOM killer: as SIGKILL
        p.files.close_all()
        p.release_mm()
        p.close()
        p.state = ZOMBIE
        for c in p.children_procs:
            c.parent = None                 # reparented to the reaper
        for o in p.observers:
            o.on_exit(p)
        p.notify_parent()

    def reap(self, p: "Schedulable") -> None:
        p.state = DEAD
        if p.parent is not None and p in p.parent.children_procs:
            p.parent.children_procs.remove(p)

    def forget(self, p: "Schedulable") -> None:
        """A process that no longer exists, not even as a zombie (forked after
        the snapshot being restored): its memory and CPU are released."""
        self.procs.pop(p.pid, None)
        for seq in (self.order, self.runqueue):
            if p in seq:
                seq.remove(p)
        p.release_mm()
        p.close()

    # ------------------------------------------------------------------ snapshots
    def snapshot(self) -> SystemSnapshot:
        """The whole machine, cheaply (every mm copy-on-write): come back to
        it any number of times with restore(), and every run from it is the
        same (the page allocator's frame numbers and statistics aside: no
        behaviour depends on them).  Tools' observers that have save_state()/restore_state()
        (trace recorders, injection counters) come back with it."""
        observers = {id(o): o for p in self.order for o in p.observers if hasattr(o, "save_state")}
        # Taken from a tool's callback, the running process is at the head of
        # the queue: restored, it runs first, on from where it was.
        runqueue = ([self.current] if self.current is not None else []) + list(self.runqueue)
        return SystemSnapshot(
            processes=[(p, p.snapshot()) for p in self.order], order=list(self.order),
            runqueue=runqueue, next_pid=self.next_pid, deadlock=self.deadlock,
            console=self.console.save_state(), kernel=self.kernel.save_state(),
            cache=self.kernel.phys.cache_snapshot(), observers=[(o, o.save_state()) for o in observers.values()])

    def restore(self, snap: SystemSnapshot) -> None:
        known = {id(p) for p, _ in snap.processes}
        for p, ps in snap.processes:
            p.restore(ps)
        for p in [p for p in self.order if id(p) not in known]:
            self.forget(p)
        self.procs = {p.pid: p for p in snap.order}
        self.order = list(snap.order)
        self.runqueue = deque(snap.runqueue)
        self.next_pid, self.deadlock = snap.next_pid, snap.deadlock
        self.console.restore_state(snap.console)
        self.kernel.phys.cache_restore(snap.cache)      # after the mms: evicts what nobody maps now
        self.kernel.restore_state(snap.kernel)
        for o, st in snap.observers:
            o.restore_state(st)

    def first(self) -> "Schedulable":
        if not self.order:
            raise EmulationError("no process")
        return self.order[0]
