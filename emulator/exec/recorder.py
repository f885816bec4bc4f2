"""What an emulated run did, as strace would have printed it: one event list
per process (emulator/exec/sysfmt.py's notation), normalised with the
native side's rules (emulator/exec/strace.py)."""
from __future__ import annotations

from typing import TYPE_CHECKING

from emulator.exec.strace import Event, Trace, normalise
from emulator.exec.sysfmt import exit_event, signal_event, syscall_event

if TYPE_CHECKING:
    from emulator.process import Process


class TraceRecorder:
    """An observer of every process of a run (emulator/process.py's protocol)."""

    def __init__(self):
        self.raw: dict[int, list[Event]] = {}
        self.ignored: list[tuple[int, str]] = []       # (pid, signal) discarded when generated
        self.refusals: list[tuple[int, str, str]] = []  # (pid, syscall, why)

    def attach(self, p: "Process") -> None:
        """The first process: it begins, as under strace, with its execve."""
        p.observers.append(self)
        self.raw[p.pid] = [Event("syscall", "execve", "PROG, ARGV, ENV", "0")]

    def on_syscall(self, p: "Process", rec) -> None:
        self.raw.setdefault(p.pid, []).append(syscall_event(p, rec))

    def on_signal(self, p: "Process", k, what: str) -> None:
        if what == "ignored":
            # Discarded when generated (sig_ignored): never delivered, so no
            # line; strace would show it only because ptrace makes the
            # kernel queue even ignored signals for the tracer.
            self.ignored.append((p.pid, signal_event(p, k).name))
            return
        self.raw.setdefault(p.pid, []).append(signal_event(p, k))

    def on_exit(self, p: "Process") -> None:
        self.raw.setdefault(p.pid, []).append(exit_event(p))

    def on_fork(self, parent: "Process", child: "Process") -> None:
        self.raw.setdefault(child.pid, [])

    def on_refusal(self, p: "Process", rec, why: str) -> None:
        self.refusals.append((p.pid, rec.name, why))

    # System.snapshot/restore: the record comes back with the machine.
    def save_state(self) -> tuple:
        return ({pid: len(ev) for pid, ev in self.raw.items()}, len(self.ignored), len(self.refusals))

    def restore_state(self, st: tuple) -> None:
        lengths, nignored, nrefusals = st
        self.raw = {pid: ev[:lengths[pid]] for pid, ev in self.raw.items() if pid in lengths}
        del self.ignored[nignored:], self.refusals[nrefusals:]

    def trace(self, stdout: str = "", stderr: str = "", returncode: int = 0) -> Trace:
        return normalise(self.raw, stdout, stderr, returncode)
