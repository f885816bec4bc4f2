"""What the native twin observed: plain records, no behaviour beyond small
derived views.  Field names follow the emulator's CallObs / SyscallRecord
where they mean the same thing, so an adapter is a field copy."""
from __future__ import annotations

from dataclasses import dataclass, field

import emulator.sweep.summary as summary
from emulator.twin.tracee import SyscallObs

NR_getrandom = 318


@dataclass
class NativeCall:
    """One __vdso_getrandom call in one process."""
    label: str                    # "call 2 [parent]", "call 2 [child]", "call 2 [handler]", ...
    role: str                     # warm | swept | child | nested | after
    size: int
    outcome: str                  # returned | livelock | signal | timeout | killed | exited | not-run
    ret: int | None = None
    signal: int = 0
    output: bytes = b""           # the buffer's first min(ret, size) bytes after a return
    buffer: int = 0
    state: int = 0
    state_before: bytes | None = None   # the state's 144 bytes when the call (or the resumed part) began
    state_after: bytes | None = None
    syscalls: list[SyscallObs] = field(default_factory=list)
    instructions: int | None = None     # architectural count, when the call was single-stepped whole
    rip: int = 0                  # livelock: the refaulting user instruction (0: in the kernel)
    state_backed: bool | None = None    # nested calls: did the state have pages of its own (not absent,
                                        # not the zero page) when it began (the emulator's must_fallback test)
    detail: str = ""

    def getrandom_calls(self) -> list[SyscallObs]:
        return [s for s in self.syscalls if s.nr == NR_getrandom]

    def path(self) -> str:
        """Which way the call went, from its syscalls alone: fast (none),
        reseed (a 32-byte getrandom into the state's key), fallback (a
        getrandom into the caller's buffer); "reseed+fallback" when both."""
        kinds = []
        for s in self.getrandom_calls():
            if s.args[0] == self.state + 96 and s.args[1] == 32:
                kinds.append("reseed")
            else:
                kinds.append("fallback")
        if not kinds:
            return "fast"
        return "+".join(dict.fromkeys(kinds))

    def zero_words(self) -> int:
        """8-byte zero words in the output at 8-aligned offsets (2^-64 each by chance)."""
        return summary.zero_words(self.output)

    def zero_run_bytes(self, run: int = summary.ZERO_RUN) -> int:
        """Output bytes lying in runs of >= run zero bytes (2^-128 by chance at 16)."""
        return summary.zero_run_bytes(self.output, run)


@dataclass
class EventRecord:
    """What applying the event did, as verified natively."""
    name: str                     # drop | reseed | fork | reenter | oom | oom:K | not-ready | none | drop+reenter
    applied: bool
    detail: str = ""              # e.g. "state page not present, reads zero", "generation 60 -> 61"
    state: bytes | None = None    # drop: the state read back after it; fork: the child's state at the fork


@dataclass
class NativeRun:
    """One (boundary, event) run: the swept call interrupted at boundary i."""
    i: int
    event: str
    rip: int                      # where the swept call stood at i (0: after the return)
    events: list[EventRecord] = field(default_factory=list)
    calls: list[NativeCall] = field(default_factory=list)   # swept/child/nested first, then after-calls
    state_at_i: bytes | None = None   # the state's bytes at boundary i, before the event
    buffer_at_i: bytes | None = None  # the swept call's buffer at i (what a fork child inherits)
    generation_before: int = 0    # vdso_rng_data.generation at i, before the event
    generation_after: int = 0     # at the end of the run
    seconds: float = 0.0
    skipped: str = ""             # non-empty: the event has no native form here; calls is empty
    rsp_at_i: int = 0             # the swept call's rsp at i (a handler's frame goes below it)
    failed_charges: int | None = None   # oom events: page charges that failed under the run's memory limit
    warm: list[NativeCall] = field(default_factory=list)   # the warm calls of the process this run forked from
                                  # (each walker makes its own: a fresh process's history, a fresh key)
    pre: dict | None = None       # Twin(memory=True): watched pages at the swept call's entry (memory.py)
    memory: dict = field(default_factory=dict)   # process name -> its watched pages after its swept call

    def call(self, label_part: str) -> NativeCall | None:
        return next((c for c in self.calls if label_part in c.label), None)


@dataclass
class Baseline:
    """The swept call run undisturbed, single-stepped whole."""
    n: int                        # architectural instructions from the function's entry to its return
    raw_steps: int                # PTRACE_SINGLESTEP traps (a rep string op traps once per iteration)
    rips: list[int]               # rip at each boundary 0..n-1 (boundary n is after the return)
    call: NativeCall
    warm: list[NativeCall]
    generation: int
