"""Records of a call: what happened (faults, syscalls, the call's result) and
the run loop's own state for one call (CallContext, injections, a pending
fault).  Plain dataclasses; JSON goes through as_dict()."""
from __future__ import annotations

from dataclasses import dataclass, field, replace

from emulator.traps import SignalInfo

# x86 page-fault error code bits (arch/x86/include/asm/trap_pf.h)
X86_PF_PROT = 1 << 0
X86_PF_WRITE = 1 << 1
X86_PF_USER = 1 << 2
X86_PF_RSVD = 1 << 3
X86_PF_INSTR = 1 << 4

OUTCOMES = ("returned", "killed", "signal", "livelock", "budget", "exit")


@dataclass
class FaultRecord:
    index: int                # instruction index within the call
    rip: int
    address: int
    access: str               # read | write | exec
    error_code: int
    user: bool                # False: a kernel-mode access (copy_to_user in a syscall)
    insn: str = ""            # instruction text at rip (user faults)
    insn_bytes: bytes = b""
    vma: str = ""             # "start-end flags" or "" when no VMA
    vm_flags: str = ""
    pte: str = ""             # PTE state before handling
    bits: list[str] = field(default_factory=list)   # VM_FAULT_* names
    decision: str = ""        # mapped, zero-page, cow, reuse, swap-in, skip, retry, retry-oom, sigsegv, sigbus, oom-kill, efault, livelock
    new_rip: int | None = None
    skip_len: int | None = None
    fetched: int | None = None    # bytes insn_fetch_from_user got (skip only)
    stages: list[str] = field(default_factory=list)
    cycles: float = 0.0
    restored: int = 0         # bytes of a split store rolled back for a precise exception
    repeats: int = 1          # identical refaults folded into this record (a spin)

    def as_dict(self) -> dict:
        return {
            "index": self.index, "rip": hex(self.rip), "address": hex(self.address), "access": self.access,
            "error_code": self.error_code, "user": self.user, "insn": self.insn,
            "insn_bytes": self.insn_bytes.hex(), "vma": self.vma, "vm_flags": self.vm_flags, "pte": self.pte,
            "bits": self.bits, "decision": self.decision,
            "new_rip": hex(self.new_rip) if self.new_rip is not None else None,
            "skip_len": self.skip_len, "fetched": self.fetched, "stages": self.stages,
            "cycles": round(self.cycles, 1), "restored": self.restored, "repeats": self.repeats,
        }

    def line(self) -> str:
        where = "user" if self.user else "kernel"
        s = (f"fault #{self.index} rip={self.rip:#x} [{self.insn or '?'}] addr={self.address:#x} "
             f"{self.access}/{where} vma[{self.vm_flags or '-'}] -> {self.decision}")
        if self.skip_len is not None:
            s += f" len={self.skip_len}"
        if self.new_rip is not None and self.new_rip != self.rip:
            s += f" new_rip={self.new_rip:#x}"
        if self.repeats > 1:
            s += f" (x{self.repeats})"
        return s


def append_fault(faults: list[FaultRecord], rec: FaultRecord) -> None:
    """Append, folding an identical refault of the previous record into it, so a
    bounded spin of a thousand refaults is one record with repeats=1000."""
    if faults:
        last = faults[-1]
        if (last.rip, last.address, last.user, last.access) == (rec.rip, rec.address, rec.user, rec.access) \
                and last.decision in ("retry", "retry-oom") and rec.decision in ("retry", "retry-oom", "livelock"):
            last.repeats += 1
            last.decision = rec.decision
            last.cycles += rec.cycles
            return
    faults.append(rec)


@dataclass
class SyscallRecord:
    index: int
    rip: int
    nr: int
    name: str
    args: list[int]
    ret: int = 0
    data: bytes = b""          # bytes the kernel side wrote into guest memory
    data_addr: int = 0
    generated: bytes = b""     # for getrandom: everything the entropy source produced
    cycles: float = 0.0
    outcome: str = ""          # "" normally; "livelock" when its copy_to_user spun

    def as_dict(self) -> dict:
        return {"index": self.index, "rip": hex(self.rip), "nr": self.nr, "name": self.name,
                "args": [hex(a) for a in self.args], "ret": self.ret, "data": self.data.hex(),
                "data_addr": hex(self.data_addr), "cycles": round(self.cycles, 1), "outcome": self.outcome}


@dataclass
class CallResult:
    size: int
    ret: int | None = None
    output: bytes = b""
    instructions: int = 0
    cycles: float = 0.0
    faults: list[FaultRecord] = field(default_factory=list)
    syscalls: list[SyscallRecord] = field(default_factory=list)
    outcome: str = "returned"
    outcome_detail: str = ""
    injections: list[str] = field(default_factory=list)
    children: list["CallResult"] = field(default_factory=list)
    process: str = "parent"
    signal: "SignalInfo | None" = None     # the signal the call ended with (outcome "signal")

    def as_dict(self) -> dict:
        return {
            "size": self.size, "ret": self.ret, "output": self.output.hex(),
            "instructions": self.instructions, "cycles": round(self.cycles, 1),
            "faults": [f.as_dict() for f in self.faults],
            "syscalls": [s.as_dict() for s in self.syscalls],
            "outcome": self.outcome, "outcome_detail": self.outcome_detail,
            "injections": self.injections, "process": self.process,
            "children": [c.as_dict() for c in self.children],
            "signal": self.signal.as_dict() if self.signal is not None else None,
        }


DEFAULT_BUDGET = 50_000_000     # instructions per call before the outcome is "budget"
DEFAULT_LIVELOCK = 1000         # faults at one instruction without progress before "livelock"


@dataclass
class PendingFault:
    """An access the CPU could not complete, as Unicorn reported it."""
    access: str            # read | write | exec
    address: int
    size: int
    restored: int = 0      # bytes of a split store rolled back at the stop (precise exception)


@dataclass
class Injection:
    at: int          # instruction index within the call
    kind: str        # drop, oom, oom-off, oom:K, fork, reseed, not-ready, ready

    def __str__(self) -> str:
        return f"{self.kind}@{self.at}"


@dataclass
class CallContext:
    """Per-call state of the run loop."""
    result: CallResult
    rip: int
    budget: int
    injections: list[Injection] = field(default_factory=list)
    index: int = 0               # architectural instructions retired so far
    cycles: float = 0.0
    rep_open: int | None = None  # address of a rep-string insn whose iterations are in flight
    last_fault_key: tuple | None = None
    refaults: int = 0
    done: bool = False
    stop_on_fault: bool = False  # stepper: stop *before* handling a fault
    pending_fault: tuple | None = None   # (PendingFault, rip) when stopped at a fault
    stop_requested: bool = False  # a hook (breakpoint, Ctrl-C) asks the run loop to return
    cycle_state: object | None = None   # the cycle model's state between runs (emulator/cycles/sequence.py)

    def copy(self) -> "CallContext":
        """A copy that shares nothing mutable with this one, and cheaper than
        a deepcopy: records already written never change, except the last
        fault record, which an identical refault folds into (append_fault)."""
        r = self.result
        faults = list(r.faults)
        if faults:
            faults[-1] = replace(faults[-1], bits=list(faults[-1].bits), stages=list(faults[-1].stages))
        res = replace(r, faults=faults, syscalls=list(r.syscalls), children=list(r.children),
                      injections=list(r.injections))
        cyc = replace(self.cycle_state) if self.cycle_state is not None else None
        return replace(self, result=res, injections=list(self.injections), cycle_state=cyc)
