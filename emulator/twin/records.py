"""What the native twin observed: plain records, no behaviour beyond small
derived views.  Field names follow the emulator's CallObs / SyscallRecord
where they mean the same thing, so an adapter is a field copy."""
from __future__ import annotations

from dataclasses import dataclass, field

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
        out = self.output
        return sum(1 for o in range(0, len(out) - 7, 8) if out[o:o + 8] == bytes(8))

    def zero_run_bytes(self, run: int = 16) -> int:
        """Output bytes lying in runs of >= run zero bytes (2^-128 by chance at 16)."""
        total = 0
        i, out, n = 0, self.output, len(self.output)
        while i < n:
            if out[i]:
                i += 1
                continue
            j = i
            while j < n and not out[j]:
                j += 1
            if j - i >= run:
                total += j - i
            i = j
        return total


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
