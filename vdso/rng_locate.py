"""Find where an image expects struct vdso_rng_data.

The kernel moved it between versions (6.11-6.14: vvar page + 640; 6.15+: the
start of the vvar area, text - 4 pages).  Rather than trust a version table we
disassemble __vdso_getrandom and collect its RIP-relative operands that point
below the image: the 8-byte access is `generation`, the byte access 8 above it
is `is_ready`.  Presets remain as the fallback.
"""
from __future__ import annotations

from collections import Counter

import capstone
from capstone import x86 as cs_x86

from vdso.image import RNG_DATA_OFFSET_6_15, VdsoImage

SCAN_BYTES = 0x600   # __vdso_getrandom is ~0x400 bytes; the scan stops at the first ret-free gap anyway


def rip_relative_targets(img: VdsoImage, func: str = "__vdso_getrandom") -> list[tuple[int, int]]:
    """(offset from base, access size) of every RIP-relative operand in func
    that points below the image."""
    start = img.symbols[func]
    md = capstone.Cs(capstone.CS_ARCH_X86, capstone.CS_MODE_64)
    md.detail = True
    out = []
    code = img.text[start:start + SCAN_BYTES]
    for insn in md.disasm(code, start):
        for op in insn.operands:
            if op.type == cs_x86.X86_OP_MEM and op.mem.base == cs_x86.X86_REG_RIP:
                target = insn.address + insn.size + op.mem.disp
                if target < 0:
                    # lea gives the address; the access size comes from its later use, take 8
                    size = op.size if insn.mnemonic != "lea" else 8
                    out.append((target, size))
    return out


def locate_rng_data(img: VdsoImage) -> tuple[int, str]:
    """Return (offset of vdso_rng_data from the base, how it was found)."""
    targets = rip_relative_targets(img)
    if targets:
        # generation: the most referenced 8-byte target whose +8 is a byte target, else the lowest 8-byte one.
        counts = Counter(t for t, s in targets if s == 8)
        bytes_ = {t for t, s in targets if s == 1}
        for gen, _ in counts.most_common():
            if gen + 8 in bytes_:
                return gen, "disassembly (generation + is_ready)"
        if counts:
            return min(counts), "disassembly (generation only)"
        if bytes_:
            return min(bytes_) - 8, "disassembly (is_ready only)"
    return RNG_DATA_OFFSET_6_15, "preset 6.15+"
