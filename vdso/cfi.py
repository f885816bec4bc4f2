"""Call frame information for assembled functions, derived from their code.

Keystone emits no CFI (and a stray `.cfi_endproc` makes it exit, so the
source normaliser drops every `.cfi_*` directive).  Instead, as the kernel's
objtool does for ORC, the stack is followed through each function's control
flow: for every instruction we know where the canonical frame address (CFA:
rsp just before the call that entered the function) is, and which callee-saved
registers have been pushed where.  vdso/eh_frame.py encodes the result as
DWARF CFI, which gdb and every other unwinder read.

What is followed:
* push/pop (of registers, memory, immediates; pushf/popf), `sub/add rsp, imm`,
  `lea rsp, [rsp+d]`, and a frame pointer (`mov rbp, rsp`, `mov rsp, rbp`,
  `leave`, `lea rsp, [rbp+d]`): while rsp's distance to the CFA is unknown
  (`and rsp, -16`), the CFA is expressed from rbp;
* a push of rbx, rbp or r12-r15 that is not already saved is taken as its
  save slot, and the matching pop as its restore (registers saved with a plain
  `mov` to the stack are not seen);
* branches inside the function are followed, a `ret`, a jump out of the
  function (tail call) or an indirect jump must find the stack as it was at
  entry; a `call` returns with the stack unchanged.

A function whose stack cannot be followed (two paths meeting with different
frames, an rsp change we cannot read, a return with data left on the stack)
gets no CFI at all, with the reason: wrong CFI would be worse than none.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

from capstone import x86 as cs_x86

from vdso.insn import disassembler

# DWARF register numbers of the x86-64 psABI.
DWARF_REGS = {"rax": 0, "rdx": 1, "rcx": 2, "rbx": 3, "rsi": 4, "rdi": 5, "rbp": 6, "rsp": 7,
              **{f"r{n}": n for n in range(8, 16)}}
RA_COLUMN = 16                     # the return address
CALLEE_SAVED = ("rbx", "rbp", "r12", "r13", "r14", "r15")
ENTRY_SP = 8                       # at entry CFA = rsp + 8: the return address is at rsp

_END = ("int3", "ud2", "hlt")


@dataclass(frozen=True)
class Frame:
    """Where the CFA is and where saved registers are, from one instruction on."""
    cfa_reg: str                                 # "rsp" or "rbp"
    cfa_offset: int                              # CFA = cfa_reg + cfa_offset
    saved: tuple[tuple[str, int], ...] = ()      # (register, slot - CFA), sorted


ENTRY_FRAME = Frame("rsp", ENTRY_SP)


@dataclass(frozen=True)
class FunctionCfi:
    name: str
    start: int                                   # offset of the function in the code
    size: int
    rows: tuple[tuple[int, Frame], ...]          # (offset in the code, frame from there on)


class CfiError(Exception):
    """The stack of a function cannot be followed (the message says where)."""


@dataclass(frozen=True)
class _State:
    sp: int | None                 # CFA - rsp, if known
    bp: int | None                 # CFA - rbp, if rbp is a frame pointer
    saved: tuple[tuple[str, int], ...] = ()

    def frame(self) -> Frame:
        if self.sp is not None:
            return Frame("rsp", self.sp, self.saved)
        return Frame("rbp", self.bp, self.saved)


def derive(code: bytes, addr: int, name: str, start: int, size: int) -> FunctionCfi:
    """The frames of the function code[start:start+size] (mapped at addr)."""
    insns = {}
    md = disassembler(detail=True)
    end = start + size
    for insn in md.disasm(code[start:end], addr + start):
        insns[insn.address - addr] = insn
    states: dict[int, _State] = {start: _State(ENTRY_SP, None)}
    work = [start]
    while work:
        off = work.pop()
        insn = insns.get(off)
        if insn is None:
            raise CfiError(f"{name}+{off - start:#x}: not an instruction boundary")
        for nxt, st in _successors(insn, off, states[off], start, end, name):
            if nxt not in states:
                states[nxt] = st
                work.append(nxt)
            elif states[nxt] != st:
                a, b = states[nxt].frame(), st.frame()
                raise CfiError(f"{name}+{nxt - start:#x}: reached with different frames "
                               f"({a.cfa_reg}+{a.cfa_offset} and {b.cfa_reg}+{b.cfa_offset})")
    rows: list[tuple[int, Frame]] = []
    for off in sorted(states):
        frame = states[off].frame()
        if not rows or rows[-1][1] != frame:
            rows.append((off, frame))
    return FunctionCfi(name, start, size, tuple(rows))


def _successors(insn, off: int, st: _State, start: int, end: int, name: str):
    where = f"{name}+{off - start:#x} ({insn.mnemonic} {insn.op_str}".rstrip() + ")"
    m = insn.mnemonic
    nxt = off + insn.size

    def leave_function():
        if st.sp != ENTRY_SP:
            raise CfiError(f"{where}: leaves the function with the stack not as at entry")
        return []

    if m == "ret" or m.startswith("ret"):
        return leave_function()
    if m in _END:
        return []
    if m == "jmp" or m.startswith(("j", "loop")):
        target = _branch_target(insn)
        out = []
        if target is None or not start <= target - insn.address + off < end:
            leave_function()                     # indirect, or a tail call
        else:
            out.append((target - insn.address + off, st))
        if m != "jmp":
            out.append((nxt, st))
        return out
    if m == "call":
        return [(nxt, st)]
    return [(nxt, _effect(insn, st, where))]


def _branch_target(insn) -> int | None:
    op = insn.operands[0] if insn.operands else None
    return op.imm if op is not None and op.type == cs_x86.X86_OP_IMM else None


def _reg64(insn, reg: int) -> str:
    """The 64-bit register a (sub)register belongs to: ebx, bx, bl -> rbx."""
    name = insn.reg_name(reg) or ""
    table = {"eax": "rax", "ax": "rax", "al": "rax", "ah": "rax",
             "ebx": "rbx", "bx": "rbx", "bl": "rbx", "bh": "rbx",
             "ecx": "rcx", "cx": "rcx", "cl": "rcx", "ch": "rcx",
             "edx": "rdx", "dx": "rdx", "dl": "rdx", "dh": "rdx",
             "esi": "rsi", "si": "rsi", "sil": "rsi", "edi": "rdi", "di": "rdi", "dil": "rdi",
             "ebp": "rbp", "bp": "rbp", "bpl": "rbp", "esp": "rsp", "sp": "rsp", "spl": "rsp"}
    if name in table:
        return table[name]
    if name.startswith("r") and name[1:].rstrip("dwb").isdigit():
        return "r" + name[1:].rstrip("dwb")
    return name


def _effect(insn, st: _State, where: str) -> _State:
    m = insn.mnemonic
    ops = insn.operands
    sp, bp, saved = st.sp, st.bp, dict(st.saved)

    def reg(k):
        return _reg64(insn, ops[k].reg) if len(ops) > k and ops[k].type == cs_x86.X86_OP_REG else None

    def imm(k):
        return ops[k].imm if len(ops) > k and ops[k].type == cs_x86.X86_OP_IMM else None

    handled = True
    if m in ("push", "pushfq", "pushf"):
        n = ops[0].size if ops else 8
        r = reg(0)
        if sp is not None:
            sp += n
            if r in CALLEE_SAVED and r not in saved:
                if sp % 8:
                    raise CfiError(f"{where}: a register saved at an odd stack offset")
                saved[r] = -sp
    elif m in ("pop", "popfq", "popf"):
        n = ops[0].size if ops else 8
        r = reg(0)
        if r is not None and sp is not None and saved.get(r) == -sp:
            del saved[r]
        if sp is not None:
            sp -= n
        if r == "rbp":
            bp = None
    elif m in ("sub", "add") and reg(0) == "rsp" and imm(1) is not None:
        if sp is not None:
            sp += imm(1) if m == "sub" else -imm(1)
    elif m == "lea" and reg(0) == "rsp" and ops[1].mem.index == 0:
        base = _reg64(insn, ops[1].mem.base)
        disp = ops[1].mem.disp
        if base == "rsp":
            sp = None if sp is None else sp - disp
        elif base == "rbp":
            sp = None if bp is None else bp - disp
        else:
            sp = None
    elif m == "mov" and reg(0) == "rbp" and reg(1) == "rsp":
        bp = sp
    elif m == "mov" and reg(0) == "rsp" and reg(1) == "rbp":
        sp = bp
    elif m == "leave":
        sp = bp
        if sp is not None and saved.get("rbp") == -sp:
            del saved["rbp"]
        sp = None if sp is None else sp - 8
        bp = None
    else:
        handled = False
    if not handled:
        _, written = insn.regs_access()
        written = {_reg64(insn, r) for r in written}
        if "rsp" in written:
            sp = None                              # and rsp, -16; sub rsp, rax; ...
        if "rbp" in written:
            bp = None
    if sp is None and bp is None:
        raise CfiError(f"{where}: changes rsp in a way the CFA cannot follow")
    if sp is not None and sp < ENTRY_SP:
        raise CfiError(f"{where}: pops the return address")
    return replace(st, sp=sp, bp=bp, saved=tuple(sorted(saved.items())))
