"""One judged call reduced to what an emulated run and a native run can be
compared on: how it ended, its return value, the system calls it made (named
by what they targeted, never by address) and the oracle's verdict.

Output bytes are left out on purpose: two correct runs never hand out the
same random bytes, so agreement is judged by invariants, never by bytes.
"""
from __future__ import annotations

from dataclasses import dataclass

from vdso.abi import NR_getrandom, STATE_KEY, STATE_SIZE

WORD = 8
ZERO_RUN = 16             # compare's metric: bytes in runs of >= 16 zero bytes (2^-128 by chance)


@dataclass(frozen=True)
class CallSummary:
    label: str                      # "call 2 [parent]", "call 2 [handler]", "call 3 [child]", ...
    role: str                       # warm | swept | child | nested | after
    outcome: str                    # returned | livelock | signal | killed | budget | timeout | ...
    ret: int | None
    verdict: str                    # ok-fast | ok-reseed | ok-fallback | ok-efault | livelock | violation
    syscalls: tuple[str, ...]       # "getrandom(state.key, 32) = 32", ...
    invariants: tuple[str, ...] = ()   # the invariants this call broke
    livelock: str = ""              # user | kernel: where a livelock spun
    zero_words: int = 0             # aligned 8-byte zero words in the output (2^-64 each by chance)
    zero_run_bytes: int = 0         # output bytes in runs of >= ZERO_RUN zero bytes

    def line(self) -> str:
        """One line a user reads: `call 2 [parent] returned 64, ok-reseed: getrandom(state.key, 32) = 32`."""
        how = f"returned {self.ret}" if self.outcome == "returned" else self.outcome + (
            f" ({self.livelock} mode)" if self.livelock else "")
        sc = "; ".join(self.syscalls) if self.syscalls else "no syscalls"
        inv = f" [{', '.join(self.invariants)}]" if self.invariants else ""
        zw = f"; {self.zero_words} zero word(s) out" if self.zero_words else ""
        return f"{self.label} {how}, {self.verdict}{inv}: {sc}{zw}"


def target(addr: int, buffer: int, state: int) -> str:
    """Where a syscall wrote, in the call's own terms."""
    if addr == state + STATE_KEY:
        return "state.key"
    if state <= addr < state + STATE_SIZE:
        return f"state+{addr - state}"
    if addr == buffer:
        return "buffer"
    if buffer < addr < buffer + (1 << 20):
        return f"buffer+{addr - buffer}"
    return "elsewhere"


def describe_syscall(s, buffer: int, state: int) -> str:
    """A syscall (an emulator SyscallRecord or a native SyscallObs) as
    `getrandom(TARGET, LEN[, FLAGS]) = RET`; a call that never returned
    (its copy spun, or the process did not come back) shows `= ?`."""
    ret = getattr(s, "ret", None)
    if getattr(s, "outcome", "") == "livelock":
        ret = None
    shown = "?" if ret is None else str(ret)
    if s.nr == NR_getrandom:
        flags = s.args[2] & 0xFFFFFFFF
        fl = f", {flags:#x}" if flags else ""
        return f"getrandom({target(s.args[0], buffer, state)}, {s.args[1]}{fl}) = {shown}"
    return f"syscall {s.nr} = {shown}"


def zero_words(output: bytes) -> int:
    return sum(1 for o in range(0, len(output) - WORD + 1, WORD) if output[o:o + WORD] == bytes(WORD))


def zero_run_bytes(output: bytes, run: int = ZERO_RUN) -> int:
    """Output bytes lying in runs of >= run zero bytes."""
    if bytes(run) not in output:
        return 0
    total = 0
    i, n = 0, len(output)
    while i < n:
        if output[i]:
            i += 1
            continue
        j = i
        while j < n and not output[j]:
            j += 1
        if j - i >= run:
            total += j - i
        i = j
    return total


def summarize(obs, verdict) -> CallSummary:
    """A judged call (oracle.CallObs and its Verdict) as a CallSummary."""
    invariants = tuple(sorted({v.invariant for v in verdict.violations}))
    livelock = ""
    if obs.outcome == "livelock":
        livelock = "user" if obs.livelock_user else "kernel"
    return CallSummary(obs.label, obs.role, obs.outcome, obs.ret, verdict.cls,
                       tuple(describe_syscall(s, obs.buffer, obs.state) for s in obs.syscalls),
                       invariants, livelock, zero_words(obs.output), zero_run_bytes(obs.output))
