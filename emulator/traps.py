"""CPU exceptions and the signals Linux delivers for them (arch/x86/kernel/traps.c).

The emulated CPU runs user code at CPL 3 (emulator/cpl.py), so privileged
instructions raise #GP and invalid ones #UD inside the CPU, as on hardware;
Unicorn reports the vector through UC_HOOK_INTR.  This table is what the
kernel makes of each vector for a user-mode task: the signal, its si_code,
and what si_addr holds.  Page faults are not here: emulator/fault.py decides
those (SEGV_MAPERR / SEGV_ACCERR / BUS_ADRERR).
"""
from __future__ import annotations

from dataclasses import dataclass

# Vectors (Intel SDM vol. 3, table 6-1).
X86_TRAP_DE, X86_TRAP_DB, X86_TRAP_NMI, X86_TRAP_BP, X86_TRAP_OF = 0, 1, 2, 3, 4
X86_TRAP_BR, X86_TRAP_UD, X86_TRAP_NM, X86_TRAP_DF = 5, 6, 7, 8
X86_TRAP_TS, X86_TRAP_NP, X86_TRAP_SS, X86_TRAP_GP, X86_TRAP_PF = 10, 11, 12, 13, 14
X86_TRAP_MF, X86_TRAP_AC, X86_TRAP_MC, X86_TRAP_XF = 16, 17, 18, 19

SIGNALS = {"SIGILL": 4, "SIGTRAP": 5, "SIGBUS": 7, "SIGFPE": 8, "SIGSEGV": 11}

# si_code values (include/uapi/asm-generic/siginfo.h)
SI_KERNEL = 0x80
ILL_ILLOPN = 2
FPE_INTDIV = 1
FPE_INTOVF = 2
SEGV_MAPERR = 1
SEGV_ACCERR = 2
SEGV_PKUERR = 4
BUS_ADRALN = 1
BUS_ADRERR = 2
TRAP_BRKPT = 1

SI_CODE_NAMES = {
    ("SIGSEGV", SEGV_MAPERR): "SEGV_MAPERR", ("SIGSEGV", SEGV_ACCERR): "SEGV_ACCERR",
    ("SIGSEGV", SI_KERNEL): "SI_KERNEL", ("SIGBUS", BUS_ADRERR): "BUS_ADRERR",
    ("SIGBUS", BUS_ADRALN): "BUS_ADRALN", ("SIGBUS", SI_KERNEL): "SI_KERNEL",
    ("SIGILL", ILL_ILLOPN): "ILL_ILLOPN", ("SIGFPE", FPE_INTDIV): "FPE_INTDIV",
    ("SIGFPE", FPE_INTOVF): "FPE_INTOVF", ("SIGTRAP", SI_KERNEL): "SI_KERNEL",
    ("SIGTRAP", TRAP_BRKPT): "TRAP_BRKPT",
}


@dataclass
class SignalInfo:
    """The signal a call ended with, as the process's handler would see it."""
    signal: str            # SIGSEGV, SIGBUS, SIGILL, SIGFPE, SIGTRAP
    si_code: int
    si_addr: int
    rip: int               # where the task stopped (the faulting instruction, or past int3)
    trapno: int | None = None    # the x86 vector, when a CPU exception caused it
    why: str = ""

    @property
    def signo(self) -> int:
        return SIGNALS[self.signal]

    @property
    def code_name(self) -> str:
        return SI_CODE_NAMES.get((self.signal, self.si_code), str(self.si_code))

    def as_dict(self) -> dict:
        return {"signal": self.signal, "signo": self.signo, "si_code": self.si_code,
                "si_code_name": self.code_name, "si_addr": hex(self.si_addr), "rip": hex(self.rip),
                "trapno": self.trapno, "why": self.why}

    def line(self) -> str:
        s = f"{self.signal} ({self.code_name}) at rip={self.rip:#x}"
        if self.si_addr:
            s += f" addr={self.si_addr:#x}"
        return s + (f": {self.why}" if self.why else "")


def signal_for_trap(trapno: int, rip: int, why: str = "") -> SignalInfo:
    """What a user-mode task gets for a CPU exception (do_error_trap and friends).

    #GP from user mode is SIGSEGV with si_code SI_KERNEL and si_addr 0 (the
    kernel cannot say which address); #UD is SIGILL/ILL_ILLOPN at the
    instruction; #DE is SIGFPE/FPE_INTDIV; int3 is SIGTRAP/SI_KERNEL with rip
    past the breakpoint; #SS and #NP give SIGBUS as #GP does SIGSEGV; #AC is
    SIGBUS/BUS_ADRALN."""
    if trapno == X86_TRAP_DE:
        return SignalInfo("SIGFPE", FPE_INTDIV, rip, rip, trapno, why or "divide error")
    if trapno == X86_TRAP_BP:
        return SignalInfo("SIGTRAP", SI_KERNEL, 0, rip, trapno, why or "int3")
    if trapno == X86_TRAP_DB:
        return SignalInfo("SIGTRAP", TRAP_BRKPT, rip, rip, trapno, why or "debug")
    if trapno == X86_TRAP_OF:
        return SignalInfo("SIGSEGV", SI_KERNEL, 0, rip, trapno, why or "overflow")
    if trapno in (X86_TRAP_UD, X86_TRAP_BR):
        return SignalInfo("SIGILL", ILL_ILLOPN, rip, rip, X86_TRAP_UD, why or "invalid opcode")
    if trapno in (X86_TRAP_NP, X86_TRAP_SS):
        return SignalInfo("SIGBUS", SI_KERNEL, 0, rip, trapno, why or "segment not present")
    if trapno == X86_TRAP_AC:
        return SignalInfo("SIGBUS", BUS_ADRALN, 0, rip, trapno, why or "alignment check")
    if trapno in (X86_TRAP_MF, X86_TRAP_XF):
        return SignalInfo("SIGFPE", 0, rip, rip, trapno, why or "floating-point exception")
    return SignalInfo("SIGSEGV", SI_KERNEL, 0, rip, X86_TRAP_GP, why or "general protection")
