"""Single-stepping at architectural instruction granularity.

PTRACE_SINGLESTEP sets TF; the CPU raises #DB after each instruction, and
after each *iteration* of a rep-prefixed string instruction (Intel SDM vol. 3,
17.3.1.4: "repeated string instructions ... single-step trap after each
iteration"), where rip stays on the instruction until rcx runs out.  One
architectural instruction is therefore one trap, except that a rep string
op at rip0 keeps trapping at rip0 until it completes: those traps are
folded into one instruction.  (Unicorn's code hooks count iterations too;
the emulator counts architecturally on purpose, and so does this.)

A `syscall` instruction is one step as well (the trap comes after the
return to user mode); its arguments are read before and its result after.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import capstone

import emulator.twin.ptrace as pt
from emulator.twin.errors import TwinError
from emulator.twin.tracee import NR_getrandom, SyscallObs, Tracee

PLAIN, REP_STRING, SYSCALL = 0, 1, 2
_REP = ("rep", "repe", "repz", "repne", "repnz")
_STRING = ("movs", "stos", "lods", "cmps", "scas", "ins", "outs")


def classify(code: bytes, address: int) -> int:
    """PLAIN, REP_STRING or SYSCALL for the instruction at the start of code."""
    if code[:2] == b"\x0f\x05":
        return SYSCALL
    md = capstone.Cs(capstone.CS_ARCH_X86, capstone.CS_MODE_64)
    for insn in md.disasm(code, address, count=1):
        words = insn.mnemonic.split()
        if len(words) >= 2 and words[0] in _REP and words[-1].startswith(_STRING):
            return REP_STRING
        return PLAIN
    raise TwinError(f"cannot decode the instruction at {address:#x}: {code.hex()}")


@dataclass
class Stepper:
    """Steps one tracee an architectural instruction at a time.  The decode
    cache (rip -> kind) may be shared between steppers of forks of one process:
    their code is the same."""
    t: Tracee
    cache: dict[int, int] = field(default_factory=dict)
    raw_steps: int = 0

    def kind(self, rip: int) -> int:
        k = self.cache.get(rip)
        if k is None:
            k = self.cache[rip] = classify(self.t.read(rip, 16), rip)
        return k

    def step(self, regs: pt.UserRegs) -> tuple[pt.UserRegs, SyscallObs | None]:
        """Execute the instruction at regs.rip (the tracee's current registers);
        returns the registers after it and the syscall it made, if any."""
        rip0 = regs.rip
        k = self.kind(rip0)
        obs = None
        if k == SYSCALL:
            obs = SyscallObs(regs.rax, (regs.rdi, regs.rsi, regs.rdx, regs.r10, regs.r8, regs.r9), rip=rip0 + 2)
        while True:
            self.t.step()
            self.raw_steps += 1
            r = self.t.regs()
            if not (k == REP_STRING and r.rip == rip0):
                break
        if obs is not None:
            obs.ret = r.rax - (1 << 64) if r.rax >> 63 else r.rax
            if obs.nr == NR_getrandom and obs.ret > 0:
                obs.data_addr = obs.args[0]
                obs.data = self.t.read(obs.args[0], obs.ret)
        return r, obs
