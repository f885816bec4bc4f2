"""Where a sequence lives: fixed addresses that both sides can use, and the
kernel states a data page can be in.

Code and data sit below 4 GiB, so that the corpus's addr32 moffs stores reach
them, and far from anything this process maps itself: a PIE Python, its heap
and its libraries sit at 0x55.. and 0x7f.., the emulator's stack, vDSO and
return sentinel near the top of the user half.  The native side maps every
address with MAP_FIXED_NOREPLACE, so a clash is an error, never a clobber.
"""
from __future__ import annotations

PAGE = 4096

CODE_ADDR = 0x3000_0000          # the sequence's code (read + execute)
CODE_PAGES = 4                   # room for `call rel32` gaps and image windows
DATA_ADDR = 0x3010_0000          # the data pages, DATA_PAGES of them, contiguous
DATA_PAGES = 6
# Native only, and far from anything a stray address can reach (a random
# 32-bit value, a small number, an edge value): a sequence whose computed
# address lands in the harness's data would wreck the way back to Python.
HARNESS_ADDR = 0x3F00_0000_0000      # entry stub, signal handler, exit stub
HARNESS_DATA = HARNESS_ADDR + PAGE   # registers in/out, fault log (2 pages)
ALTSTACK_ADDR = 0x3F00_0010_0000     # the signal handler's stack
ALTSTACK_SIZE = 0x10000

CODE_SIZE = CODE_PAGES * PAGE
DATA_SIZE = DATA_PAGES * PAGE


def data_page(i: int) -> int:
    return DATA_ADDR + i * PAGE


# The states a data page starts a sequence in.  The first five are what the
# emulator's mm makes of the page; natively the CPU must fault on the same
# accesses, so each has a native protection (and, for the zero page, a prior
# read so that the PTE is present as it is in the emulator).
#
#   state        emulator (mm)                               native
#   present      private anon, written (content)             PROT_READ|WRITE, content
#   first-touch  private anon, never touched                 PROT_NONE, fresh
#   dropped      droppable, written, then reclaimed          PROT_NONE, fresh
#   zero-page    private anon, read once (shared zero page)  PROT_READ, read once
#   cow          private anon, written, then fork()ed        PROT_READ, content
#   snapshot     private anon, written, Machine.snapshot()   PROT_READ, content
#   readonly     PROT_READ VMA, written before (content)     PROT_READ, content, not resolvable
#   unmapped     no VMA                                      no mapping
#
# A native fault on a page in a *resolvable* state is resolved by the signal
# handler (read: PROT_READ, write: PROT_READ|WRITE) and the instruction
# restarts, as after the kernel resolves a page fault; on the others the
# sequence ends with the signal, as in the emulator.
PAGE_STATES = ("present", "first-touch", "dropped", "zero-page", "cow", "snapshot", "readonly", "unmapped")
FAULTING_STATES = ("first-touch", "dropped", "zero-page", "cow", "snapshot")
RESOLVABLE = frozenset(FAULTING_STATES)
HAS_CONTENT = frozenset(("present", "cow", "snapshot", "readonly"))
# The emulator resolves a write to a page a Machine snapshot write-protected
# without a fault record (a tool artifact, emulator/fault.py snapshot_cow):
# native faults on such pages are not expected in its fault list.
SILENT_STATES = frozenset(("snapshot",))

# General registers in the order of every register block (native harness,
# records, reports).
GPRS = ("rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rbp", "rsp",
        "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15")

# RFLAGS bits compared: the arithmetic flags and DF.  The others (IF, the
# reserved bit 1, TF, RF...) are system state; the privileged corpus looks at
# them through pushfq where it matters.
FLAG_BITS = {"CF": 0, "PF": 2, "AF": 4, "ZF": 6, "SF": 7, "DF": 10, "OF": 11}
FLAGS_MASK = sum(1 << b for b in FLAG_BITS.values())
MXCSR_DEFAULT = 0x1F80


def flag_names(bits: int) -> list[str]:
    return [n for n, b in FLAG_BITS.items() if bits >> b & 1]
