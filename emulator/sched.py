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
RUNNING, SLEEPING, ZOMBIE, DEAD = "R", "S", "Z", "X"
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
            p.run_slice()
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

    def first(self) -> "Schedulable":
        if not self.order:
            raise EmulationError("no process")
        return self.order[0]
