"""skipcheck: the instruction-skip regression suite.

Every store form the `skip` design's x86 fault handler must step over is run
in a real Machine whose destination is a droppable page under persistent
OOM, in several placements:

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

Each run checks: under `skip`, exactly one skip by the instruction's length
(new rip = rip + length), no destination byte changed, registers and flags
unchanged except the rep progress, and the next instruction ran (a marker
`mov reg, imm32` after the store sets a register the store does not use;
after a page-end skip, the fetch at the page end faults instead).  Under
`retry`, the instruction refaults until the Machine reports a livelock, with
the same memory and register checks and the marker not run.  A 16-byte
instruction must be refused by the CPU (Unicorn raises an exception; the
handler never skips 16 bytes).

Alongside, each encoding's length is cross-checked: capstone (as the
handler sees it: the instruction followed by what follows it in memory),
the corrected skip length, GNU objdump of the same bytes, the length Unicorn
executes, and GNU as assembling the same source (then objdump of GNU as's
bytes): `emulator/skipcheck/lengths.py`.

Machines are built per run from a shared template (one cost profile, one
small image per encoding); runs are spread over worker processes.
"""
from __future__ import annotations

import os
import time
from collections import Counter
from dataclasses import dataclass, field

from emulator.errors import AssemblyError, EmulationError, FaultpathError, UsageError
from emulator.skipcheck.corpus import (BASE, CROSS, Form, LineError, StoreInfo, Variant, apply_words,
                                       assemble_body, line_problem, load_corpus, riprel_body,
                                       store_info, variant_na)

PAGE = 4096
PLACEMENTS = ("plain", "split", "riprel", "page-end", "stack", "stack-split", "rep-partway")
POLICIES = ("skip", "retry")

# Layouts: code (the image text page) and data.  rip-relative stores need data
# within 2 GiB of the code; 0x67 stores need everything below 4 GiB.
HIGH = (0x7E00_0000_0000, 0x7E00_1000_0000)
LOW = (0x0040_0000, 0x1000_0000)
SRC_OFF = 0x0000          # present, readable: movs/push sources, enter frames
PRE_OFF = 0x10000         # present anonymous page right below the droppable page
DROP_OFF = 0x11000        # droppable mapping (2 pages), never allocated under OOM
SDROP_OFF = 0x20000       # droppable "stack": page 0 not present, page 1 present
TARGET_OFF = 0x100        # plain destination inside the droppable page
FS_BASE = 0x10_0000       # with fs/gs the store lands 1/2 MiB above where [regs] point
GS_BASE = 0x20_0000
GARBAGE_HI = 0x1234 << 32  # upper halves of 0x67 address registers (must be ignored)
MARKER = 0x5CA1AB1E
MARKER_LEN = 7            # mov r64, imm32
REP_DONE = 3              # rep-partway: elements completed before the fault
REP_COUNT = 8             # rep count
LIVELOCK = 4              # refaults before the Machine reports a livelock (retry)
INSN_OFF = 0x78           # where the instruction sits in its code page (not page-end)
NOP15 = bytes.fromhex("6666666666662e0f1f840000000000")     # a 15-byte nop (filler)

GPR64 = ("rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rbp", "rsp",
         "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15")
_ALIASES = {}
for _r64, _r32, _r16, _r8 in (("rax", "eax", "ax", "al"), ("rbx", "ebx", "bx", "bl"),
                              ("rcx", "ecx", "cx", "cl"), ("rdx", "edx", "dx", "dl"),
                              ("rsi", "esi", "si", "sil"), ("rdi", "edi", "di", "dil"),
                              ("rbp", "ebp", "bp", "bpl"), ("rsp", "esp", "sp", "spl")):
    for _n in (_r64, _r32, _r16, _r8):
        _ALIASES[_n] = _r64
for _n in ("ah", "bh", "ch", "dh"):
    _ALIASES[_n] = "r" + _n[0] + "x"
for _i in range(8, 16):
    for _s in ("", "d", "w", "b"):
        _ALIASES[f"r{_i}{_s}"] = f"r{_i}"
_ALIASES.update({"rip": "rip", "eip": "rip"})
MARKER_REGS = ("r11", "r10", "r9", "r8", "r15", "r14", "r13", "r12", "rbx", "rbp")
_MARKER_ENC = {"r8": "49c7c0", "r9": "49c7c1", "r10": "49c7c2", "r11": "49c7c3", "r12": "49c7c4",
               "r13": "49c7c5", "r14": "49c7c6", "r15": "49c7c7", "rbx": "48c7c3", "rbp": "48c7c5"}


def gpr_pattern(name: str) -> int:
    """Initial value of a GPR: canonical, never mapped, distinct per register."""
    return 0x5A5A_0000_0000 + (GPR64.index(name) + 1) * 0x0101_0101


def xmm_pattern(i: int) -> int:
    """Every byte >= 0x80, so a maskmov with any of them as the mask stores all bytes."""
    return int.from_bytes(bytes((0x80 + i * 16 + j) & 0xFF | 0x80 for j in range(16)), "little")


def mm_pattern(i: int) -> int:
    return int.from_bytes(bytes(0x80 | (i * 8 + j) for j in range(8)), "little")


_PATTERN = bytes((k * 37 + 11) & 0xFF for k in range(256)) * (3 * PAGE // 256 + 1)


def data_pattern(addr: int, n: int) -> bytes:
    """The bytes a present data page starts with (a function of the address)."""
    if n > 2 * PAGE:
        return b"".join(data_pattern(addr + k, min(PAGE, n - k)) for k in range(0, n, PAGE))
    o = addr & 0xFF
    return _PATTERN[o:o + n]


# --------------------------------------------------------------------------
# Instructions and their encodings
# --------------------------------------------------------------------------

@dataclass
class Instruction:
    """One corpus form crossed with one prefix variant."""
    form: Form
    variant: Variant
    code: bytes                   # plain encoding
    info: StoreInfo
    riprel: bytes | None = None   # rip-relative encoding (placeholder disp) or None
    riprel_info: StoreInfo | None = None
    riprel_na: str = ""
    pad: int = 0                  # redundant ds prefixes added (len15/len16)
    riprel_pad: int = 0

    @property
    def name(self) -> str:
        return self.form.text if self.variant.name == "base" else f"{self.form.text} [{self.variant.name}]"

    @property
    def source_words(self) -> tuple[str, ...]:
        return self.form.words + self.variant.words


@dataclass
class Run:
    """The outcome of one instruction in one placement under one policy."""
    instruction: str
    variant: str
    line: int
    placement: str
    policy: str
    status: str                   # pass | fail | n/a | refused | error
    detail: str = ""
    mnemonic: str = ""
    code: bytes = b""
    length: int = 0
    rip: int = 0
    new_rip: int | None = None
    skip_len: int | None = None
    skipped: bool = False
    refaulted: bool = False
    livelock: bool = False
    dest_unchanged: bool | None = None
    regs_unchanged: bool | None = None
    next_ran: bool | None = None
    readahead: bool = False       # hit "unicorn-readahead" (page-end; checked with the workaround)
    issue: str = ""               # an ISSUES key explaining a failure or a note
    faults: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """Passed: the expected skip (or refault) and nothing else changed;
        for a 16-byte instruction, refused."""
        return self.status in ("pass", "refused")

    @property
    def refused(self) -> bool:
        return self.status == "refused"

    def __str__(self) -> str:
        s = f"{self.instruction} @{self.placement} ({self.policy}): {self.status}"
        if self.status != "n/a":
            s += (f"; length {self.length}, skip_len {self.skip_len}, rip {self.rip:#x} -> "
                  f"{self.new_rip:#x}" if self.new_rip is not None else f"; length {self.length}")
        return s + (f"; {self.detail}" if self.detail else "")

    def as_dict(self) -> dict:
        d = {"instruction": self.instruction, "variant": self.variant, "line": self.line,
             "mnemonic": self.mnemonic, "placement": self.placement, "policy": self.policy,
             "status": self.status, "detail": self.detail}
        if self.status in ("n/a",):
            return d
        d.update({"bytes": self.code.hex(), "length": self.length, "rip": hex(self.rip),
                  "new_rip": None if self.new_rip is None else hex(self.new_rip),
                  "skip_len": self.skip_len, "skipped": self.skipped, "refaulted": self.refaulted,
                  "livelock": self.livelock, "dest_unchanged": self.dest_unchanged,
                  "regs_unchanged": self.regs_unchanged, "next_ran": self.next_ran,
                  "unicorn_readahead": self.readahead, "issue": self.issue or None,
                  "faults": self.faults})
        return d


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


def build_instructions(forms: list[Form], cross: bool) -> tuple[list[Instruction], list[LineError], Counter]:
    """Assemble every form, check it, cross it with prefixes."""
    code_addr = HIGH[0] + INSN_OFF
    out: list[Instruction] = []
    errors: list[LineError] = []
    skipped_variants: Counter = Counter()
    for form in forms:
        try:
            kbytes = assemble_body(form.body, code_addr)
        except AssemblyError as e:
            msg = str(e).split(": ", 1)[-1]
            errors.append(LineError(form.line, form.text, f"does not assemble: {msg}"))
            continue
        except Exception as e:         # keystone itself failing: never crash the run
            errors.append(LineError(form.line, form.text, f"does not assemble: {type(e).__name__}: {e}"))
            continue
        base = apply_words(kbytes, form.words)
        why = line_problem(base)
        if why:
            errors.append(LineError(form.line, form.text, why))
            continue
        info = store_info(base, code_addr)
        if isinstance(info, str):
            errors.append(LineError(form.line, form.text, info))
            continue
        rbody = None if form.raw_bytes else riprel_body(form.body)
        rbytes = None
        rna = ""
        if info.kind != "explicit":
            rna = "no explicit memory destination"
        elif info.moffs and info.dest.segment not in ("fs", "gs"):
            rna = "the address is in the instruction"
        elif form.raw_bytes:
            rna = "raw bytes"
        elif rbody is None:
            rna = "not exactly one memory operand to make rip-relative"
        else:
            try:
                rbytes = apply_words(assemble_body(rbody, code_addr), form.words)
            except AssemblyError as e:
                rna = f"keystone: {str(e).split(': ', 1)[-1]}"
        variants = [BASE] + (list(CROSS) if cross else [])
        for v in variants:
            if v is not BASE:
                na = variant_na(v, base, info)
                if na:
                    skipped_variants[f"{v.name}: {na}"] += 1
                    continue
            code = v.apply(base)
            if code is None:
                skipped_variants[f"{v.name}: no room"] += 1
                continue
            # redundant ds padding changes nothing but the length (capstone may
            # not decode a padded 66 e8 rel16: it reads rel32, past 15 bytes)
            vinfo = info if v is BASE or v.pad_to else store_info(code[:15], code_addr)
            why = None if v.pad_to and v.pad_to > 15 else (
                vinfo if isinstance(vinfo, str) else line_problem(code))
            if why:
                # the crafting rules should never get here: make it visible
                errors.append(LineError(form.line, f"{form.text} [{v.name}]",
                                        f"prefix variant {code.hex(' ')}: {why}"))
                continue
            ins = Instruction(form, v, code, vinfo, pad=len(code) - len(apply_words(base, v.words)))
            if rbytes is not None:
                rcode = v.apply(rbytes)
                if rcode is not None:
                    ins.riprel_pad = len(rcode) - len(apply_words(rbytes, v.words))
                rinfo = store_info(rcode[:15], code_addr) if rcode and len(rcode) <= 15 else None
                if v.pad_to and not isinstance(rinfo, StoreInfo) and rcode and len(rcode) <= 15:
                    rinfo = store_info(apply_words(rbytes, v.words), code_addr)
                if rcode is None:
                    ins.riprel_na = "no room for the padding"
                elif v.pad_to and v.pad_to > 15:
                    ins.riprel_na = "16 bytes: refused before any access"
                elif isinstance(rinfo, str) or rinfo is None or not (rinfo.dest and rinfo.dest.rip):
                    ins.riprel_na = "no rip-relative form"
                else:
                    ins.riprel, ins.riprel_info = rcode, rinfo
            else:
                ins.riprel_na = rna
            out.append(ins)
    return out, errors, skipped_variants


# --------------------------------------------------------------------------
# One run
# --------------------------------------------------------------------------

class _Conflict(Exception):
    pass


class _Regs:
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


def _solve(regs: _Regs, mem, linear: int, addr32: bool) -> None:
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
class _Plan:
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


def plan_run(ins: Instruction, placement: str) -> _Plan:
    info = ins.riprel_info if placement == "riprel" else ins.info
    code = ins.riprel if placement == "riprel" else ins.code
    addr32 = info.addr32
    layout = LOW if addr32 else HIGH
    seg_bases = {"fs": FS_BASE, "gs": GS_BASE}
    fixed = info.moffs and info.dest.segment not in ("fs", "gs")
    if fixed:
        # the address is in the instruction: put the droppable page there
        target = (info.dest.disp + _seg_base(_segment_of(code))) & ((1 << 64) - 1)
        drop = target & ~(PAGE - 1)
        data = drop - DROP_OFF
        if not (0x100000 <= data < 0x7FFF_0000_0000) or (target & (PAGE - 1)) + info.width > 2 * PAGE:
            raise _Conflict("the address in the instruction cannot host the layout")
        layout = (layout[0], data)
    code_base, data = layout
    drop = data + DROP_OFF
    pre_end = data + PRE_OFF + PAGE
    src = data + SRC_OFF + 0x100
    regs = _Regs()
    L = len(code)
    insn_addr = code_base + (PAGE - L if placement == "page-end" else INSN_OFF)
    regs.set("rsp", data + SRC_OFF + 0x800)
    rep_done = 0
    if info.kind == "stack":
        if placement == "stack-split":
            rsp = data + SDROP_OFF + PAGE + info.width // 2
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
        from emulator.skipcheck.corpus import _md
        ri = next(_md().disasm(code, insn_addr, 1))
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
    return _Plan(layout, code, info, insn_addr, target, regs.values, marker, rep_done, src,
                 seg_bases["fs"], seg_bases["gs"])


_PROFILE = None


def _profile():
    global _PROFILE
    if _PROFILE is None:
        from emulator.cycles.profile import load_profile
        _PROFILE = load_profile()
    return _PROFILE


def _code_page(plan: _Plan) -> bytes:
    """The image text: filler, the instruction, the marker, int3, filler.
    The filler keeps the Machine's linear sweep of the image in step with
    the instruction (it looks for multi-piece stores such as fxsave)."""
    off = plan.insn_addr & (PAGE - 1)
    head = NOP15 * (off // 15) + b"\x90" * (off % 15)
    tail = b"\xcc"
    if plan.marker:
        tail = bytes.fromhex(_MARKER_ENC[plan.marker]) + MARKER.to_bytes(4, "little") + b"\xcc"
    elif off + len(plan.code) == PAGE:
        tail = b""
    body = head + plan.code + tail
    rest = PAGE - len(body)
    return body + NOP15 * (rest // 15) + b"\xcc" * (rest % 15)


def _regions(data: int) -> list[tuple[int, int]]:
    return [(data + SRC_OFF, PAGE), (data + PRE_OFF, PAGE), (data + DROP_OFF, 2 * PAGE),
            (data + SDROP_OFF, 2 * PAGE)]


def _new_machine(plan: _Plan, policy: str):
    from emulator.kernel import Kernel
    from emulator.machine import Machine
    from mm import flags as F
    from vdso.image import RNG_DATA_OFFSET_6_15, VdsoImage
    code_base, data = plan.layout
    img = VdsoImage(name="skipcheck", text=_code_page(plan), symbols={"insn": plan.insn_addr - code_base},
                    rng_data_offset=RNG_DATA_OFFSET_6_15, base=code_base, rng_data_source="skipcheck")
    k = Kernel(img, memory_pages=64, profile=_profile())
    # No process stack (_stack=False, as for a fork child): the runs set rsp
    # themselves, and the 16-page stack VMA would double the set-up time.
    m = Machine(k, droppable_oom=policy, livelock_limit=LIVELOCK, name="skipcheck", _stack=False)
    rw = F.PROT_READ | F.PROT_WRITE
    anon = F.MAP_PRIVATE | F.MAP_ANONYMOUS | F.MAP_FIXED
    drop = F.MAP_DROPPABLE | F.MAP_ANONYMOUS | F.MAP_FIXED
    for off, n, fl in ((SRC_OFF, PAGE, anon), (PRE_OFF, PAGE, anon), (DROP_OFF, 2 * PAGE, drop),
                       (SDROP_OFF, 2 * PAGE, drop)):
        r = m.mm.mmap(data + off, n, rw, fl, -1, 0)
        if r != data + off:
            raise EmulationError(f"skipcheck: mmap at {data + off:#x} failed ({r})")
    m.sync()
    for a in (data + SRC_OFF, data + PRE_OFF, data + SDROP_OFF + PAGE):
        m.user_write(a, data_pattern(a, PAGE))
    return m


def _cpu_state(m) -> dict[str, object]:
    from unicorn import x86_const as X
    uc = m.uc
    st = {r: uc.reg_read(getattr(X, f"UC_X86_REG_{r.upper()}")) for r in GPR64}
    st["rflags"] = uc.reg_read(X.UC_X86_REG_RFLAGS) & 0xCD5
    st["fs_base"] = uc.reg_read(X.UC_X86_REG_FS_BASE)
    st["gs_base"] = uc.reg_read(X.UC_X86_REG_GS_BASE)
    for i in range(16):
        st[f"xmm{i}"] = uc.reg_read(getattr(X, f"UC_X86_REG_XMM{i}"))
    for i in range(8):
        st[f"st{i}"] = uc.reg_read(getattr(X, f"UC_X86_REG_FP{i}"))
    st["mxcsr"] = uc.reg_read(X.UC_X86_REG_MXCSR)
    st["fpcw"] = uc.reg_read(X.UC_X86_REG_FPCW)
    st["fpsw"] = uc.reg_read(X.UC_X86_REG_FPSW)
    st["fptag"] = uc.reg_read(X.UC_X86_REG_FPTAG)
    return st


def _set_cpu(m, plan: _Plan) -> None:
    from unicorn import x86_const as X
    uc = m.uc
    for r in GPR64:
        uc.reg_write(getattr(X, f"UC_X86_REG_{r.upper()}"), plan.regs.get(r, gpr_pattern(r)))
    uc.reg_write(X.UC_X86_REG_RFLAGS, 0x2C7)         # CF PF ZF SF set, DF clear
    uc.reg_write(X.UC_X86_REG_FS_BASE, plan.fs_base)
    uc.reg_write(X.UC_X86_REG_GS_BASE, plan.gs_base)
    uc.reg_write(X.UC_X86_REG_MXCSR, 0x1F80)
    uc.reg_write(X.UC_X86_REG_FPCW, 0x037F)
    for i in range(16):
        uc.reg_write(getattr(X, f"UC_X86_REG_XMM{i}"), xmm_pattern(i))
    for i in range(8):
        uc.reg_write(getattr(X, f"UC_X86_REG_FP{i}"), (mm_pattern(i), 0xFFFF))
    uc.reg_write(X.UC_X86_REG_RIP, plan.insn_addr)


def _expected_memory(plan: _Plan, before: dict[int, bytes], m_state: dict[str, object]) -> dict[int, bytes]:
    """Memory after the run: unchanged but for the rep elements done."""
    exp = dict(before)
    if plan.rep_done:
        info = plan.info
        n = plan.rep_done * info.width
        if info.mnemonic.startswith("stos"):
            val = (m_state["rax"] & ((1 << (8 * info.width)) - 1)).to_bytes(info.width, "little")
            data = val * plan.rep_done
        else:
            data = data_pattern(plan.rep_src, n)
        for start, blob in exp.items():
            if start <= plan.target < start + len(blob):
                off = plan.target - start
                exp[start] = blob[:off] + data + blob[off + n:]
    return exp


def _expected_regs(plan: _Plan, before: dict[str, object], policy: str, page_end: bool,
                   refused: bool = False) -> dict[str, object]:
    exp = dict(before)
    info = plan.info
    if plan.rep_done:
        mask = 0xFFFF_FFFF if info.addr32 else (1 << 64) - 1
        n = plan.rep_done * info.width
        exp["rcx"] = (before["rcx"] - plan.rep_done) & mask
        exp["rdi"] = (before["rdi"] + n) & mask
        if info.mnemonic.startswith("movs"):
            exp["rsi"] = (before["rsi"] + n) & mask
    if policy == "skip" and plan.marker and not page_end and not refused:
        exp[plan.marker] = MARKER
    return exp


def _diff(a: dict, b: dict) -> list[str]:
    out = []
    for k in a:
        if a[k] != b.get(k):
            va, vb = a[k], b.get(k)
            fa = hex(va) if isinstance(va, int) else str(va)
            fb = hex(vb) if isinstance(vb, int) else str(vb)
            out.append(f"{k}: {fb} (want {fa})")
    return out


# Emulator issues skipcheck recognises, by key.  Runs name the key; the
# report explains each once.
ISSUES = {
    "unicorn-readahead": (
        "Unicorn 2.1.4 fetches the page after an instruction that ends exactly at a page end before "
        "running it: with that page unmapped (or PROT_NONE) the Machine sees an instruction-fetch fault "
        "at the page end and delivers SIGSEGV instead of running the instruction (reproduced with a bare "
        "Uc).  An exit at the page end (emu_start until=, or ctl_set_exits) avoids it; skipcheck notes "
        "the run and checks the skip again with such an exit."),
    "unicorn-helper-rip": (
        "Unicorn 2.1.4 leaves rip past an instruction whose store is done in a QEMU helper (fxsave, "
        "fnsave, fnstenv, fstp m80, fbstp, cmpxchg8b/16b, maskmovdqu/maskmovq) when the store faults, "
        "and the helper goes on (more pieces, register updates: cmpxchg8b/16b load rdx:rax).  The "
        "Machine takes rip after emu_start, so it decodes and skips the *next* instruction and keeps the "
        "partial pieces.  Inside the fault hook rip is still right: the Machine should take rip (and the "
        "registers) from the hook."),
    "unicorn-flags-before-store": (
        "Unicorn 2.1.4 computes rcl/rcr on memory in a helper that updates RFLAGS (CF, OF) before the "
        "store; when the store faults the flags stay changed (the CPU leaves them alone).  Under retry "
        "the rotate re-executes with the changed CF."),
    "unicorn-len16-access": (
        "For a 16-byte instruction whose last byte is an immediate fetched after the memory operand "
        "(bt*/bts imm8), Unicorn 2.1.4 (QEMU 5) performs the operand's load before raising the "
        "exception for the over-long instruction; the CPU refuses it before any access."),
}


def _readahead(ctx, plan: _Plan) -> bool:
    """The run ended in a fetch fault at the end of the instruction's page
    before the instruction did anything."""
    end = (plan.insn_addr | (PAGE - 1)) + 1
    f = ctx.result.faults
    return (ctx.result.outcome == "signal" and len(f) >= 1 and f[0].access == "exec"
            and f[0].address == end and f[0].rip == plan.insn_addr)


def _start(plan: _Plan, policy: str, page_end: bool, workaround: bool, m=None):
    """A fresh Machine for ``plan`` (or ``m`` again, when nothing ran), run
    up to and including the instruction (and the marker)."""
    from emulator.kernel import SENTINEL_PAGE
    from emulator.records import CallContext
    from emulator.records import CallResult
    if m is None:
        m = _new_machine(plan, policy)
        m.kernel.phys.fail_allocations(persistent=True)
    data = plan.layout[1]
    before_mem = {a: m.read(a, n) for a, n in _regions(data)}
    _set_cpu(m, plan)
    before = _cpu_state(m)
    ctx = CallContext(result=CallResult(size=0, process=m.name), rip=plan.insn_addr, budget=10_000)
    if workaround:
        m.uc.ctl_flush_tb()
        m.uc.ctl_exits_enabled(True)
        m.uc.ctl_set_exits([SENTINEL_PAGE, (plan.insn_addr | (PAGE - 1)) + 1])
    # Page-end: stop once the instruction retired (skipped).  Otherwise run to
    # the int3 after the marker (an instruction count would not do: the
    # Machine counts a rep that made progress and was then skipped twice).
    m.run(ctx, stop_at=1 if page_end else None)
    if workaround:
        m.uc.ctl_exits_enabled(False)
    return m, ctx, before_mem, before


def execute(ins: Instruction, placement: str, policy: str) -> Run:
    """Run ``ins`` in ``placement`` under ``policy`` and check the outcome."""
    from emulator.insn_length import skip_length
    code = ins.riprel if placement == "riprel" else ins.code
    run = Run(ins.name, ins.variant.name, ins.form.line, placement, policy, "error", code=code,
              length=len(code), mnemonic=ins.info.mnemonic)
    try:
        plan = plan_run(ins, placement)
    except _Conflict as e:
        run.status, run.detail = "n/a", str(e)
        return run
    run.code = plan.code
    run.rip = plan.insn_addr
    refuse16 = len(plan.code) > 15
    page_end = placement == "page-end"
    m, ctx, before_mem, before = _start(plan, policy, page_end, workaround=False)
    try:
        data = plan.layout[1]
        if page_end and _readahead(ctx, plan):
            # Unicorn 2.1.4 fetched the (unmapped) page after the instruction
            # before running it; see ISSUES["unicorn-readahead"].  Note it, and check the
            # skip itself with the Machine stopped at the page end.
            run.readahead = True
            run.issue = "unicorn-readahead"
            # nothing ran: the same Machine again, with an exit at the page end
            m, ctx, before_mem, before = _start(plan, policy, page_end, workaround=True, m=m)
        res = ctx.result
        writes = [f for f in res.faults if f.access == "write" and f.rip == plan.insn_addr]
        skips = [f for f in res.faults if f.decision == "skip"]
        run.faults = [f.line() for f in res.faults]
        run.skipped = bool(skips)
        run.skip_len = skips[0].skip_len if skips else None
        run.new_rip = skips[0].new_rip if skips else ctx.rip
        run.refaulted = any(f.repeats > 1 or f.decision in ("retry", "retry-oom", "livelock") for f in writes)
        run.livelock = res.outcome == "livelock"
        after_mem = {a: m.read(a, n) for a, n in _regions(data)}
        after = _cpu_state(m)
        exp_mem = _expected_memory(plan, before_mem, before)
        exp_regs = _expected_regs(plan, before, policy, page_end, refuse16)
        problems: list[str] = []
        run.dest_unchanged = after_mem == exp_mem
        if not run.dest_unchanged:
            for a in exp_mem:
                if exp_mem[a] != after_mem[a]:
                    k = next(i for i in range(len(exp_mem[a])) if exp_mem[a][i] != after_mem[a][i])
                    problems.append(f"memory at {a + k:#x} changed "
                                    f"({exp_mem[a][k:k + 8].hex()} -> {after_mem[a][k:k + 8].hex()})")
                    break
        rdiff = _diff(exp_regs, after)
        run.regs_unchanged = not rdiff
        if rdiff:
            problems.append("registers: " + ", ".join(rdiff[:6]))
            if all(d.startswith("rflags") for d in rdiff) and plan.info.mnemonic in ("rcl", "rcr"):
                run.issue = "unicorn-flags-before-store"
        if refuse16:
            # The CPU refuses an instruction longer than 15 bytes (#GP); Unicorn
            # raises an exception before any access; the handler never skips it.
            fetched = m.read(plan.insn_addr, 15)
            if skip_length(fetched) is not None:
                problems.append(f"skip_length of the first 15 bytes is {skip_length(fetched)}, not None")
            if skips:
                problems.append(f"a {skips[0].skip_len}-byte skip of a 16-byte instruction")
            if res.outcome != "signal" or any(f.access != "read" for f in res.faults):
                problems.append(f"not refused: outcome {res.outcome}, {len(res.faults)} fault(s)")
            elif res.faults:
                run.issue = "unicorn-len16-access"       # refused, after a read access
            if ctx.rip != plan.insn_addr:
                problems.append(f"rip moved to {ctx.rip:#x}")
            run.next_ran = False
            run.status = "fail" if problems else "refused"
            run.detail = "; ".join(problems) or f"refused: {res.outcome_detail}" + (
                " (after a read of the operand)" if run.issue else "")
            return run
        if not writes:
            late = [f for f in res.faults if f.access == "write" and f.rip != plan.insn_addr]
            if late and late[0].rip == plan.insn_addr + len(plan.code):
                run.issue = "unicorn-helper-rip"
                problems.append(f"the write fault was reported at the next instruction ({late[0].rip:#x}, "
                                f"[{late[0].insn}])")
            else:
                problems.append(f"no write fault at the instruction (outcome {res.outcome}: "
                                f"{res.outcome_detail})")
        bad = [f for f in writes if "dp" not in f.vm_flags.split()]
        if bad:
            problems.append(f"write fault outside the droppable mapping at {bad[0].address:#x}")
        if policy == "skip":
            end = plan.insn_addr + len(plan.code)
            if len(skips) != 1:
                problems.append(f"{len(skips)} skips (want 1); outcome {res.outcome} {res.outcome_detail}")
            elif run.skip_len != len(plan.code) or skips[0].new_rip != end:
                problems.append(f"skipped {run.skip_len} bytes to {skips[0].new_rip:#x} "
                                f"(want {len(plan.code)} to {end:#x})")
            if page_end:
                ran_to = ctx.rip
                if ran_to != end:
                    problems.append(f"rip {ran_to:#x} after the skip (want the page end {end:#x})")
                # the next "instruction" is the page end: its fetch must fault
                m.run(ctx, stop_at=2)
                ex = [f for f in ctx.result.faults if f.access == "exec"]
                run.next_ran = bool(ex) and ex[-1].rip == end and ctx.result.outcome == "signal"
                if not run.next_ran:
                    problems.append(f"no instruction-fetch fault at the page end {end:#x} "
                                    f"(outcome {ctx.result.outcome}: {ctx.result.outcome_detail})")
            else:
                # the run ends at the int3 after the marker (a trap: rip after it)
                final = m.reg("rip")
                run.next_ran = (after.get(plan.marker) == MARKER and final == end + MARKER_LEN + 1
                                and res.outcome == "signal")
                if not run.next_ran:
                    problems.append(f"the marker after the instruction did not run (rip {final:#x}, "
                                    f"outcome {res.outcome}: {res.outcome_detail})")
        else:
            run.next_ran = plan.marker is not None and after.get(plan.marker) == MARKER
            if skips:
                problems.append("skipped under retry")
            if not run.livelock:
                problems.append(f"no livelock (outcome {res.outcome}: {res.outcome_detail})")
            if not run.refaulted:
                problems.append("no refault")
            if ctx.rip != plan.insn_addr:
                problems.append(f"rip {ctx.rip:#x} (want the instruction, {plan.insn_addr:#x})")
            if run.next_ran:
                problems.append("the next instruction ran")
        run.status = "fail" if problems else "pass"
        run.detail = "; ".join(problems)
        return run
    except FaultpathError as e:
        run.status, run.detail = "error", f"{type(e).__name__}: {e}"
        return run
    finally:
        m.close()


# --------------------------------------------------------------------------
# The whole suite
# --------------------------------------------------------------------------

@dataclass
class Report:
    corpus: str
    policy: str
    instructions: int = 0
    runs: list[Run] = field(default_factory=list)
    line_errors: list[LineError] = field(default_factory=list)
    variants_not_applicable: Counter = field(default_factory=Counter)
    lengths: list = field(default_factory=list)          # skipcheck_lengths.LengthCheck
    length_notes: list[str] = field(default_factory=list)
    seconds: float = 0.0
    jobs: int = 1

    @property
    def counts(self) -> Counter:
        return Counter(r.status for r in self.runs)

    @property
    def divergences(self) -> list:
        return [c for c in self.lengths if c.cls != "agree"]

    @property
    def unexplained(self) -> list:
        return [c for c in self.lengths if c.cls == "unexplained"]

    @property
    def ok(self) -> bool:
        c = self.counts
        return not c.get("fail") and not c.get("error") and not self.unexplained and not self.line_errors

    def as_dict(self) -> dict:
        c = self.counts
        by_place = {}
        for r in self.runs:
            by_place.setdefault(r.placement, Counter())[r.status] += 1
        return {
            "corpus": self.corpus, "policy": self.policy, "instructions": self.instructions,
            "runs": len(self.runs),
            "summary": {k: c.get(k, 0) for k in ("pass", "refused", "fail", "error", "n/a")},
            "by_placement": {p: dict(by_place.get(p, {})) for p in PLACEMENTS},
            "line_errors": [e.as_dict() for e in self.line_errors],
            "issues": {k: {"runs": dict(v), "explanation": ISSUES[k]}
                       for k, v in sorted(_issue_counts(self.runs).items())},
            "variants_not_applicable": dict(sorted(self.variants_not_applicable.items())),
            "lengths": {"checked": len(self.lengths),
                        "classes": dict(Counter(x.cls for x in self.lengths)),
                        "gas": dict(Counter(x.gas_class for x in self.lengths)),
                        "notes": self.length_notes},
            "divergences": [x.as_dict() for x in self.divergences],
            "gas_differences": [x.as_dict() for x in self.lengths if x.gas_class not in ("same", "n/a")],
            "failures": [r.as_dict() for r in self.runs if r.status in ("fail", "error")],
            "results": [r.as_dict() for r in self.runs],
            "seconds": round(self.seconds, 2), "jobs": self.jobs,
        }


def _task(args) -> tuple[list[Run], dict[bytes, int | None]]:
    """Worker: every placement of one instruction, plus Unicorn's length of
    each distinct encoding."""
    ins, policy, placements, want_lengths = args
    from emulator.skipcheck.oracles import unicorn_length
    runs = []
    lengths: dict[bytes, int | None] = {}
    for placement, na in placements_for(ins).items():
        if placements and placement not in placements:
            continue
        if na:
            runs.append(Run(ins.name, ins.variant.name, ins.form.line, placement, policy, "n/a", na,
                            mnemonic=ins.info.mnemonic))
            continue
        try:
            runs.append(execute(ins, placement, policy))
        except Exception as e:          # a bug, or code the emulator chokes on: this run only
            runs.append(Run(ins.name, ins.variant.name, ins.form.line, placement, policy, "error",
                            f"{type(e).__name__}: {e}", code=ins.code, mnemonic=ins.info.mnemonic))
    if want_lengths:
        for code in (ins.code, ins.riprel):
            if code is not None and len(code) <= 15:
                lengths[code] = unicorn_length(code)
    return runs, lengths


def _died(task) -> tuple[list[Run], dict]:
    ins, policy = task[0], task[1]
    return ([Run(ins.name, ins.variant.name, ins.form.line, "plain", policy, "error",
                 "the emulator process died running this instruction")], {})


def _pool_map(tasks: list, jobs: int):
    """Run tasks in worker processes (fork).  A worker that dies (Unicorn can
    abort the process on code it cannot run) costs only the task it was
    running, which is reported as an error: after a broken pool the first
    unfinished tasks (those that were running) are retried one per process,
    the rest go on in a fresh pool."""
    if jobs <= 0:                    # in this process (debugging): no protection
        for t in tasks:
            yield t, _task(t)
        return
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor
    from concurrent.futures.process import BrokenProcessPool
    ctx = mp.get_context("fork")
    pending = list(range(len(tasks)))
    while pending:
        done: set[int] = set()
        broken = False
        with ProcessPoolExecutor(max_workers=jobs, mp_context=ctx) as ex:
            futs = [(i, ex.submit(_task, tasks[i])) for i in pending]
            for i, f in futs:
                try:
                    res = f.result()
                except BrokenProcessPool:
                    broken = True
                    continue
                done.add(i)
                yield tasks[i], res
        pending = [i for i in pending if i not in done]
        if not broken:
            return
        suspects, pending = pending[:jobs], pending[jobs:]
        for i in suspects:
            with ProcessPoolExecutor(max_workers=1, mp_context=ctx) as ex:
                try:
                    yield tasks[i], ex.submit(_task, tasks[i]).result()
                except BrokenProcessPool:
                    yield tasks[i], _died(tasks[i])


def run_skipcheck(corpus: str = "builtin", policy: str = "skip", *, cross: bool | None = None,
                  placements: tuple[str, ...] | None = None, jobs: int | None = None,
                  lengths: bool = True, select=None) -> Report:
    """The whole suite.  ``corpus`` is "builtin" or a file; ``cross`` crosses
    every line with prefixes (default: for the builtin corpus only);
    ``select(instruction) -> bool`` keeps a subset (tests)."""
    if policy not in POLICIES:
        raise UsageError(f"--droppable-oom {policy!r}: expected skip or retry")
    for p in placements or ():
        if p not in PLACEMENTS:
            raise UsageError(f"unknown placement {p!r} (expected one of {', '.join(PLACEMENTS)})")
    t0 = time.monotonic()
    name, forms, errors = load_corpus(corpus)
    if not forms and not errors:
        raise UsageError(f"{corpus}: no instructions in the corpus")
    if cross is None:
        cross = corpus == "builtin"
    instructions, more_errors, na_variants = build_instructions(forms, cross)
    if select is not None:
        instructions = [i for i in instructions if select(i)]
    if jobs is None:
        jobs = min(len(instructions) or 1, os.cpu_count() or 1)
    report = Report(name, policy, len(instructions), line_errors=sorted(errors + more_errors, key=lambda e: e.line),
                    variants_not_applicable=na_variants, jobs=jobs)
    tasks = [(ins, policy, tuple(placements or ()), lengths) for ins in instructions]
    unicorn: dict[bytes, int | None] = {}
    for _task_args, (runs, lens) in _pool_map(tasks, jobs):
        report.runs.extend(runs)
        unicorn.update(lens)
    if lengths:
        from emulator.skipcheck.lengths import cross_check
        report.lengths, report.length_notes = cross_check(instructions, report.runs, unicorn)
    report.seconds = time.monotonic() - t0
    return report


def _issue_counts(runs: list[Run]) -> dict[str, Counter]:
    out: dict[str, Counter] = {}
    for r in runs:
        if r.issue:
            out.setdefault(r.issue, Counter())[r.status] += 1
    return out


def format_report(report: Report, verbose: bool = False) -> str:
    c = report.counts
    ran = len(report.runs) - c.get("n/a", 0)
    lines = [f"skipcheck: corpus {report.corpus}, --droppable-oom {report.policy}: "
             f"{report.instructions} instructions x {len(PLACEMENTS)} placements = {len(report.runs)} cases, "
             f"{ran} run ({report.seconds:.1f} s, {report.jobs} jobs)"]
    lines.append("  " + ", ".join(f"{k} {c.get(k, 0)}" for k in ("pass", "refused", "fail", "error", "n/a")))
    by_place: dict[str, Counter] = {}
    for r in report.runs:
        by_place.setdefault(r.placement, Counter())[r.status] += 1
    for p in PLACEMENTS:
        pc = by_place.get(p, Counter())
        lines.append(f"    {p:<12} " + "  ".join(f"{k} {pc.get(k, 0):>4}"
                                                 for k in ("pass", "refused", "fail", "error", "n/a")))
    if report.line_errors:
        lines.append(f"  corpus lines refused: {len(report.line_errors)}")
        for e in report.line_errors:
            lines.append(f"    line {e.line}: {e.text}: {e.error}")
    issues = _issue_counts(report.runs)
    if issues:
        lines.append("  emulator issues met:")
        for key, cnt in sorted(issues.items()):
            lines.append(f"    {key}: " + ", ".join(f"{k} {v}" for k, v in sorted(cnt.items())))
            lines.append(f"      {ISSUES[key]}")
    bad = [r for r in report.runs if r.status in ("fail", "error")]
    if bad:
        lines.append(f"  failures: {len(bad)}")
        by_insn: dict[tuple, list[Run]] = {}
        for r in bad:
            by_insn.setdefault((r.line, r.instruction.split(" [")[0], r.issue), []).append(r)
        for (line, text, issue), rs in sorted(by_insn.items(), key=lambda kv: kv[0][0]):
            where = sorted({f"{r.variant}@{r.placement}" for r in rs})
            lines.append(f"    line {line} {text}: {len(rs)} run(s)" + (f" [{issue}]" if issue else ""))
            shown = rs if verbose else rs[:1]
            for r in shown:
                lines.append(f"      {r.variant}@{r.placement} {r.code.hex(' ')}: {r.detail}")
                if verbose:
                    lines.extend(f"        {f}" for f in r.faults[:4])
            if not verbose and len(rs) > 1:
                lines.append(f"      also: {', '.join(where[:12])}{' ...' if len(where) > 12 else ''}")
    if report.lengths:
        cls = Counter(x.cls for x in report.lengths)
        lines.append(f"  lengths cross-checked: {len(report.lengths)} encodings; "
                     + ", ".join(f"{k} {v}" for k, v in sorted(cls.items())))
        for x in report.divergences:
            lines.append(f"    {x.cls}: {x.line_text()}")
        gas = Counter(x.gas_class for x in report.lengths)
        lines.append("  GNU as on the same source: " + ", ".join(f"{k} {v}" for k, v in sorted(gas.items())))
        for x in report.lengths:
            if x.gas_class in ("other-length", "rejected") or (verbose and x.gas_class == "other-encoding"):
                lines.append(f"    {x.gas_class}: {x.gas_line()}")
        for note in report.length_notes:
            lines.append(f"    note: {note}")
    if verbose and report.variants_not_applicable:
        lines.append("  prefix variants not applicable:")
        for k, v in sorted(report.variants_not_applicable.items()):
            lines.append(f"    {v:>4}  {k}")
    lines.append("  OK" if report.ok else "  FAILED")
    return "\n".join(lines)


# --------------------------------------------------------------------------
# One instruction at a time (the pytest plugin, interactive use)
# --------------------------------------------------------------------------

def _as_line(insn: str | bytes) -> str:
    if isinstance(insn, (bytes, bytearray)):
        if not insn:
            raise UsageError("no instruction bytes")
        return ".byte " + ", ".join(f"{b:#04x}" for b in insn)
    text = insn.strip()
    if not text or "\n" in text:
        raise UsageError(f"{insn!r}: give exactly one instruction")
    return text


def instruction(insn: str | bytes, variant: str = "base") -> Instruction:
    """An Instruction from one corpus line (Intel syntax, prefix words
    allowed) or from raw bytes; UsageError with the reason otherwise."""
    from emulator.skipcheck.corpus import parse_corpus
    line = _as_line(insn)
    forms, errors = parse_corpus(line)
    if errors:
        raise UsageError(f"{line}: {errors[0].error}")
    built, errors, _ = build_instructions(forms, cross=variant != "base")
    if errors:
        raise UsageError(f"{line}: {errors[0].error}")
    for ins in built:
        if ins.variant.name == variant:
            return ins
    raise UsageError(f"{line}: prefix variant {variant!r} does not apply")


def run_instruction(insn: str | bytes, placement: str = "plain", policy: str = "skip",
                    variant: str = "base") -> Run:
    """Run one instruction in one placement under one policy, in this
    process; the Run says whether it was skipped (by how much, to where),
    refaulted, left the destination and the registers alone, and whether
    the next instruction ran.  For push/call/enter "plain" and "split" mean
    "stack" and "stack-split".  Raises UsageError for a bad instruction;
    a placement that does not apply gives status "n/a"."""
    if placement not in PLACEMENTS:
        raise UsageError(f"unknown placement {placement!r} (expected one of {', '.join(PLACEMENTS)})")
    if policy not in POLICIES:
        raise UsageError(f"unknown policy {policy!r} (expected skip or retry)")
    ins = instruction(insn, variant)
    if ins.info.kind == "stack" and placement in ("plain", "split"):
        placement = "stack" if placement == "plain" else "stack-split"   # where a push goes
    na = placements_for(ins)[placement]
    if na:
        return Run(ins.name, ins.variant.name, ins.form.line, placement, policy, "n/a", na)
    return execute(ins, placement, policy)


@dataclass
class OomMachine:
    """A Machine running user code against a droppable page under persistent
    OOM.  Addresses (HIGH layout, or LOW with low=True: everything < 4 GiB):

      code          the first byte of the code (an int3 follows it)
      oom_page      droppable, not present: every write there needs an allocation, which fails
      present_page  an anonymous page right below oom_page, present, filled with a pattern
      source_page   a present, readable page (data_pattern)
      stack_oom     a droppable "stack" page, not present (stack_oom + PAGE is present)
    """
    machine: object
    code: int
    oom_page: int
    present_page: int
    source_page: int
    stack_oom: int
    fs_base: int = FS_BASE
    gs_base: int = GS_BASE

    def run(self, regs: dict[str, int] | None = None, budget: int = 100_000):
        """Set the registers (others get gpr_pattern values) and run from
        ``code`` until the trailing int3 (outcome "signal"), a livelock, a
        real signal or the budget; returns the CallResult."""
        from emulator.records import CallContext
        from emulator.records import CallResult
        m = self.machine
        plan = _Plan((self.code & ~(PAGE - 1), self.oom_page - DROP_OFF), b"", None, self.code, 0,
                     dict(regs or {}), None)
        _set_cpu(m, plan)
        ctx = CallContext(result=CallResult(size=0, process=m.name), rip=self.code, budget=budget)
        m.run(ctx)
        return ctx.result

    def close(self) -> None:
        self.machine.close()


def oom_machine(code: str | bytes, policy: str = "skip", low: bool = False) -> OomMachine:
    """Assemble ``code`` (keystone, Intel syntax, several lines allowed) or
    take its bytes, and build an OomMachine around it."""
    if policy not in POLICIES:
        raise UsageError(f"unknown policy {policy!r} (expected skip or retry)")
    layout = LOW if low else HIGH
    addr = layout[0] + INSN_OFF
    raw = bytes(code) if isinstance(code, (bytes, bytearray)) else assemble_body(code, addr)
    if len(raw) + INSN_OFF + 1 > PAGE:
        raise UsageError(f"{len(raw)} bytes of code: more than a page")
    plan = _Plan(layout, raw, None, addr, 0, {}, None)
    m = _new_machine(plan, policy)
    m.kernel.phys.fail_allocations(persistent=True)
    data = layout[1]
    return OomMachine(m, addr, data + DROP_OFF, data + PRE_OFF, data + SRC_OFF, data + SDROP_OFF)
