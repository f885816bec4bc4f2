"""Where an access goes, and the page states that make it fault.

Data pages have fixed roles: pages 0 and 1 are the target pair (an access
inside one of them, or straddling from 0 into 1), page 2 is the source of
string moves and of what `push [rsi]`/`call [rsi]` read, page 3 stays present,
pages 4 and 5 hold the stack (rsp starts in page 5; a stack access that is
the target goes to the pair 4|5 the same way).
"""
from __future__ import annotations

from dataclasses import dataclass

from emulator.diffcheck.build import SequenceBuilder, patch_disp
from emulator.diffcheck.forms import AccessForm
from emulator.diffcheck.layout import FAULTING_STATES, HAS_CONTENT, PAGE, data_page
from emulator.diffcheck.operands import solve
from emulator.diffcheck.records import DiffcheckError

TARGET_PAIR = (0, 1)
SOURCE_PAGE = 2
SPARE_PAGE = 3
STACK_PAIR = (4, 5)
STACK_HOME = data_page(5) + 0x800          # rsp when the stack is not the target
FRAME_HOME = data_page(5) + 0xC00          # rbp (enter with nesting reads below it)
PLACEMENTS = ("inside", "straddle")
OTHER_STATES = ("readonly", "unmapped")    # states that end the sequence with SIGSEGV


@dataclass
class Placement:
    state: str             # the state of the page the access faults on
    where: str             # inside | straddle
    other: str = "present"   # the other page of the pair

    def text(self) -> str:
        if self.where == "inside":
            return f"{self.state}"
        return f"straddle present|{self.state}" if self.other == "present" else f"straddle {self.other}|{self.state}"


def random_placement(rng, form: AccessForm) -> Placement:
    where = "straddle" if form.insn.access_size > 1 and rng.random() < 0.3 else "inside"
    k = rng.random()
    state = rng.choice(FAULTING_STATES) if k < 0.9 else rng.choice(OTHER_STATES + ("present",))
    other = "present" if rng.random() < 0.8 else rng.choice(FAULTING_STATES)
    return Placement(state, where, other)


def place(b: SequenceBuilder, form: AccessForm, pl: Placement) -> int:
    """Emit `form` at the builder's current address with registers, bases and
    page states that put its access where `pl` says.  Returns the target."""
    rng = b.rng
    insn = form.insn
    size = insn.access_size
    align = max(insn.align, 1)
    if form.mem is not None and form.mem.base is None and form.mem.index is not None:
        align = max(align, form.mem.scale)       # [index*scale + disp]: index must come out whole
    pair = STACK_PAIR if form.is_stack else TARGET_PAIR
    lo, hi = data_page(pair[0]), data_page(pair[1])
    if pl.where == "straddle":
        # The access starts in the low page and ends in the high one, which faults.
        span = min(size, PAGE) - 1
        back = rng.randrange(1, span + 1) if span >= 1 else 1
        back = max(align, (back + align - 1) // align * align) if align > 1 else back
        if back >= size:
            back = max(1, size - 1) if align == 1 else 0
        target = hi - back if back else hi
        b.pages[pair[0]], b.pages[pair[1]] = pl.other, pl.state
    else:
        page = rng.choice(pair)
        room = PAGE - min(size, PAGE)
        off = rng.randrange(0, room // align + 1) * align
        target = data_page(page) + off
        b.pages[page] = pl.state
    at = b.here
    code = form.code
    regs = b.regs
    if form.is_stack:
        _place_stack(b, form, target)
    else:
        if not any(m.base == "rsp" or m.index == "rsp" for m in insn.mems):
            regs["rsp"] = STACK_HOME
        mems = insn.mems
        mem = form.mem
        if mem is None and form.mnemonic in ("maskmovdqu", "maskmovq"):
            regs["rdi"] = target
        elif mem is not None:
            code = _aim(b, form, mem, target, at, code)
            for other in mems:
                if other is mem:
                    continue
                # the second operand of movs/cmps: the source page
                src = data_page(SOURCE_PAGE) + rng.randrange(0, PAGE - 64)
                got = solve(other, src, rng, regs)
                if got is None:
                    raise DiffcheckError(f"diffcheck: cannot place the second operand of {form.text!r}")
                regs.update(got)
        if form.is_string:
            _string_setup(b, form, pl, target)
    _operand_values(b, form)
    b.emit(form.text, code)
    if form.mnemonic == "call":
        _call_continuation(b, form, at)
    return target


def _aim(b: SequenceBuilder, form: AccessForm, mem, target: int, at: int, code: bytes) -> bytes:
    insn = form.insn
    regs = b.regs
    if mem.base == "rip":
        end = at + len(code)
        base_val = regs.get(f"{mem.segment}_base", 0) if mem.segment in ("fs", "gs") else 0
        return patch_disp(code, insn.disp_offset, insn.disp_size, target - base_val - end)
    if mem.segment in ("fs", "gs"):
        got = {} if (mem.base is None and mem.index is None) else solve(mem, target - 0x1000, b.rng, regs)
        if got is None:
            raise DiffcheckError(f"diffcheck: cannot place {form.text!r}")
        regs.update(got)
        idx = regs.get(mem.index, 0) * mem.scale if mem.index else 0
        base = regs.get(mem.base, 0) if mem.base else 0
        regs[f"{mem.segment}_base"] = (target - mem.disp - idx - base) & (1 << 64) - 1
        return code
    if mem.base is None and mem.index is None:
        # moffs / absolute disp32: the address is in the instruction
        return patch_disp(code, insn.disp_offset, insn.disp_size, target)
    got = solve(mem, target, b.rng, regs)
    if got is None:
        raise DiffcheckError(f"diffcheck: cannot place {form.text!r} at {target:#x}")
    regs.update(got)
    return code


def _place_stack(b: SequenceBuilder, form: AccessForm, target: int) -> None:
    regs = b.regs
    m = form.mnemonic
    if m in ("pop", "popfq"):
        regs["rsp"] = target
    else:
        width = _stack_width(form.insn.raw)
        regs["rsp"] = target + width
    if m == "enter":
        regs["rbp"] = FRAME_HOME
    for mem in form.insn.mems:
        if mem.base and mem.base != "rsp":           # push [rsi], call [rsi], pop [rdi]
            where = data_page(SOURCE_PAGE) + b.rng.randrange(0, PAGE - 64) // 8 * 8
            got = solve(mem, where, b.rng, regs)
            if got is None:
                raise DiffcheckError(f"diffcheck: cannot place the operand of {form.text!r}")
            regs.update(got)


def _stack_width(raw: bytes) -> int:
    """Bytes a push or call stores: 2 with an operand-size prefix and no REX.W."""
    k, has66 = 0, False
    while k < len(raw) and raw[k] in (0x66, 0x67, 0xF0, 0xF2, 0xF3, 0x2E, 0x36, 0x3E, 0x26, 0x64, 0x65):
        has66 |= raw[k] == 0x66
        k += 1
    rex_w = k < len(raw) and raw[k] & 0xF8 == 0x48
    return 2 if has66 and not rex_w else 8


def _string_setup(b: SequenceBuilder, form: AccessForm, pl: Placement, target: int) -> None:
    """rcx for rep (a few elements, crossing the page end when straddling),
    and DF now and then (backwards)."""
    regs = b.regs
    elem = form.insn.access_size
    if form.prefix_rep:
        regs["rcx"] = b.rng.randrange(1, 9)
        if pl.where == "straddle":
            regs["rcx"] = max(regs["rcx"], 2 + (data_page(1) - target) // elem)
    if b.rng.random() < 0.15:
        regs["rflags"] = regs.get("rflags", 0x202) | 1 << 10     # DF: the string runs downwards


def _operand_values(b: SequenceBuilder, form: AccessForm) -> None:
    """Register operands that select an address must stay small (bt* with a
    register bit offset reaches offset/8 bytes away); xsave's component mask."""
    regs, rng = b.regs, b.rng
    m = form.mnemonic
    ops = form.insn.op_str.split(", ")
    if m in ("bt", "bts", "btr", "btc") and len(ops) == 2 and "ptr" in ops[0] and not ops[1].startswith(("0x",)) \
            and not ops[1].isdigit():
        from emulator.diffcheck.operands import parent
        reg = parent(ops[1])
        if reg not in regs:
            regs[reg] = rng.randrange(0, 8 * min(form.insn.access_size, 8))
    if m in ("shld", "shrd") and form.insn.width == 2 and ops[-1] == "cl":
        regs["rcx"] = rng.randrange(0, 17)   # more than 16 leaves a 16-bit result undefined
    if m.startswith(("xsave", "xrstor")):
        regs.setdefault("rax", 3)          # x87 | SSE
        regs.setdefault("rdx", 0)


def _call_continuation(b: SequenceBuilder, form: AccessForm, at: int) -> None:
    """Where a call lands, the sequence goes on: a register or memory target
    is set to the next instruction; a relative call gets int3 filler up to
    its target (when the decoders agree on where that is)."""
    insn = form.insn
    nxt = at + len(form.code)
    op = insn.op_str
    if insn.mems:
        mem = insn.mems[0]
        addr = b.regs.get(mem.base, 0) + mem.disp
        b.poke(addr, nxt.to_bytes(8, "little"))
        if b.pages[SOURCE_PAGE] not in HAS_CONTENT:
            b.pages[SOURCE_PAGE] = "present"
    elif op.startswith("0x"):
        if insn.size == len(form.code):
            target = at + int(op, 16)       # the form was decoded at address 0
            if nxt <= target < nxt + 0x400:
                b.pad(target - nxt)
    else:
        from emulator.diffcheck.operands import parent
        b.regs[parent(op)] = nxt
