"""Setting up the emulated CPU the way Linux leaves it for a user task.

Unicorn starts an x86-64 engine in long mode at CPL 0.  There, cli, hlt,
rdmsr, lgdt and friends simply execute, where a user task takes #GP and gets
SIGSEGV.  So before any user code runs, the CPU is put where the kernel puts
it on return to user space: an `iretq` to Linux's user code and stack
selectors (__USER_CS = 0x33, __USER_DS = 0x2b, from its GDT layout), so QEMU's
own privilege checks apply at CPL 3.  The GDT stays mapped, read-only, in
the one page above TASK_SIZE, for the selector loads user code may do; no
VMA can cover it.
"""
from __future__ import annotations

import struct

from unicorn import UC_PROT_READ, UC_PROT_ALL
from unicorn import x86_const as X

# The last page below 2^47: TASK_SIZE ends one page short of it, so no user
# mapping can ever be there (Unicorn cannot map the kernel half of the address
# space: with paging off, linear addresses beyond its physical range fault).
GDT_BASE = 0x7FFF_FFFF_F000
_STUB = GDT_BASE + 0x800                # iretq stub and its frame, during set-up only
USER_CS = 0x33                          # GDT entry 6, RPL 3 (arch/x86/include/asm/segment.h)
USER_DS = 0x2B                          # GDT entry 5, RPL 3
MXCSR_RESET = 0x1F80                    # all SIMD exceptions masked (Unicorn starts at 0)
RFLAGS_USER = 0x202                     # IF set, IOPL 0: what a user task runs with


def _descriptor(dpl: int, code: bool) -> int:
    """A flat segment descriptor: base 0, limit 0xfffff, 4 KiB granularity;
    code segments are 64-bit (L=1)."""
    access = 0x80 | (dpl << 5) | 0x10 | (0x0A if code else 0x02)   # present, S, type
    flags = 0xA if code else 0xC                                     # G + L, or G + D/B
    return 0xFFFF | (access << 40) | (0xF << 48) | (flags << 52)


def enter_user_mode(uc) -> None:
    """Drop the engine to CPL 3 with Linux's user selectors (once per engine)."""
    gdt = [0] * 16
    gdt[1] = _descriptor(0, True)        # __KERNEL_CS
    gdt[2] = _descriptor(0, False)       # __KERNEL_DS
    gdt[5] = _descriptor(3, False)       # __USER_DS
    gdt[6] = _descriptor(3, True)        # __USER_CS
    uc.mem_map(GDT_BASE, 0x1000, UC_PROT_ALL)
    uc.mem_write(GDT_BASE, b"".join(struct.pack("<Q", d) for d in gdt))
    uc.reg_write(X.UC_X86_REG_GDTR, (0, GDT_BASE, len(gdt) * 8 - 1, 0))
    resume = _STUB + 0x10
    frame = _STUB + 0x400
    uc.mem_write(_STUB, b"\x48\xcf")                       # iretq
    uc.mem_write(resume, b"\x90")
    # iretq pops rip, cs, rflags, rsp, ss
    uc.mem_write(frame, struct.pack("<5Q", resume, USER_CS, RFLAGS_USER, frame, USER_DS))
    uc.reg_write(X.UC_X86_REG_RSP, frame)
    uc.emu_start(_STUB, resume)
    uc.mem_write(_STUB, bytes(0x800))
    uc.mem_protect(GDT_BASE, 0x1000, UC_PROT_READ)
    uc.reg_write(X.UC_X86_REG_RSP, 0)
    uc.reg_write(X.UC_X86_REG_MXCSR, MXCSR_RESET)
    uc.ctl_flush_tb()
