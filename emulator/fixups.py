"""Putting right what Unicorn 2.1.4 computes wrong, once the instruction has run.

A few instructions run to completion in Unicorn but leave a state this CPU
would not (all measured against this CPU by `faultpath diffcheck`):

  cmpxchg32   32-bit cmpxchg: QEMU writes EAX and the destination whatever
              the outcome, each zero-extended; this CPU writes EAX only on a
              failure and the destination only on a success (measured: RAX's
              upper half survives a success, a register destination's a
              failure).
  neg_flags   `lock neg m`: QEMU computes the flags from the old value
              (its cmpxchg loop leaves it in T0): SF and PF are those of the
              operand, not of the result.  CF, ZF, AF, OF happen to agree.
  x87_store   fst/fstp/fist/fistp/fisttp/fbstp with ST(0) empty: stack
              underflow, and with IM masked the CPU stores the indefinite
              value of the destination format and sets IE and SF (C1 = 0)
              (SDM vol. 1, 8.5.1.1); QEMU stores the empty register's bits.
  x87_env     fnstenv/fnsave: this CPU writes 0xffff in the reserved upper
              halves of the control, status, tag and data-selector dwords
              and the last opcode (FOP) beside FCS; QEMU writes 0 and no FOP.
  fxsave      fxsave/xsave legacy area: this CPU (AMD) writes FOP/FIP/FDP
              only while an x87 exception is pending (FSW.ES), zeros
              otherwise, its own MXCSR_MASK and zeros in the 6 pad bytes of
              each ST slot; QEMU writes FIP, leaves FOP and the pads alone,
              and a mask of 0xffff.
  simd_fp     SSE floating-point instructions: the MXCSR exception flags
              this CPU raises for the same operands (emulator/simd_fp.py).

The hook on such an instruction (installed at first sight, emulator/
instrument.py) calls `start` before it runs: what must be known of the state
before (the flags, ST(0)'s tag, the effective address, the native result) is
kept as the task's pending fixup.  The instruction completes when the next
one is reached: the hook there calls `finish`.  When the run stops right
there first (an instruction budget, an exit, the end of a block at a page
end), the run loop calls `settle` with the stop's rip.  If the instruction
faults, the run stops at it, not at the next one, and the fixup is dropped;
the hook records it afresh when the instruction is restarted.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Protocol

from unicorn import x86_const as X

from emulator import simd_fp
from emulator.errors import UnfaithfulInstruction
from emulator.instrument import Fixup, effective_address, probe_insn
from emulator.records import PendingFault


class Task(Protocol):
    """What this module uses of emulator/task.py's Task, which calls it (a
    protocol, so that the two modules' imports point one way)."""
    uc: Any
    mmu: Any
    fault: PendingFault | None
    fault_cpu: Any
    saved_flags: dict[int, int]
    pending_fixup: Any

    def read(self, addr: int, n: int) -> bytes: ...

    def read_reg_by_name(self, name: str) -> int: ...


PF, SF = 1 << 2, 1 << 7
FSW_IE, FSW_SF, FSW_C1, FSW_ES = 1 << 0, 1 << 6, 1 << 9, 1 << 7
FCW_IM = 1 << 0
_X87_PREFIXES = {0x26, 0x2E, 0x36, 0x3E, 0x64, 0x65, 0x66, 0x67, 0xF0, 0xF2, 0xF3, 0x9B}

# Indefinite values (SDM vol. 1, table 4-3 and 8.2.2): real formats store
# the QNaN "real indefinite", integer formats the integer indefinite, fbstp
# the packed-BCD indefinite (the same 10 bytes as the 80-bit real one).
_REAL_INDEFINITE = {4: 0xFFC0_0000, 8: 0xFFF8_0000_0000_0000, 10: 0xFFFF_C000_0000_0000_0000}


def indefinite(mnemonic: str, size: int) -> bytes:
    """The value a masked stack underflow stores (size: the destination's bytes)."""
    if mnemonic in ("fist", "fistp", "fisttp"):
        return (1 << (8 * size - 1)).to_bytes(size, "little")
    return _REAL_INDEFINITE[size].to_bytes(size, "little")


@dataclass
class Pending:
    """A fixup recorded as its instruction started."""
    fixup: Fixup
    ea: int = 0
    rflags: int = 0
    values: dict = field(default_factory=dict)


# RFLAGS written by a code hook do not always stick: when the translator's
# lazy-flags op is still dirty at the hooked instruction (lock neg leaves
# CC_OP_SUB dirty), the code after the hook stores that op over the
# CC_OP_EFLAGS the write set, and the flags are recomputed from the old
# operands (measured).  So a flag fixup stops emulation at the next
# instruction and writes the flags between two runs.
STOP_FIRST = {"neg_flags"}


def _reg(uc, name: str) -> int:
    return uc.reg_read(getattr(X, f"UC_X86_REG_{name}"))


def start(task: "Task", uc, fx: Fixup) -> None:
    """The hook on the instruction, before it runs: keep what finishing needs."""
    task.pending_fixup = None
    p = Pending(fx)
    if isinstance(fx.mem, tuple):
        p.ea = effective_address(task.read_reg_by_name, fx.mem)
    k = fx.kind
    area = _whole_area(uc, fx, p.ea)
    if area is not None and _fault_first(task, uc, *area):
        return
    if k == "whole_write":
        return
    if k == "cmpxchg32":
        rax = _reg(uc, "RAX")
        if isinstance(fx.mem, str):
            dest = task.read_reg_by_name(_FULL_GPR[fx.mem])
            p.values = {"reg": _FULL_GPR[fx.mem], "dest": dest}
            old = dest & 0xFFFF_FFFF
        else:
            old = int.from_bytes(task.read(p.ea, 4), "little")
        p.values.update(rax=rax, equal=(rax & 0xFFFF_FFFF) == old)
    elif k == "x87_store":
        top = (_reg(uc, "FPSW") >> 11) & 7
        if (_reg(uc, "FPTAG") >> (2 * top)) & 3 != 3 or not _reg(uc, "FPCW") & FCW_IM:
            return                  # ST(0) holds a value (or #IS unmasked: not modelled): Unicorn is right
    elif k in ("x87_env", "fxsave"):
        fsw = _reg(uc, "FPSW")
        fip = _reg(uc, "FIP")
        p.values = {"fop": _fop(task, fip), "es": bool(fsw & FSW_ES), "fip": fip, "fcs": _reg(uc, "FCS"),
                    "fdp": _reg(uc, "FDP"), "fds": _reg(uc, "FDS"),
                    # xsave: RFBM = EDX:EAX & XCR0, and the emulated XCR0 is x87|SSE
                    "rfbm": _reg(uc, "EAX") & 3 if fx.mnemonic.startswith("xsave") else 3}
    elif k == "simd_fp":
        out = _simd_run(task, uc, fx, p.ea)
        if out is None:
            return
        p.values["flags"], p.values["result"], p.values["probe"] = out
    task.pending_fixup = p


def _whole_area(uc, fx: Fixup, ea: int) -> tuple[int, int] | None:
    """The bytes this CPU checks for writing before a store that Unicorn does
    piecemeal (and not all of): maskmovq/maskmovdqu write only the bytes their
    mask selects, fxsave not its last 96 reserved bytes, yet this CPU faults
    on any page of the whole operand (measured: a zero mask, or a page holding
    only fxsave's reserved tail, still takes the write fault)."""
    if fx.kind == "whole_write":                    # maskmov*: seg:[rDI], resolved in start()
        return ea, fx.size
    if fx.kind == "fxsave":
        # xsave: the legacy area and the XSAVE header; the emulated CPU's XCR0
        # holds x87 and SSE only (Unicorn runs no AVX), so nothing lies beyond.
        return ea, 512 if fx.mnemonic.startswith("fxsave") else 576
    return None


def _fault_first(task: "Task", uc, lo: int, size: int) -> bool:
    """Stop before the instruction with a write fault when a page of
    [lo, lo+size) cannot be written (the run loop turns task.fault into the
    page fault, at the address this CPU reports: emulator/fault.py)."""
    va = lo & ~0xFFF
    while va < lo + size:
        if not task.mmu.allows(va, "write"):
            rip = _reg(uc, "RIP")
            task.fault = PendingFault("write", max(lo, va), size)
            task.fault_cpu = (rip, task.saved_flags.get(rip, _reg(uc, "RFLAGS")), uc.context_save())
            uc.emu_stop()
            return True
        va += 0x1000
    return False


def finish(task: "Task", uc, address: int) -> bool:
    """The next instruction is reached: the pending instruction completed.
    True when emulation must stop here first (see STOP_FIRST)."""
    p = task.pending_fixup
    if p is None or p.fixup.next != address:
        task.pending_fixup = None
        return False
    if p.fixup.kind in STOP_FIRST:
        uc.emu_stop()           # settle() applies it, outside emulation
        return True
    task.pending_fixup = None
    _apply(task, uc, p)
    return False


def settle(task: "Task", stop_rip: int) -> None:
    """The run stopped: a pending fixup whose instruction completed (the stop
    is at the next instruction) is applied now, any other is dropped."""
    p = task.pending_fixup
    task.pending_fixup = None
    if p is not None and p.fixup.next == stop_rip:
        _apply(task, task.uc, p)


def _apply(task: "Task", uc, p: Pending) -> None:
    fx = p.fixup
    k = fx.kind
    if k == "cmpxchg32":
        v = p.values
        if v["equal"]:
            uc.reg_write(X.UC_X86_REG_RAX, v["rax"])            # a success leaves RAX alone
        elif "reg" in v:
            uc.reg_write(getattr(X, f"UC_X86_REG_{v['reg'].upper()}"), v["dest"])   # a failure, the destination
    elif k == "neg_flags":
        res = int.from_bytes(uc.mem_read(p.ea, fx.size), "little")
        flags = (SF if res >> (8 * fx.size - 1) else 0) | (0 if bin(res & 0xFF).count("1") & 1 else PF)
        uc.reg_write(X.UC_X86_REG_RFLAGS, (_reg(uc, "RFLAGS") & ~(SF | PF)) | flags)
    elif k == "x87_store":
        uc.mem_write(p.ea, indefinite(fx.mnemonic, fx.size))
        fsw = _reg(uc, "FPSW")
        uc.reg_write(X.UC_X86_REG_FPSW, (fsw & ~FSW_C1) | FSW_IE | FSW_SF)
    elif k == "x87_env":
        _fix_env(uc, p)
    elif k == "fxsave":
        _fix_fxsave(task, uc, p)
    elif k == "simd_fp":
        _simd_apply(uc, p.values["flags"], p.values["result"], p.values["probe"])


def _fop(task: "Task", fip: int) -> int:
    """FOP: the last non-control x87 instruction's opcode, its first byte's
    low 3 bits and its ModRM byte (SDM vol. 1, 8.1.10).  Unicorn keeps that
    instruction's address (FIP) but not the opcode: it is read back there."""
    if not fip:
        return 0                    # none since fninit
    code = task.read(fip, 15)
    i = 0
    while i < len(code) - 1 and (code[i] in _X87_PREFIXES or 0x40 <= code[i] <= 0x4F):
        i += 1
    if i + 1 >= len(code) or not 0xD8 <= code[i] <= 0xDF:
        return 0
    return ((code[i] & 7) << 8) | code[i + 1]


def _fix_env(uc, p: Pending) -> None:
    """fnstenv/fnsave image, 32-bit format (28 bytes; SDM vol. 1, figure
    8-9): this CPU fills the reserved upper halves with ones and stores FOP
    in bits 16-26 of the FCS dword.  The 16-bit format (66h) has neither."""
    if p.fixup.size != 28:
        return
    ea = p.ea
    for off in (2, 6, 10, 26):
        uc.mem_write(ea + off, b"\xff\xff")
    uc.mem_write(ea + 18, struct.pack("<H", p.values["fop"] & 0x7FF))


def _fix_fxsave(task: "Task", uc, p: Pending) -> None:
    """The legacy area of fxsave/fxsave64/xsave (SDM vol. 1, table 10-2):
    FOP/FIP/FDP as this CPU writes them, MXCSR_MASK, the ST slots' pads."""
    v, ea = p.values, p.ea
    rfbm = v["rfbm"]
    if rfbm & 1:                                    # x87 state saved
        es = v["es"]
        uc.mem_write(ea + 6, struct.pack("<H", v["fop"] if es else 0))
        if p.fixup.size == 64:
            uc.mem_write(ea + 8, struct.pack("<QQ", v["fip"] if es else 0, v["fdp"] if es else 0))
        else:
            uc.mem_write(ea + 8, struct.pack("<IHHIHH", v["fip"] & 0xFFFF_FFFF if es else 0, v["fcs"] if es else 0, 0,
                                             v["fdp"] & 0xFFFF_FFFF if es else 0, v["fds"] if es else 0, 0))
        for i in range(8):
            uc.mem_write(ea + 32 + 16 * i + 10, bytes(6))
    native = simd_fp.native()
    if rfbm & 6 and native is not None:             # MXCSR saved with the SSE (or AVX) state
        uc.mem_write(ea + 28, struct.pack("<I", native.mxcsr_mask))


@lru_cache(maxsize=4096)
def _probe(raw: bytes):
    native = simd_fp.native()
    if native is None:
        return None
    ins, md, size = probe_insn(raw)
    return native.probe(ins, md, size)


def _simd_run(task: "Task", uc, fx: Fixup, ea: int):
    """(MXCSR flags, result, probe) of this instruction run natively now."""
    probe = _probe(fx.raw)
    if probe is None:
        return None
    xmm = {k: uc.reg_read(X.UC_X86_REG_XMM0 + guest) for k, guest in probe.xmm}
    scratch = b""
    if probe.source == "mem":
        scratch = task.read(ea, probe.size)
    elif probe.source == "gpr":
        scratch = (_reg(uc, probe.rm_reg.upper()) & ((1 << 8 * probe.size) - 1)).to_bytes(probe.size, "little")
    elif probe.source == "mm":
        # MMi is the significand of physical x87 register i (Unicorn has no MMi register).
        mant, _exp = uc.reg_read(X.UC_X86_REG_FP0 + int(probe.rm_reg[2:]))
        scratch = mant.to_bytes(8, "little")
    mxcsr = _reg(uc, "MXCSR")
    flags, result = simd_fp.native().run(probe, mxcsr, xmm, scratch)
    unmasked = flags & ~(mxcsr >> 7) & simd_fp.MXCSR_FLAGS
    if unmasked:
        # The CPU raises #XM here (SIGFPE).  Which flags it sets then depends
        # on the masks (pre- before post-computation exceptions, UE without
        # PE); the probe runs masked and cannot say: refuse, never guess.
        raise UnfaithfulInstruction(f"SSE floating-point exception {unmasked:#x} unmasked in MXCSR {mxcsr:#x}: "
                                    "#XM is not emulated")
    return flags, result, probe


def _simd_apply(uc, flags: int, result: int | None, probe) -> None:
    """OR the flags into MXCSR and put the CPU's result in the destination
    (a 32-bit general destination is zero-extended, as any 32-bit write)."""
    if flags:
        uc.reg_write(X.UC_X86_REG_MXCSR, _reg(uc, "MXCSR") | flags)
    if result is None:
        return
    if probe.dest_kind == "xmm":
        uc.reg_write(X.UC_X86_REG_XMM0 + int(probe.dest[3:]), result)
    elif probe.dest_kind == "gpr":
        full = _FULL_GPR.get(probe.dest, probe.dest)
        if full != probe.dest:
            result &= 0xFFFF_FFFF
        uc.reg_write(getattr(X, f"UC_X86_REG_{full.upper()}"), result)


# 32-bit names of the general registers a conversion may write (cvt*2si r32).
_FULL_GPR = {**{f"e{r}": f"r{r}" for r in ("ax", "bx", "cx", "dx", "si", "di", "bp", "sp")},
             **{f"r{i}d": f"r{i}" for i in range(8, 16)}}
