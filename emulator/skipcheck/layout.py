"""What a skipcheck run's address space and registers hold before it starts.

Code and data live in separate places.  The code is one page, the image
text (`code_page`): filler, the instruction under test, a marker
instruction, an int3.  The data is a block of mappings at a data base:

  data + SRC_OFF    present and readable (`data_pattern`): movs/push
                    sources, enter frames
  data + PRE_OFF    a present anonymous page right below the droppable page
  data + DROP_OFF   droppable (2 pages), never allocated under OOM
  data + SDROP_OFF  a droppable "stack": page 0 not present, page 1 present

Two layouts give (code page, data base): HIGH, and LOW with everything
below 4 GiB for 0x67 (32-bit address) stores.  rip-relative stores need the
data within 2 GiB of the code, which both keep.

Every register starts from a pattern that is canonical, never mapped and
distinct per register, so a register the instruction must not touch shows
any change.
"""
from __future__ import annotations

from mm.flags import PAGE_SIZE

HIGH = (0x7E00_0000_0000, 0x7E00_1000_0000)
LOW = (0x0040_0000, 0x1000_0000)
SRC_OFF = 0x0000
PRE_OFF = 0x10000
DROP_OFF = 0x11000
SDROP_OFF = 0x20000
TARGET_OFF = 0x100        # plain destination inside the droppable page
FS_BASE = 0x10_0000       # with fs/gs the store lands 1/2 MiB above where [regs] point
GS_BASE = 0x20_0000
INSN_OFF = 0x78           # where the instruction sits in its code page (not page-end)
NOP15 = bytes.fromhex("6666666666662e0f1f840000000000")     # a 15-byte nop (filler)

# After the instruction, a `mov reg, imm32` to a register the store does not
# use: under skip it must run, under retry it must not.
MARKER = 0x5CA1AB1E
MARKER_LEN = 7
MARKER_REGS = ("r11", "r10", "r9", "r8", "r15", "r14", "r13", "r12", "rbx", "rbp")
_MARKER_ENC = {"r8": "49c7c0", "r9": "49c7c1", "r10": "49c7c2", "r11": "49c7c3", "r12": "49c7c4",
               "r13": "49c7c5", "r14": "49c7c6", "r15": "49c7c7", "rbx": "48c7c3", "rbp": "48c7c5"}

GPR64 = ("rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rbp", "rsp",
         "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15")


def gpr_pattern(name: str) -> int:
    """Initial value of a GPR: canonical, never mapped, distinct per register."""
    return 0x5A5A_0000_0000 + (GPR64.index(name) + 1) * 0x0101_0101


def xmm_pattern(i: int) -> int:
    """Every byte >= 0x80, so a maskmov with any of them as the mask stores all bytes."""
    return int.from_bytes(bytes((0x80 + i * 16 + j) & 0xFF | 0x80 for j in range(16)), "little")


def mm_pattern(i: int) -> int:
    return int.from_bytes(bytes(0x80 | (i * 8 + j) for j in range(8)), "little")


_PATTERN = bytes((k * 37 + 11) & 0xFF for k in range(256)) * (3 * PAGE_SIZE // 256 + 1)


def data_pattern(addr: int, n: int) -> bytes:
    """The bytes a present data page starts with (a function of the address)."""
    if n > 2 * PAGE_SIZE:
        return b"".join(data_pattern(addr + k, min(PAGE_SIZE, n - k)) for k in range(0, n, PAGE_SIZE))
    o = addr & 0xFF
    return _PATTERN[o:o + n]


def regions(data: int) -> list[tuple[int, int]]:
    """(start, length) of every data mapping: what a run must leave alone."""
    return [(data + SRC_OFF, PAGE_SIZE), (data + PRE_OFF, PAGE_SIZE), (data + DROP_OFF, 2 * PAGE_SIZE),
            (data + SDROP_OFF, 2 * PAGE_SIZE)]


def marker_bytes(reg: str) -> bytes:
    """``mov reg, MARKER`` and the int3 that ends the run."""
    return bytes.fromhex(_MARKER_ENC[reg]) + MARKER.to_bytes(4, "little") + b"\xcc"


def code_page(insn_addr: int, code: bytes, marker: str | None) -> bytes:
    """The image text: filler, the instruction, the marker, int3, filler.
    The filler keeps the Machine's linear sweep of the image in step with
    the instruction (it looks for multi-piece stores such as fxsave)."""
    off = insn_addr & (PAGE_SIZE - 1)
    head = NOP15 * (off // 15) + b"\x90" * (off % 15)
    tail = b"\xcc"
    if marker:
        tail = marker_bytes(marker)
    elif off + len(code) == PAGE_SIZE:
        tail = b""
    body = head + code + tail
    rest = PAGE_SIZE - len(body)
    return body + NOP15 * (rest // 15) + b"\xcc" * (rest % 15)
