"""Capstone decoding shared by the fault path, the block cache and the image
checks, plus the refusal of instructions Unicorn 2.1.x cannot run faithfully."""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import capstone
from capstone import x86 as cs_x86

MAX_INSN_LEN = 15

_LOCK_BT = {"bt", "bts", "btr", "btc"}
_REP_STRING = {"movs", "stos", "lods", "scas", "cmps", "ins", "outs"}


@lru_cache(maxsize=None)
def disassembler(detail: bool = False) -> capstone.Cs:
    md = capstone.Cs(capstone.CS_ARCH_X86, capstone.CS_MODE_64)
    md.detail = detail
    return md


@dataclass(frozen=True)
class Insn:
    address: int
    size: int
    mnemonic: str
    op_str: str
    raw: bytes

    @property
    def text(self) -> str:
        return f"{self.mnemonic} {self.op_str}".strip()


def decode_one(code: bytes, address: int = 0) -> Insn | None:
    for i in disassembler().disasm(code[:MAX_INSN_LEN], address, 1):
        return Insn(i.address, i.size, i.mnemonic, i.op_str, bytes(i.bytes))
    return None


def _skip_legacy_prefixes(raw: bytes) -> int:
    i = 0
    while i < len(raw) and raw[i] in (0x66, 0x67, 0xF0, 0xF2, 0xF3, 0x2E, 0x36, 0x3E, 0x26, 0x64, 0x65):
        i += 1
    return i


def unfaithful_reason(raw: bytes, mnemonic: str, op_str: str) -> str | None:
    """Why Unicorn 2.1.4 would not run this instruction like the CPU, or None.

    DESIGN.md, measured here: VEX.128 runs as legacy SSE with wrong results,
    VEX.256/EVEX are rejected; `lock bt* reg, ...` aborts the whole process."""
    i = _skip_legacy_prefixes(raw)
    if i < len(raw):
        b = raw[i]
        if b in (0xC4, 0xC5):
            return f"VEX-encoded (AVX) instruction '{mnemonic} {op_str}'"
        if b == 0x62:
            return f"EVEX-encoded (AVX-512) instruction '{mnemonic} {op_str}'"
        if b == 0x8F and i + 1 < len(raw) and (raw[i + 1] & 0x38):
            return f"XOP-encoded instruction '{mnemonic} {op_str}'"
    base = mnemonic.removeprefix("lock ").strip()
    if mnemonic.startswith("lock") and base in _LOCK_BT and "ptr" not in op_str:
        return f"'{mnemonic} {op_str}' (lock bt* with a register operand aborts Unicorn 2.1.4)"
    return None


def is_rep_string(mnemonic: str) -> bool:
    parts = mnemonic.split()
    if len(parts) < 2 or parts[0] not in ("rep", "repe", "repz", "repne", "repnz"):
        return False
    return parts[1].rstrip("bwdq") in _REP_STRING or parts[1] in _REP_STRING


def reachable_insns(code: bytes, base: int, entries: list[int], limit: int = 1 << 16) -> dict[int, Insn]:
    """Recursive-descent disassembly from the entry points (direct jumps, calls
    and conditional branches followed); returns address -> Insn."""
    md = disassembler(True)
    seen: dict[int, Insn] = {}
    work = list(entries)
    end = base + len(code)
    while work and len(seen) < limit:
        addr = work.pop()
        while base <= addr < end and addr not in seen:
            ins = next(md.disasm(code[addr - base:addr - base + MAX_INSN_LEN], addr, 1), None)
            if ins is None:
                break
            seen[addr] = Insn(ins.address, ins.size, ins.mnemonic, ins.op_str, bytes(ins.bytes))
            grp = set(ins.groups)
            if cs_x86.X86_GRP_JUMP in grp or cs_x86.X86_GRP_CALL in grp:
                op = ins.operands[0] if ins.operands else None
                if op is not None and op.type == cs_x86.X86_OP_IMM:
                    work.append(op.imm)
                if ins.mnemonic == "jmp":
                    break
            if cs_x86.X86_GRP_RET in grp or ins.mnemonic in ("hlt", "ud2", "int3"):
                break
            addr += ins.size
    return seen


def first_unfaithful(insns: dict[int, Insn]) -> Insn | None:
    for a in sorted(insns):
        ins = insns[a]
        if unfaithful_reason(ins.raw, ins.mnemonic, ins.op_str):
            return ins
    return None
