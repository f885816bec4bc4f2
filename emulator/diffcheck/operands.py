"""What an instruction touches, from capstone's decoding: the registers it
reads and writes (as 64-bit parents), its memory operands, and the register
values that put a memory operand at a chosen address.

Capstone 5 leaves some implicit operands out (enter, leave, push fs, the
stack of call); IMPLICIT adds what the generators rely on.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

from capstone import CS_AC_READ, CS_AC_WRITE, CS_GRP_CALL, CS_GRP_INT, CS_GRP_IRET, CS_GRP_JUMP, CS_GRP_RET
from capstone import x86 as cx

from vdso.insn import disassembler

_PARENT = {}
for _n in "abcd":
    for _v in (f"{_n}l", f"{_n}h", f"{_n}x", f"e{_n}x", f"r{_n}x"):
        _PARENT[_v] = f"r{_n}x"
for _n in ("si", "di", "bp", "sp"):
    for _v in (f"{_n}l", _n, f"e{_n}", f"r{_n}"):
        _PARENT[_v] = f"r{_n}"
for _k in range(8, 16):
    for _v in (f"r{_k}b", f"r{_k}w", f"r{_k}d", f"r{_k}"):
        _PARENT[_v] = f"r{_k}"

# Registers an instruction uses without capstone saying so (mnemonic -> (read, written)).
IMPLICIT = {
    "enter": ({"rsp", "rbp"}, {"rsp", "rbp"}), "leave": ({"rsp", "rbp"}, {"rsp", "rbp"}),
    "push": ({"rsp"}, {"rsp"}), "pushfq": ({"rsp"}, {"rsp"}), "pushf": ({"rsp"}, {"rsp"}),
    "pop": ({"rsp"}, {"rsp"}), "popfq": ({"rsp"}, {"rsp"}), "call": ({"rsp"}, {"rsp"}),
    "xsave": ({"rax", "rdx"}, set()), "xsave64": ({"rax", "rdx"}, set()), "xsaveopt": ({"rax", "rdx"}, set()),
    "xsavec": ({"rax", "rdx"}, set()), "xrstor": ({"rax", "rdx"}, set()), "xrstor64": ({"rax", "rdx"}, set()),
    "maskmovdqu": ({"rdi"}, set()), "maskmovq": ({"rdi"}, set()),
    "cmpxchg16b": ({"rax", "rbx", "rcx", "rdx"}, {"rax", "rdx"}),
}
# Bytes written or read by instructions whose memory operand capstone sizes wrongly.
ACCESS_SIZE = {"fxsave": 512, "fxsave64": 512, "fxrstor": 512, "fxrstor64": 512, "xsave": 576,
               "xsave64": 576, "xsaveopt": 576, "xsavec": 576, "xrstor": 576, "xrstor64": 576,
               "fnsave": 108, "fsave": 108, "fnstenv": 28, "fstenv": 28, "cmpxchg16b": 16,
               "maskmovdqu": 16, "maskmovq": 8, "enter": 8}
# Alignment the CPU enforces (#GP otherwise): legacy-SSE aligned moves and
# memory operands of 128-bit SSE arithmetic, fxsave/xsave, cmpxchg16b.
ALIGN16 = {"movaps", "movapd", "movdqa", "movntps", "movntpd", "movntdq", "movntdqa", "fxsave", "fxsave64",
           "fxrstor", "fxrstor64", "cmpxchg16b"}
ALIGN64 = {"xsave", "xsave64", "xsaveopt", "xsavec", "xrstor", "xrstor64"}


# m128 operands that may be unaligned (the others #GP unless 16-byte aligned).
UNALIGNED_OK = {"movups", "movupd", "movdqu", "lddqu", "maskmovdqu", "pcmpestri", "pcmpestrm", "pcmpistri",
                "pcmpistrm"}


def parent(name: str | None) -> str | None:
    return _PARENT.get(name, name) if name else None


@dataclass(frozen=True)
class Mem:
    size: int
    base: str | None
    index: str | None
    scale: int
    disp: int
    segment: str | None
    read: bool
    write: bool


@dataclass(frozen=True)
class Decoded:
    address: int
    size: int
    mnemonic: str
    op_str: str
    raw: bytes
    reads: frozenset[str]
    writes: frozenset[str]
    mems: tuple[Mem, ...]
    disp_offset: int
    disp_size: int
    control: bool           # a jump, call, return, interrupt or syscall: ends a straight line
    rip_relative: bool
    width: int = 0          # bytes of the first operand (0: none)

    @property
    def text(self) -> str:
        return f"{self.mnemonic} {self.op_str}".strip()

    @property
    def op(self) -> str:
        """The mnemonic without capstone's prefix words ("lock cmpxchg16b" -> "cmpxchg16b")."""
        return self.mnemonic.split()[-1]

    @property
    def access_size(self) -> int:
        if self.op in ACCESS_SIZE:
            return ACCESS_SIZE[self.op]
        return max((m.size for m in self.mems), default=8)

    @property
    def align(self) -> int:
        """The alignment below which the CPU raises #GP (1: none)."""
        op = self.op
        if op in ALIGN64:
            return 64
        if op in ALIGN16:
            return 16
        if any(m.size == 16 for m in self.mems) and op not in UNALIGNED_OK and not op.endswith(("ss", "sd")) \
                and not op.startswith(("push", "pop", "call", "cmpxchg", "f", "lods", "stos", "movs", "cmps",
                                       "scas")):
            return 16           # a legacy-SSE instruction with an m128 operand
        return 1


def decode_all(code: bytes, address: int) -> list[Decoded]:
    return [_convert(i) for i in disassembler(True).disasm(code, address)]


@lru_cache(maxsize=65536)
def decode_at(raw: bytes, address: int) -> Decoded | None:
    for i in disassembler(True).disasm(raw, address, 1):
        return _convert(i)
    return None


def _convert(i) -> Decoded:
    try:
        r, w = i.regs_access()
    except Exception:           # capstone refuses regs_access for a few encodings
        r, w = [], []
    reads = {parent(i.reg_name(x)) for x in r}
    writes = {parent(i.reg_name(x)) for x in w}
    extra = IMPLICIT.get(i.mnemonic.split()[-1])
    if extra:
        reads |= extra[0]
        writes |= extra[1]
    mems = []
    rip_rel = False
    for o in i.operands:
        if o.type != cx.X86_OP_MEM:
            continue
        base = parent(i.reg_name(o.mem.base)) if o.mem.base else None
        rip_rel |= base == "rip"
        mems.append(Mem(o.size, base, parent(i.reg_name(o.mem.index)) if o.mem.index else None,
                        o.mem.scale, o.mem.disp, i.reg_name(o.mem.segment) if o.mem.segment else None,
                        bool(o.access & CS_AC_READ), bool(o.access & CS_AC_WRITE)))
        for reg in (base, mems[-1].index):
            if reg:
                reads.add(reg)
    groups = set(i.groups)
    control = bool(groups & {CS_GRP_JUMP, CS_GRP_CALL, CS_GRP_RET, CS_GRP_INT, CS_GRP_IRET}) \
        or i.mnemonic in ("syscall", "sysenter", "hlt", "ud2", "int3", "into", "ud1", "ud0")
    reads.discard(None)
    writes.discard(None)
    width = i.operands[0].size if len(i.operands) else 0
    return Decoded(i.address, i.size, i.mnemonic, i.op_str, bytes(i.bytes), frozenset(reads), frozenset(writes),
                   tuple(mems), i.disp_offset, i.disp_size, control, rip_rel, width)


def solve(mem: Mem, target: int, rng, values: dict[str, int]) -> dict[str, int] | None:
    """Register values (base, index) that put `mem` at `target`, given the
    values already fixed; None if that cannot be done."""
    out = {}
    idx_val = 0
    if mem.index:
        if mem.index in values:
            idx_val = values[mem.index]
        else:
            idx_val = rng.randrange(0, 8)
            out[mem.index] = idx_val
    rest = (target - mem.disp - idx_val * mem.scale) & (1 << 64) - 1
    if mem.base is None or mem.base == "rip":
        if mem.index and mem.index not in values:
            # index-only: index = (target - disp) / scale
            diff = (target - mem.disp) & (1 << 64) - 1
            if mem.scale > 1 and diff % mem.scale:
                return None
            out[mem.index] = diff // mem.scale
            return out
        return out if rest == 0 else None
    if mem.base in values or mem.base in out:
        have = values.get(mem.base, out.get(mem.base))
        return out if have == rest else None
    out[mem.base] = rest
    return out
