"""Capstone decoding shared by the fault path, the block cache and the image
checks, plus the refusal of instructions Unicorn 2.1.x cannot run faithfully."""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import capstone
from capstone import x86 as cs_x86

MAX_INSN_LEN = 15

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


_LEGACY_PREFIXES = frozenset((0x66, 0x67, 0xF0, 0xF2, 0xF3, 0x2E, 0x36, 0x3E, 0x26, 0x64, 0x65))


def _skip_legacy_prefixes(raw: bytes) -> int:
    i = 0
    while i < len(raw) and raw[i] in _LEGACY_PREFIXES:
        i += 1
    return i


# Instructions that may take a lock prefix (Intel SDM vol. 2 "LOCK", AMD APM
# vol. 3 1.2.5), always with a memory destination (ModRM.mod != 3).  Keys are
# (opcode map, opcode): map 0 = one-byte, 1 = 0f xx; the value is the set of
# ModRM.reg values allowed (None: any).  Everything else with a lock prefix
# is #UD on the CPU.
_LOCKABLE: dict[tuple[int, int], frozenset[int] | None] = {
    **{(0, op): None for op in (0x00, 0x01, 0x08, 0x09, 0x10, 0x11, 0x18, 0x19,
                                0x20, 0x21, 0x28, 0x29, 0x30, 0x31, 0x86, 0x87)},
    (0, 0x80): frozenset(range(7)), (0, 0x81): frozenset(range(7)),   # add..xor, not cmp
    (0, 0x83): frozenset(range(7)),
    (0, 0xF6): frozenset((2, 3)), (0, 0xF7): frozenset((2, 3)),       # not, neg
    (0, 0xFE): frozenset((0, 1)), (0, 0xFF): frozenset((0, 1)),       # inc, dec
    **{(1, op): None for op in (0xAB, 0xB3, 0xBB, 0xB0, 0xB1, 0xC0, 0xC1)},  # bts btr btc cmpxchg xadd
    (1, 0xBA): frozenset((5, 6, 7)),                                  # bts/btr/btc imm8
    (1, 0xC7): frozenset((1,)),                                       # cmpxchg8b/16b
}
_BT_ANY = {(1, 0xA3), (1, 0xAB), (1, 0xB3), (1, 0xBB), (1, 0xBA)}

# Encodings Unicorn 2.1.4 runs but the CPU rejects with #UD ("unicorn-only" in
# emulator/skipcheck/divergence.classify, plus relatives capstone happens to decode).
# Measured by sweeping one-byte, 0f, 0f 38 and 0f 3a opcodes x {none, 66, f2,
# f3} x 16 ModRM forms: capstone and objdump reject these, Unicorn runs them,
# and this host's CPU (AMD EPYC) raises SIGILL for every one natively
# (tests/test_insn_length.py re-measures the Unicorn and capstone side).
# (map, opcode) -> (mandatory prefixes, ModRM predicate, what it is).
# The mandatory prefix is the last f2/f3 if any, else 66, else None.
_MOD3 = "mod==3"
_MEM = "mod!=3"
_UNICORN_ONLY: dict[tuple[int, int], tuple[frozenset, str, str]] = {
    (2, 0xF0): (frozenset((None, 0x66)), _MOD3, "movbe with a register operand"),
    (2, 0xF1): (frozenset((None, 0x66)), _MOD3, "movbe with a register operand"),
    (1, 0x50): (frozenset((None, 0x66)), _MEM, "movmskps/movmskpd with a memory operand"),
    (1, 0x71): (frozenset((None, 0x66)), _MEM, "immediate shift (group 12) with a memory operand"),
    (1, 0x72): (frozenset((None, 0x66)), _MEM, "immediate shift (group 13) with a memory operand"),
    (1, 0x73): (frozenset((None, 0x66)), _MEM, "immediate shift (group 14) with a memory operand"),
    (1, 0x12): (frozenset((0x66,)), _MOD3, "movlpd with a register operand"),
    (1, 0x16): (frozenset((0x66,)), _MOD3, "movhpd with a register operand"),
    (1, 0x78): (frozenset((0x66, 0xF2)), _MEM, "extrq/insertq (SSE4a) with a memory operand"),
    (1, 0x79): (frozenset((0x66, 0xF2)), _MEM, "extrq/insertq (SSE4a) with a memory operand"),
    (1, 0xC3): (frozenset((0x66, 0xF2, 0xF3)), _MEM, "movnti with a 66/f2/f3 prefix"),
    (1, 0xD6): (frozenset((0xF2, 0xF3)), _MEM, "movdq2q/movq2dq with a memory operand"),
    # 66/f2/f3 0f ae e8..ff: Unicorn runs a fence; this CPU raises #UD (they
    # are tpause/umwait/umonitor/incssp where WAITPKG/CET exist; capstone
    # decodes some of them under those names).
    (1, 0xAE): (frozenset((0x66, 0xF2, 0xF3)), "fence", "lfence/mfence/sfence with a 66/f2/f3 prefix"),
}


def unfaithful_reason(raw: bytes, mnemonic: str | None = None, op_str: str = "") -> str | None:
    """Why Unicorn 2.1.4 would not run this instruction like the CPU, or None.

    ``raw`` is the instruction's bytes (or, for bytes capstone cannot decode,
    up to 15 bytes from the instruction's start; pass ``mnemonic=None``).
    Cheap: a prefix scan and a few table lookups (it runs once per decoded
    block instruction).  Refused, all measured here (DESIGN.md and
    tests/test_insn_length.py):
      - VEX.128 runs as legacy SSE with wrong results, VEX.256/EVEX are
        rejected; 8f with ModRM.reg != 0 is XOP (ModRM bits 4:0 >= 8), which
        this CPU lacks, or else pop with a reserved /reg: #UD on the CPU,
        while Unicorn runs it as pop;
      - `lock bt* reg, ...` aborts the whole process;
      - a lock prefix on an instruction that cannot take a lock (not one of
        the SDM's lockable instructions, or a register destination): #UD on
        the CPU, while Unicorn 2.1.4 ignores the lock on most of them and
        runs the instruction (capstone rejects most of them too, so the skip
        handler would retry forever);
      - the "unicorn-only" encodings of `_UNICORN_ONLY`: #UD on the CPU,
        Unicorn runs them.
    """
    n = len(raw)
    i = 0
    lock = False
    mp = None
    while i < n:
        b = raw[i]
        if b not in _LEGACY_PREFIXES:
            break
        if b == 0xF0:
            lock = True
        elif b == 0xF2 or b == 0xF3:
            mp = b
        elif b == 0x66 and mp is None:
            mp = 0x66
        i += 1
    text = f"{mnemonic} {op_str}".strip() if mnemonic else raw[:8].hex(" ")
    while i < n and 0x40 <= raw[i] <= 0x4F:      # REX (the last one counts)
        i += 1
    if i >= n:
        return None
    b = raw[i]
    if b in (0xC4, 0xC5):
        lbyte = i + (1 if b == 0xC5 else 2)       # VEX.L lives in the last VEX byte
        if lbyte < n and raw[lbyte] & 0x04:
            return f"VEX.256-encoded (AVX) instruction '{text}'; Unicorn 2.1 cannot run it"
        return (f"VEX.128-encoded (AVX) instruction '{text}'; Unicorn 2.1 runs it as legacy SSE "
                "and computes wrong results")
    if b == 0x62:
        return f"EVEX-encoded (AVX-512) instruction '{text}'; Unicorn 2.1 cannot run it"
    if b == 0x8F and i + 1 < n and (raw[i + 1] & 0x38):
        if raw[i + 1] & 0x1F >= 8:
            return f"XOP-encoded instruction '{text}'"
        return f"'{text}': 8f /{(raw[i + 1] >> 3) & 7} (#UD on the CPU; Unicorn 2.1.4 runs it as pop)"
    if b == 0x0F:
        if i + 1 >= n:
            return None
        op = raw[i + 1]
        if op == 0x38 or op == 0x3A:
            key = (2 if op == 0x38 else 3, raw[i + 2] if i + 2 < n else -1)
            m = i + 3
        else:
            key = (1, op)
            m = i + 2
    else:
        key = (0, b)
        m = i + 1
    modrm = raw[m] if m < n else None
    if lock:
        allowed = _LOCKABLE.get(key, ())
        if modrm is not None and key in _BT_ANY and modrm >= 0xC0:
            return f"'{text}' (lock bt* with a register operand aborts Unicorn 2.1.4)"
        if allowed == () or (modrm is not None and (
                modrm >= 0xC0 or (allowed is not None and (modrm >> 3) & 7 not in allowed))):
            return (f"'{text}': lock prefix on an instruction that cannot take a lock "
                    f"(#UD on the CPU; Unicorn 2.1.4 ignores the lock and runs it or raises #UD)")
    rule = _UNICORN_ONLY.get(key)
    if rule is not None and modrm is not None and mp in rule[0]:
        cond = rule[1]
        if (cond == _MOD3 and modrm >= 0xC0) or (cond == _MEM and modrm < 0xC0) or (
                cond == "fence" and modrm >= 0xE8):
            return f"'{text}': {rule[2]} (#UD on the CPU; Unicorn 2.1.4 runs it)"
    return None


def is_rep_string(mnemonic: str) -> bool:
    parts = mnemonic.split()
    if len(parts) < 2 or parts[0] not in ("rep", "repe", "repz", "repne", "repnz"):
        return False
    return parts[1].rstrip("bwdq") in _REP_STRING or parts[1] in _REP_STRING


def reachable_insns(code: bytes, base: int, entries: list[int], limit: int = 1 << 16) -> dict[int, Insn]:
    """Recursive-descent disassembly from the entry points (direct jumps, calls
    and conditional branches followed); returns address -> Insn.  Bytes
    capstone cannot decode end a path; they are kept (as a ".byte" Insn)
    only when `unfaithful_reason` refuses them."""
    md = disassembler(True)
    seen: dict[int, Insn] = {}
    work = list(entries)
    end = base + len(code)
    while work and len(seen) < limit:
        addr = work.pop()
        while base <= addr < end and addr not in seen:
            ins = next(md.disasm(code[addr - base:addr - base + MAX_INSN_LEN], addr, 1), None)
            if ins is None:
                # capstone cannot decode it; keep it when Unicorn would run it
                # unlike the CPU (lock on a non-lockable instruction, the
                # unicorn-only encodings) so that image checks refuse it.
                raw = bytes(code[addr - base:addr - base + MAX_INSN_LEN])
                if unfaithful_reason(raw):
                    seen[addr] = Insn(addr, len(raw), ".byte", raw.hex(" "), raw)
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


def insn_unfaithful_reason(ins: Insn) -> str | None:
    """unfaithful_reason for a decoded Insn (".byte" stands for bytes capstone rejected)."""
    return unfaithful_reason(ins.raw, None if ins.mnemonic == ".byte" else ins.mnemonic, ins.op_str)


def first_unfaithful(insns: dict[int, Insn]) -> Insn | None:
    for a in sorted(insns):
        if insn_unfaithful_reason(insns[a]):
            return insns[a]
    return None


_PTR_SIZES = (("zmmword ptr", 64), ("ymmword ptr", 32), ("xmmword ptr", 16), ("xword ptr", 10),
              ("tbyte ptr", 10), ("qword ptr", 8), ("dword ptr", 4), ("word ptr", 2), ("byte ptr", 1))


# SSE forms whose memory operand is narrower than the xmm register.  capstone 5
# both stores and prints 16 bytes ("xmmword ptr") for several of them (comisd,
# addsd, ...), so the size comes from the instruction (SDM vol. 2).
_SSE_PARTIAL = {
    8: {"movq", "movhps", "movlps", "movhpd", "movlpd", "movddup", "cvtps2pd", "cvtdq2pd", "cvtpi2ps",
        "pmovsxbw", "pmovzxbw", "pmovsxwd", "pmovzxwd", "pmovsxdq", "pmovzxdq", "pinsrq", "pextrq"},
    4: {"movd", "insertps", "extractps", "pmovsxbd", "pmovzxbd", "pmovsxwq", "pmovzxwq", "pinsrd", "pextrd"},
    2: {"pmovsxbq", "pmovzxbq", "pinsrw", "pextrw"},
    1: {"pinsrb", "pextrb"},
}


def mem_operand_size(op_str: str, mnemonic: str = "") -> int | None:
    """The size of an instruction's memory operand: from the instruction for
    the SSE forms above and the scalar ones (*sd: 8 bytes, *ss: 4), else from
    capstone's operand text (its operand `size` field is wrong for more
    forms still)."""
    if mnemonic and "xmm" in op_str:
        for size, names in _SSE_PARTIAL.items():
            if mnemonic in names:
                return size
        if mnemonic.endswith("sd") or mnemonic.startswith(("cvtsd2", "cvttsd2")):
            return 8
        if mnemonic.endswith("ss") or mnemonic.startswith(("cvtss2", "cvttss2")):
            return 4
    for word, size in _PTR_SIZES:
        if word in op_str:
            return size
    return None
