"""Encode call frame information as `.eh_frame` and `.eh_frame_hdr`.

The encoding is the one GCC and GNU ld produce for x86-64 and the kernel's
vDSO carries (readelf --debug-dump=frames on the host's [vdso]): one CIE
with augmentation "zR", code alignment 1, data alignment -8, return address
column 16 (rip), FDE addresses as pc-relative sdata4, initial rule
CFA = rsp + 8 with the return address at CFA - 8; then one FDE per function.
`.eh_frame_hdr` is the sorted search table unwinders binary-search (version 1,
table entries datarel sdata4), found through PT_GNU_EH_FRAME.

Sizes do not depend on where the sections are placed, so the image layout
can be computed before the addresses are known (encode twice).
"""
from __future__ import annotations

import struct

from vdso.cfi import DWARF_REGS, ENTRY_FRAME, RA_COLUMN, Frame, FunctionCfi

# DWARF call frame instructions (DWARF 5, section 6.4.2) and pointer encodings.
DW_CFA_advance_loc = 0x40
DW_CFA_offset = 0x80
DW_CFA_restore = 0xC0
DW_CFA_nop = 0x00
DW_CFA_advance_loc1 = 0x02
DW_CFA_advance_loc2 = 0x03
DW_CFA_advance_loc4 = 0x04
DW_CFA_def_cfa = 0x0C
DW_CFA_def_cfa_offset = 0x0E
DW_EH_PE_udata4 = 0x03
DW_EH_PE_sdata4 = 0x0B
DW_EH_PE_pcrel = 0x10
DW_EH_PE_datarel = 0x30

CODE_ALIGN = 1
DATA_ALIGN = -8
_FDE_ENCODING = DW_EH_PE_pcrel | DW_EH_PE_sdata4


def uleb128(v: int) -> bytes:
    out = bytearray()
    while True:
        b, v = v & 0x7F, v >> 7
        out.append(b | (0x80 if v else 0))
        if not v:
            return bytes(out)


def sleb128(v: int) -> bytes:
    out = bytearray()
    while True:
        b, v = v & 0x7F, v >> 7
        done = (v == 0 and not b & 0x40) or (v == -1 and b & 0x40)
        out.append(b | (0 if done else 0x80))
        if done:
            return bytes(out)


def _padded(body: bytes) -> bytes:
    """A CIE/FDE with its length word, padded with nops to 8 bytes."""
    pad = (-(4 + len(body))) % 8
    body += bytes([DW_CFA_nop]) * pad
    return struct.pack("<I", len(body)) + body


def _cie() -> bytes:
    initial = (bytes([DW_CFA_def_cfa]) + uleb128(DWARF_REGS["rsp"]) + uleb128(ENTRY_FRAME.cfa_offset)
               + bytes([DW_CFA_offset | RA_COLUMN]) + uleb128(ENTRY_FRAME.cfa_offset // -DATA_ALIGN))
    body = (struct.pack("<IB", 0, 1) + b"zR\0" + uleb128(CODE_ALIGN) + sleb128(DATA_ALIGN)
            + uleb128(RA_COLUMN) + uleb128(1) + bytes([_FDE_ENCODING]) + initial)
    return _padded(body)


def _advance(delta: int) -> bytes:
    if delta < 0x40:
        return bytes([DW_CFA_advance_loc | delta])
    if delta < 0x100:
        return struct.pack("<BB", DW_CFA_advance_loc1, delta)
    if delta < 0x10000:
        return struct.pack("<BH", DW_CFA_advance_loc2, delta)
    return struct.pack("<BI", DW_CFA_advance_loc4, delta)


def _change(prev: Frame, new: Frame) -> bytes:
    out = bytearray()
    if new.cfa_reg != prev.cfa_reg:
        out += bytes([DW_CFA_def_cfa]) + uleb128(DWARF_REGS[new.cfa_reg]) + uleb128(new.cfa_offset)
    elif new.cfa_offset != prev.cfa_offset:
        out += bytes([DW_CFA_def_cfa_offset]) + uleb128(new.cfa_offset)
    old = dict(prev.saved)
    for reg, off in new.saved:
        if old.get(reg) != off:
            out += bytes([DW_CFA_offset | DWARF_REGS[reg]]) + uleb128(off // DATA_ALIGN)
    for reg in old.keys() - dict(new.saved).keys():
        out += bytes([DW_CFA_restore | DWARF_REGS[reg]])
    return bytes(out)


def _program(fn: FunctionCfi) -> bytes:
    out, prev, loc = bytearray(), ENTRY_FRAME, fn.start
    for off, frame in fn.rows:
        change = _change(prev, frame)
        if change:
            if off > loc:
                out += _advance(off - loc)
                loc = off
            out += change
        prev = frame
    return bytes(out)


def encode(functions: list[FunctionCfi], eh_frame_addr: int, text_addr: int
           ) -> tuple[bytes, list[tuple[int, int]]]:
    """`.eh_frame` at eh_frame_addr for functions whose code starts at
    text_addr, ending with a zero terminator; and (function address, FDE
    address) pairs for the search table."""
    out = bytearray(_cie())
    table = []
    for fn in sorted(functions, key=lambda f: f.start):
        fde_at = len(out)
        pc = text_addr + fn.start
        pc_field = eh_frame_addr + fde_at + 8       # after the length and CIE pointer
        body = (struct.pack("<I", fde_at + 4)        # back to the CIE at offset 0
                + struct.pack("<iI", pc - pc_field, fn.size) + uleb128(0) + _program(fn))
        out += _padded(body)
        table.append((pc, eh_frame_addr + fde_at))
    out += struct.pack("<I", 0)
    return bytes(out), table


def encode_hdr(hdr_addr: int, eh_frame_addr: int, table: list[tuple[int, int]]) -> bytes:
    """`.eh_frame_hdr` at hdr_addr."""
    head = struct.pack("<BBBB", 1, DW_EH_PE_pcrel | DW_EH_PE_sdata4, DW_EH_PE_udata4,
                       DW_EH_PE_datarel | DW_EH_PE_sdata4)
    head += struct.pack("<iI", eh_frame_addr - (hdr_addr + 4), len(table))
    for pc, fde in sorted(table):
        head += struct.pack("<ii", pc - hdr_addr, fde - hdr_addr)
    return head
