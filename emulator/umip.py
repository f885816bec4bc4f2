"""User-Mode Instruction Prevention, as Linux handles it (arch/x86/kernel/umip.c).

With CR4.UMIP set (this CPU has UMIP, and Linux enables it), sgdt, sidt,
sldt, str and smsw raise #GP at CPL 3; the kernel's #GP handler then emulates
them with dummy values so that old programs keep working, and the task goes
on at the next instruction.  QEMU 5 has no UMIP and returns Unicorn's own
descriptor-table registers instead, so emulator/instrument.py raises #GP at
these instructions and the run loop calls fixup_umip_exception() as the
kernel's handler does.

The values are what a user task reads on this host's 6.18 kernel (measured
natively by faultpath diffcheck): a GDT base of 0xfffffffffffe0000 and an
IDT base of 0xffffffffffff0000 with limit 0, an LDT selector of 0, a task
register of 0x40 and CR0 = 0x80050033 (PE MP ET NE WP AM PG).
"""
from __future__ import annotations

import struct
from typing import TYPE_CHECKING

from capstone import x86 as cs_x86

from emulator.instrument import effective_address, mem_descriptor
from emulator.records import CallContext
from emulator.usercopy import access_user
from vdso.insn import MAX_INSN_LEN, disassembler

if TYPE_CHECKING:
    from emulator.task import Task

UMIP_INSNS = ("sgdt", "sidt", "sldt", "str", "smsw")
DUMMY_GDT_BASE = 0xFFFF_FFFF_FFFE_0000
DUMMY_IDT_BASE = 0xFFFF_FFFF_FFFF_0000
DUMMY_LDTR = 0
DUMMY_TR = 0x40
DUMMY_CR0 = 0x8005_0033


def _value(mnemonic: str) -> bytes:
    if mnemonic == "sgdt":
        return struct.pack("<HQ", 0, DUMMY_GDT_BASE)
    if mnemonic == "sidt":
        return struct.pack("<HQ", 0, DUMMY_IDT_BASE)
    word = {"sldt": DUMMY_LDTR, "str": DUMMY_TR, "smsw": DUMMY_CR0}[mnemonic]
    return struct.pack("<Q", word)


def fixup_umip_exception(m: "Task", ctx: CallContext, rip: int) -> bool:
    """Emulate the UMIP-covered instruction at rip; True if it was one (the
    task continues past it), False if the #GP stands."""
    code = m.read(rip, MAX_INSN_LEN)
    md = disassembler(True)
    ins = next(md.disasm(code, rip, 1), None)
    if ins is None or ins.mnemonic not in UMIP_INSNS:
        return False
    data = _value(ins.mnemonic)
    op = ins.operands[0]
    if op.type == cs_x86.X86_OP_MEM:
        # sgdt/sidt store 10 bytes; sldt/str/smsw store a word to memory.
        n = 10 if ins.mnemonic in ("sgdt", "sidt") else 2
        ea = effective_address(m.read_reg_by_name, mem_descriptor(md, ins, op))
        if access_user(m, ea, data[:n], user=True) != n:
            return False            # the kernel's copy failed: the #GP stands (SIGSEGV)
    elif op.type == cs_x86.X86_OP_REG:
        name = md.reg_name(op.reg)
        full = int.from_bytes(data[:8], "little")
        if op.size == 4:            # a 32-bit destination is zero-extended to 64 bits
            name = "r" + name[1:] if name.startswith("e") else name.rstrip("d")
        m.set_reg(name, full & ((1 << (8 * min(op.size, 8))) - 1) if op.size != 4 else full & 0xFFFF_FFFF)
    else:
        return False
    m.set_reg("rip", rip + ins.size)
    ctx.rip = rip + ins.size
    ctx.index += 1
    return True
