"""Where skipcheck puts a store, and the register values that put it there.

  plain        the destination inside a droppable page that cannot be
               allocated;
  split        the destination straddles a present page and that page (not
               for 1-byte stores or stores that must be aligned: "n/a");
  riprel       the same store with a rip-relative destination;
  page-end     the instruction ends exactly at the end of its code page and
               the next page is unmapped, so insn_fetch_from_user() comes
               back short (only the instruction's own bytes);
  stack        push/call/enter with rsp inside a droppable mapping;
  stack-split  the pushed value straddles a not-present droppable page and a
               present one;
  rep-partway  rep movs/stos with elements already done on a present page
               before the droppable page faults (architectural progress in
               RCX/RDI/RSI and the bytes written so far).

`placements_for` says which apply to an instruction; `plan_run` solves the
address registers (and fs/gs bases, and the rip-relative displacement) so
that ``seg:[mem]`` is the target the placement wants, in the `layout`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from emulator.skipcheck.corpus import MemRef, StoreInfo
from emulator.skipcheck.layout import (DROP_OFF, FS_BASE, GS_BASE, HIGH, INSN_OFF, LOW, MARKER_REGS, PRE_OFF,
                                       SDROP_OFF, SRC_OFF, TARGET_OFF, gpr_pattern)
from mm.flags import PAGE_SIZE
from vdso.insn import disassembler

if TYPE_CHECKING:
    from emulator.skipcheck.instructions import Instruction

PLACEMENTS = ("plain", "split", "riprel", "page-end", "stack", "stack-split", "rep-partway")

GARBAGE_HI = 0x1234 << 32  # upper halves of 0x67 address registers (must be ignored)
REP_DONE = 3              # rep-partway: elements completed before the fault
REP_COUNT = 8             # rep count


def _register_aliases() -> dict[str, str]:
    """Every name of a GPR (eax, ax, al, ah, r8d...) -> its 64-bit name."""
    out = {}
    for names in (("rax", "eax", "ax", "al"), ("rbx", "ebx", "bx", "bl"), ("rcx", "ecx", "cx", "cl"),
                  ("rdx", "edx", "dx", "dl"), ("rsi", "esi", "si", "sil"), ("rdi", "edi", "di", "dil"),
                  ("rbp", "ebp", "bp", "bpl"), ("rsp", "esp", "sp", "spl")):
        for n in names:
            out[n] = names[0]
    for n in ("ah", "bh", "ch", "dh"):
        out[n] = "r" + n[0] + "x"
    for i in range(8, 16):
        for s in ("", "d", "w", "b"):
            out[f"r{i}{s}"] = f"r{i}"
    out.update({"rip": "rip", "eip": "rip"})
    return out


_ALIASES = _register_aliases()


def placements_for(ins: Instruction) -> dict[str, str | None]:
    """placement -> None (applies) or why not ("n/a")."""
    info = ins.info
    out: dict[str, str | None] = {}
    if ins.variant.pad_to and ins.variant.pad_to > 15:
        for p in PLACEMENTS:
            out[p] = None if p == ("stack" if info.kind == "stack" else "plain") else \
                "16 bytes: refused before any access"
        return out
    stack = info.kind == "stack"
    rep = info.kind == "string" and info.rep
    out["plain"] = "stack store: see the stack placements" if stack else None
    if stack:
        out["split"] = "stack store: see stack-split"
    elif info.moffs and info.dest.segment not in ("fs", "gs"):
        out["split"] = "the address is in the instruction"
    elif info.align > 1:
        out["split"] = f"{info.mnemonic} needs a {info.align}-byte aligned destination"
    elif info.width < 2:
        out["split"] = "a 1-byte store cannot straddle pages"
    else:
        out["split"] = None
    out["riprel"] = ins.riprel_na or None
    out["page-end"] = None
    out["stack"] = None if stack else "not a stack store"
    if not stack:
        out["stack-split"] = "not a stack store"
    elif info.width < 2:
        out["stack-split"] = "a 1-byte store cannot straddle pages"
    else:
        out["stack-split"] = None
    out["rep-partway"] = None if rep else "not a rep string store"
    return out


# ----------------------------------------------------------------------------
# Planning one run
# ----------------------------------------------------------------------------

class _Conflict(Exception):
    """This placement cannot be set up for this instruction (the run is n/a)."""


class _Regs:
    """Register values chosen so far; a second, different value for the same
    register (under any of its names) is a conflict."""

    def __init__(self):
        self.values: dict[str, int] = {}

    def set(self, name: str, value: int) -> None:
        name = _ALIASES.get(name, name)
        value &= (1 << 64) - 1
        if self.values.get(name, value) != value:
            raise _Conflict(f"{name} would need two values")
        self.values[name] = value

    def get(self, name: str) -> int:
        name = _ALIASES.get(name, name)
        return self.values.get(name, gpr_pattern(name))


def _seg_base(segment: str | None) -> int:
    return {"fs": FS_BASE, "gs": GS_BASE}.get(segment or "", 0)


def _segment_of(code: bytes) -> str | None:
    seg = None
    for b in code:
        if b == 0x64:
            seg = "fs"
        elif b == 0x65:
            seg = "gs"
        elif b in (0x2E, 0x36, 0x3E, 0x26):
            seg = None
        elif b not in (0x66, 0x67, 0xF0, 0xF2, 0xF3):
            break
    return seg


def _solve(regs: _Regs, mem: MemRef, linear: int, addr32: bool) -> None:
    """Give the registers of ``mem`` values that make seg:[mem] == linear."""
    ea = (linear - _seg_base(mem.segment)) & ((1 << 64) - 1)
    mask = (1 << 32) - 1 if addr32 else (1 << 64) - 1
    if mem.rip:
        raise _Conflict("rip-relative: the displacement is patched, not solved")
    if mem.absolute:
        if (mem.disp & mask) != (ea & mask):
            raise _Conflict("absolute address")
        return
    need = (ea - mem.disp) & mask
    if mem.index and mem.base and _ALIASES.get(mem.index) == _ALIASES.get(mem.base):
        k = 1 + mem.scale
        if k % 2:
            val = need * pow(k, -1, mask + 1) & mask
        elif need % 2 == 0 and k == 2:
            val = need // 2
        else:
            raise _Conflict("base == index")
        regs.set(mem.base, val | (GARBAGE_HI if addr32 else 0))
        return
    if mem.index:
        idx = regs.get(mem.index) & mask
        need = (need - idx * mem.scale) & mask
        if not mem.base:
            # [index*scale + disp]: the index carries everything
            if need % mem.scale:
                raise _Conflict("index*scale cannot reach the target")
            regs.set(mem.index, ((idx + need // mem.scale) & mask) | (GARBAGE_HI if addr32 else 0))
            return
    regs.set(mem.base, need | (GARBAGE_HI if addr32 else 0))


@dataclass
class Plan:
    """One instruction in one placement, ready to run: where the code and
    data go, the final bytes (the rip-relative displacement patched in), the
    registers and what the store should hit."""
    layout: tuple[int, int]
    code: bytes
    info: StoreInfo
    insn_addr: int
    target: int               # first byte the store writes (linear)
    regs: dict[str, int]
    marker: str | None
    rep_done: int = 0
    rep_src: int = 0
    fs_base: int = FS_BASE
    gs_base: int = GS_BASE


def _marker_for(info: StoreInfo, used: set[str]) -> str:
    taken = {_ALIASES.get(r, r) for r in info.regs} | used
    for r in MARKER_REGS:
        if r not in taken:
            return r
    raise _Conflict("no free register for the marker")


def plan_run(ins: Instruction, placement: str) -> Plan | str:
    """The Plan for ``ins`` in ``placement``, or why it cannot be set up."""
    try:
        return _plan(ins, placement)
    except _Conflict as e:
        return str(e)


def _plan(ins: Instruction, placement: str) -> Plan:
    info = ins.riprel_info if placement == "riprel" else ins.info
    code = ins.riprel if placement == "riprel" else ins.code
    addr32 = info.addr32
    layout = LOW if addr32 else HIGH
    seg_bases = {"fs": FS_BASE, "gs": GS_BASE}
    fixed = info.moffs and info.dest.segment not in ("fs", "gs")
    if fixed:
        # the address is in the instruction: put the droppable page there
        target = (info.dest.disp + _seg_base(_segment_of(code))) & ((1 << 64) - 1)
        drop = target & ~(PAGE_SIZE - 1)
        data = drop - DROP_OFF
        if not (0x100000 <= data < 0x7FFF_0000_0000) or (target & (PAGE_SIZE - 1)) + info.width > 2 * PAGE_SIZE:
            raise _Conflict("the address in the instruction cannot host the layout")
        layout = (layout[0], data)
    code_base, data = layout
    drop = data + DROP_OFF
    pre_end = data + PRE_OFF + PAGE_SIZE
    src = data + SRC_OFF + 0x100
    regs = _Regs()
    L = len(code)
    insn_addr = code_base + (PAGE_SIZE - L if placement == "page-end" else INSN_OFF)
    regs.set("rsp", data + SRC_OFF + 0x800)
    rep_done = 0
    if info.kind == "stack":
        if placement == "stack-split":
            rsp = data + SDROP_OFF + PAGE_SIZE + info.width // 2
        else:
            rsp = data + SDROP_OFF + 0x800
        regs.values["rsp"] = rsp
        target = rsp - info.width
        if info.source is not None:
            _solve(regs, info.source, src, addr32)
        if info.mnemonic == "enter":
            regs.set("rbp", data + SRC_OFF + 0x800)
    else:
        if placement == "split":
            target = pre_end - info.width // 2
        elif placement == "rep-partway":
            rep_done = REP_DONE
            target = pre_end - REP_DONE * info.width
        elif fixed:
            target = (info.dest.disp + _seg_base(_segment_of(code))) & ((1 << 64) - 1)
        else:
            target = drop + TARGET_OFF
        if info.kind == "explicit":
            if info.bt_offset_reg:
                regs.set(info.bt_offset_reg, 5)
            if placement == "riprel":
                pass
            elif info.moffs:
                if not fixed:
                    # fs:[abs] (the stack protector's fs:[0x28]): the base moves
                    ea = info.dest.disp & (0xFFFF_FFFF if addr32 else (1 << 64) - 1)
                    seg_bases[info.dest.segment] = (target - ea) & ((1 << 64) - 1)
            else:
                _solve(regs, info.dest, target, addr32)
        elif info.kind == "string":
            hi = GARBAGE_HI if addr32 and not info.rep else 0
            regs.set("rdi", target | hi)
            if info.rep:
                regs.set("rcx", REP_COUNT)
            if info.source is not None:          # movs: ds:[rsi], segment-overridable
                seg = _segment_of(code)
                regs.set("rsi", ((src - _seg_base(seg)) & ((1 << 64) - 1)) | hi)
        elif info.kind == "maskmov":
            seg = _segment_of(code)
            regs.set("rdi", ((target - _seg_base(seg)) & ((1 << 64) - 1)) | (GARBAGE_HI if addr32 else 0))
    if placement == "riprel":
        # patch the displacement so that seg:[rip + disp] == target
        ri = next(disassembler(True).disasm(code, insn_addr, 1))
        off, size = ri.disp_offset, ri.disp_size
        if size != 4:
            raise _Conflict("no 32-bit displacement")
        disp = target - _seg_base(info.dest.segment) - (insn_addr + L)
        if addr32:
            disp = (target - _seg_base(info.dest.segment) - (insn_addr + L)) & 0xFFFF_FFFF
            disp = disp - (1 << 32) if disp >= 1 << 31 else disp
        if not -(1 << 31) <= disp < (1 << 31):
            raise _Conflict("displacement out of range")
        code = code[:off] + (disp & 0xFFFF_FFFF).to_bytes(4, "little") + code[off + 4:]
    marker = None if placement == "page-end" else _marker_for(info, set(regs.values))
    return Plan(layout, code, info, insn_addr, target, regs.values, marker, rep_done, src,
                 seg_bases["fs"], seg_bases["gs"])
