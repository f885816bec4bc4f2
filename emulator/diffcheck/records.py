"""The records of a differential run: a sequence, the state a side ends in,
and the errors of this tool room."""
from __future__ import annotations

from dataclasses import dataclass, field

from emulator.errors import FaultpathError
from emulator.diffcheck.layout import DATA_PAGES, GPRS, MXCSR_DEFAULT


class DiffcheckError(FaultpathError):
    """A sequence could not be built or run (not a difference: a tool problem)."""


class NativeUnavailable(DiffcheckError):
    """The native half cannot run here (not x86-64 Linux, or an address is taken)."""


@dataclass
class Sequence:
    """One instruction sequence and everything it starts with.

    `code` runs at CODE_ADDR and ends with `jmp qword ptr [rip]` followed by
    an 8-byte slot at `exit_slot` (an offset in `code`): each side writes its
    own exit address there (the native exit stub, the emulator's return
    sentinel), so every instruction of the sequence is the same bytes at the
    same address on both sides."""
    kind: str                       # flags | forms | windows | privileged
    index: int
    seed: int
    lines: list[str]                # the instructions, for reports
    code: bytes
    exit_slot: int
    regs: dict[str, int]            # GPRS + rflags, fs_base, gs_base
    xmm: list[int] = field(default_factory=lambda: [0] * 16)
    mm: list[int] = field(default_factory=lambda: [0] * 8)
    mxcsr: int = MXCSR_DEFAULT
    pages: list[str] = field(default_factory=lambda: ["present"] * DATA_PAGES)
    content: list[bytes | None] = field(default_factory=lambda: [None] * DATA_PAGES)
    note: str = ""                  # what the sequence is about (access form, placement)
    tags: dict[str, str] = field(default_factory=dict)   # producer, access, consumer, class hints
    # Arithmetic flags the CPU defines before the instruction at each address
    # (and at the exit jump): eflags.py.  Undefined flags are not compared.
    flag_masks: dict[int, int] = field(default_factory=dict)

    def reproduce(self) -> str:
        return f"faultpath diffcheck --seed {self.seed} --kind {self.kind} --only {self.index}"

    def as_dict(self) -> dict:
        return {"kind": self.kind, "index": self.index, "seed": self.seed, "lines": self.lines,
                "code": self.code.hex(), "regs": {k: hex(v) for k, v in self.regs.items()},
                "xmm": [hex(x) for x in self.xmm], "mxcsr": hex(self.mxcsr), "pages": self.pages,
                "note": self.note, "tags": self.tags, "reproduce": self.reproduce()}


@dataclass(frozen=True)
class Fault:
    """A fault the sequence took and that was resolved (the instruction restarted)."""
    rip: int
    address: int
    access: str | None          # read | write | exec; None where not knowable
    error_code: int | None      # x86 page-fault error code (P W U ... bits)

    def text(self) -> str:
        ec = f" ec={self.error_code:#x}" if self.error_code is not None else ""
        return f"{self.access or '?'}@{self.address:#x} rip={self.rip:#x}{ec}"


@dataclass(frozen=True)
class Signal:
    """How a sequence ended when it did not reach its end."""
    name: str                   # SIGSEGV, SIGILL, ... (or "livelock", "killed", "budget" for the emulator)
    si_code: int | None = None  # None: the side does not say
    address: int | None = None  # si_addr
    rip: int | None = None
    trapno: int | None = None   # native: the x86 vector (13 #GP, 14 #PF, 6 #UD...)
    error_code: int | None = None

    def text(self) -> str:
        s = self.name
        if self.si_code is not None:
            s += f"/{si_code_name(self.name, self.si_code)}"
        if self.address is not None:
            s += f" addr={self.address:#x}"
        if self.rip is not None:
            s += f" rip={self.rip:#x}"
        if self.trapno is not None:
            s += f" trap={self.trapno}"
        return s


@dataclass
class RunState:
    """Where one side ended: the architectural state and what happened on the way."""
    gprs: dict[str, int]
    rflags: int
    xmm: list[int]
    mxcsr: int
    pages: list[bytes]
    faults: list[Fault]
    signal: Signal | None = None        # None: the sequence reached its end
    error: str = ""                     # the side could not run it (tool or emulator error)

    def as_dict(self) -> dict:
        return {"gprs": {r: hex(self.gprs[r]) for r in GPRS if r in self.gprs}, "rflags": hex(self.rflags),
                "xmm": [hex(x) for x in self.xmm], "mxcsr": hex(self.mxcsr),
                "faults": [f.text() for f in self.faults],
                "signal": self.signal.text() if self.signal else None, "error": self.error}


# si_code values of the signals a user-mode CPU exception raises
# (include/uapi/asm-generic/siginfo.h); facts, for readable reports.
_SI_CODES = {
    "SIGSEGV": {1: "SEGV_MAPERR", 2: "SEGV_ACCERR", 3: "SEGV_BNDERR", 4: "SEGV_PKUERR"},
    "SIGBUS": {1: "BUS_ADRALN", 2: "BUS_ADRERR", 3: "BUS_OBJERR"},
    "SIGILL": {1: "ILL_ILLOPC", 2: "ILL_ILLOPN", 3: "ILL_ILLADR", 4: "ILL_ILLTRP", 5: "ILL_PRVOPC",
               6: "ILL_PRVREG", 7: "ILL_COPROC", 8: "ILL_BADSTK"},
    "SIGFPE": {1: "FPE_INTDIV", 2: "FPE_INTOVF", 3: "FPE_FLTDIV", 4: "FPE_FLTOVF", 5: "FPE_FLTUND",
               6: "FPE_FLTRES", 7: "FPE_FLTINV", 8: "FPE_FLTSUB"},
    "SIGTRAP": {1: "TRAP_BRKPT", 2: "TRAP_TRACE", 3: "TRAP_BRANCH", 4: "TRAP_HWBKPT"},
}
SI_KERNEL = 0x80


def si_code_name(sig: str, code: int) -> str:
    if code == SI_KERNEL:
        return "SI_KERNEL"
    return _SI_CODES.get(sig, {}).get(code, str(code))
