"""Call frames of the stepped call, from the image's call frame information.

The vDSO carries .eh_frame (the kernel's images from the compiler; ours from
vdso/cfi.py).  For each frame: find the FDE covering pc (pc - 1 for a return
address, which points after its call), apply its rules to get the CFA and
where the return address and rbp were saved, and go on to the caller.  A
function without an FDE (the kernel's ChaCha20 routine is hand-written
assembly with no CFI) is taken as what __arch_chacha20_blocks_nostack is by
contract: a leaf that never touches the stack (CFA = rsp + 8).  The walk
ends at the return sentinel, the caller's code.
"""
from __future__ import annotations

import io
from dataclasses import dataclass
from functools import lru_cache

from elftools.elf.elffile import ELFFile

from emulator.kernel import SENTINEL_PAGE

MAX_FRAMES = 64
RSP, RBP, RIP = 7, 6, 16        # DWARF register numbers (x86-64 psABI)


@dataclass
class Frame:
    level: int
    pc: int
    cfa: int
    how: str                     # "cfi" | "leaf" (no FDE: no stack used) | "caller"


@lru_cache(maxsize=8)
def _fde_rows(text: bytes) -> tuple:
    """((start, end, [(pc, cfa_rule, {reg: rule})...]), ...) offsets from the image start."""
    out = []
    try:
        elf = ELFFile(io.BytesIO(text))
        dw = elf.get_dwarf_info()
        entries = dw.EH_CFI_entries() if dw.has_EH_CFI() else (dw.CFI_entries() if dw.has_CFI() else [])
    except Exception:        # no usable CFI: every frame is unwound as a leaf
        return ()
    for e in entries:
        h = getattr(e, "header", None)
        if h is None or "initial_location" not in h:
            continue
        start = h["initial_location"]
        rows = []
        for row in e.get_decoded().table:
            rows.append((row["pc"], row["cfa"], {r: v for r, v in row.items() if isinstance(r, int)}))
        out.append((start, start + h["address_range"], tuple(rows)))
    return tuple(out)


def frames(session) -> list[Frame]:
    """Innermost first; the last one is the caller (the return sentinel) when
    the walk gets there."""
    img = session.kernel.image
    m = session.m
    table = _fde_rows(bytes(img.text))
    pc = session.ctx.rip
    regs = {RSP: m.reg("rsp"), RBP: m.reg("rbp")}
    out: list[Frame] = []
    for level in range(MAX_FRAMES):
        if pc == SENTINEL_PAGE or not img.base <= pc < img.base + img.size:
            out.append(Frame(level, pc, regs[RSP], "caller"))
            break
        lookup = pc - img.base - (1 if level else 0)
        rule = _row(table, lookup)
        if rule is None:
            cfa = regs[RSP] + 8
            ra_at, rbp_at, how = cfa - 8, None, "leaf"
        else:
            cfa_rule, regrules = rule
            base = regs.get(cfa_rule.reg)
            if base is None:
                break
            cfa = base + cfa_rule.offset
            ra = regrules.get(RIP)
            ra_at = cfa + ra.arg if ra is not None and ra.type == "OFFSET" else cfa - 8
            rb = regrules.get(RBP)
            rbp_at = cfa + rb.arg if rb is not None and rb.type == "OFFSET" else None
            how = "cfi"
        out.append(Frame(level, pc, cfa, how))
        raw = session.read_memory(ra_at, 8)
        if len(raw) < 8:
            break
        pc = int.from_bytes(raw, "little")
        if rbp_at is not None:
            raw = session.read_memory(rbp_at, 8)
            if len(raw) == 8:
                regs[RBP] = int.from_bytes(raw, "little")
        regs[RSP] = cfa
    return out


def _row(table, off: int):
    for start, end, rows in table:
        if start <= off < end:
            best = None
            for pc, cfa, regs in rows:
                if pc <= off:
                    best = (cfa, regs)
            return best
    return None
