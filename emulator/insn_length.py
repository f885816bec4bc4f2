"""The skip length: the bytes the `skip` fault handler adds to rip.

After VM_FAULT_SKIP_INSN, ``do_user_addr_fault`` decodes the instruction at
rip and adds its length to rip.  A wrong length resumes execution in the
middle of an instruction.  The handler decodes with capstone, and capstone 5
is measured to disagree with the CPU on a few encodings; `skip_length` is
capstone's length with those measured corrections (`CAPSTONE_CORRECTIONS`),
so that it equals what the emulated CPU executes.

The independent oracles that measure it (GNU objdump, the length Unicorn
executes) and the names of their disagreements live with the tools that use
them: `emulator.skipcheck.oracles` and `emulator.skipcheck.divergence`.

Measured with capstone 5.0.9, GNU objdump 2.40 and Unicorn 2.1.4; the
measurements are asserted in tests/test_insn_length.py.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from vdso.insn import MAX_INSN_LEN, disassembler

# --------------------------------------------------------------------------
# capstone
# --------------------------------------------------------------------------


def capstone_insn(code: bytes, addr: int = 0) -> tuple[int, str] | None:
    """(length, "mnemonic operands") of the first instruction, or None."""
    for _addr, size, mnemonic, op_str in disassembler().disasm_lite(
            bytes(code[:MAX_INSN_LEN]), addr, 1):
        return size, f"{mnemonic} {op_str}".strip()
    return None

def capstone_length(code: bytes, addr: int = 0) -> int | None:
    """Capstone's length of the first instruction in ``code``; None if it
    rejects the bytes (invalid, or truncated by the end of ``code``)."""
    insn = capstone_insn(code, addr)
    return None if insn is None else insn[0]


# --------------------------------------------------------------------------
# Prefix parsing (enough to recognise the corrected encodings)
# --------------------------------------------------------------------------

LEGACY_PREFIXES = frozenset((0xF0, 0xF2, 0xF3, 0x2E, 0x36, 0x3E, 0x26, 0x64, 0x65, 0x66, 0x67))


@dataclass(frozen=True)
class Prefixes:
    legacy: tuple[int, ...]       # legacy prefixes in order
    rex: int | None               # the REX byte, if it immediately precedes the opcode
    opcode_pos: int               # index of the first opcode byte

    @property
    def opsize(self) -> bool:
        return 0x66 in self.legacy

    @property
    def rex_w(self) -> bool:
        return self.rex is not None and bool(self.rex & 0x08)


def parse_prefixes(code: bytes) -> Prefixes | None:
    """Split legacy prefixes and REX off ``code``; None if nothing is left.
    A REX byte followed by a legacy prefix is ignored, as on hardware."""
    legacy: list[int] = []
    rex = None
    i = 0
    while i < len(code) and i < MAX_INSN_LEN:
        b = code[i]
        if b in LEGACY_PREFIXES:
            legacy.append(b)
            rex = None
        elif 0x40 <= b <= 0x4F:
            rex = b
        else:
            return Prefixes(tuple(legacy), rex, i)
        i += 1
    return None


def opcode_of(code: bytes) -> tuple[Prefixes, bytes] | None:
    """(prefixes, the first three bytes from the opcode on), or None."""
    p = parse_prefixes(code)
    if p is None:
        return None
    return p, bytes(code[p.opcode_pos:p.opcode_pos + 3])


# --------------------------------------------------------------------------
# Known divergences and the skip length
# --------------------------------------------------------------------------

_JCC_REL32 = frozenset(range(0x80, 0x90))


def _no_lock(o: tuple[Prefixes, bytes] | None) -> bool:
    return o is not None and 0xF0 not in o[0].legacy


def _is_66_ret_imm_rex_w(code: bytes) -> bool:
    o = opcode_of(code)
    return o is not None and o[0].opsize and o[0].rex_w and o[1][:1] == b"\xc2"


def _is_66_near_branch(code: bytes) -> bool:
    """0x66 without REX.W on call/jmp rel32 or jcc rel32."""
    o = opcode_of(code)
    if o is None or not o[0].opsize or o[0].rex_w:
        return False
    op = o[1]
    return op[:1] in (b"\xe8", b"\xe9") or (op[:1] == b"\x0f" and len(op) > 1 and op[1] in _JCC_REL32)


# Register forms of the x87 escapes that capstone 5.0.9 rejects but Unicorn
# 2.1.4 executes, 2 bytes each (also under 48/66/f2/f3/67/41/2e prefixes,
# which capstone rejects on them as well).  Measured by sweeping all 8*64
# register forms under those prefixes; objdump 2.40 prints "(bad)" for all
# of them.  They are the undocumented aliases of fcom/fcomp/fxch/fstp.
_X87_ALIASES = frozenset(
    [(0xDC, m) for m in range(0xD0, 0xE0)]       # fcom2 / fcomp3 st(i)
    + [(0xDD, m) for m in range(0xC8, 0xD0)]     # fxch4  st(i)
    + [(0xDE, m) for m in range(0xD0, 0xD8)]     # fcomp5 st(i)
    + [(0xDF, m) for m in range(0xC8, 0xD0)]     # fxch7  st(i)
    + [(0xDF, m) for m in range(0xD0, 0xE0)]     # fstp8 / fstp9 st(i)
)


def _is_x87_alias(code: bytes) -> bool:
    o = opcode_of(code)
    return _no_lock(o) and len(o[1]) >= 2 and (o[1][0], o[1][1]) in _X87_ALIASES


def _is_hint_space(code: bytes) -> bool:
    """0f 0d /r with a memory operand (the prefetch group, any ModRM.reg) and
    0f 18..0f 1f /r (hint nops, any ModRM), without lock."""
    o = opcode_of(code)
    if not _no_lock(o) or len(o[1]) < 3 or o[1][0] != 0x0F:
        return False
    op, modrm = o[1][1], o[1][2]
    return (op == 0x0D and modrm < 0xC0) or 0x18 <= op <= 0x1F


def _is_fence_alias(code: bytes) -> bool:
    """0f ae with mod=3 and reg 5/6/7: lfence/mfence/sfence, any r/m."""
    o = opcode_of(code)
    return (_no_lock(o) and len(o[1]) >= 3 and o[1][:2] == b"\x0f\xae"
            and o[1][2] >= 0xC0 and (o[1][2] >> 3) & 7 >= 5)


def _is_f2_bsf_bsr(code: bytes) -> bool:
    """f2 0f bc / f2 0f bd: bsf/bsr with an (ignored) repne prefix.  (f3 makes
    them tzcnt/lzcnt, which capstone knows.)"""
    o = opcode_of(code)
    return (_no_lock(o) and 0xF2 in o[0].legacy and 0xF3 not in o[0].legacy
            and o[1][:1] == b"\x0f" and o[1][1:2] in (b"\xbc", b"\xbd"))


def _is_addr32_movsxd(code: bytes) -> bool:
    """67 63 /r without REX.W: movsxd r32, r/m32 with a 32-bit address."""
    o = opcode_of(code)
    return (_no_lock(o) and 0x67 in o[0].legacy and not o[0].rex_w
            and o[1][:1] == b"\x63")


def _modrm_length(code: bytes, pos: int) -> int | None:
    """Bytes taken by the ModRM at ``pos`` with its SIB and displacement, in
    64-bit mode (0x67 does not change these sizes there).  None if ``code``
    ends first."""
    if pos >= len(code):
        return None
    modrm = code[pos]
    mod, rm = modrm >> 6, modrm & 7
    if mod == 3:
        return 1
    n = 1
    if rm == 4:                               # SIB follows
        if pos + 1 >= len(code):
            return None
        n += 1
        if mod == 0 and code[pos + 1] & 7 == 5:
            n += 4                            # [index*scale + disp32]
    elif mod == 0 and rm == 5:
        n += 4                                # [rip + disp32]
    return n + (0, 1, 4, 0)[mod]


def _after_opcode(code: bytes, opcode_bytes: int, imm_bytes: int) -> int | None:
    """prefixes + opcode + immediate, if ``code`` holds that many bytes."""
    p = parse_prefixes(code)
    if p is None:
        return None
    n = p.opcode_pos + opcode_bytes + imm_bytes
    return n if n <= len(code) else None


def _after_modrm(code: bytes, opcode_bytes: int) -> int | None:
    """prefixes + opcode + ModRM/SIB/displacement (no immediate)."""
    p = parse_prefixes(code)
    if p is None:
        return None
    m = _modrm_length(code, p.opcode_pos + opcode_bytes)
    if m is None:
        return None
    n = p.opcode_pos + opcode_bytes + m
    return n if n <= len(code) else None


def _near_branch_rel16(code: bytes) -> int | None:
    o = opcode_of(code)
    assert o is not None
    return _after_opcode(code, 1 if o[1][0] in (0xE8, 0xE9) else 2, 2)


@dataclass(frozen=True)
class Correction:
    """One measured capstone divergence and the length the CPU uses.

    cls        the divergence class it belongs to (the names of
               `emulator.skipcheck.divergence.classify`);
    applies    predicate on the bytes and capstone's length (None = rejected);
    length     the CPU's length for those bytes (None if ``code`` is too short);
    example    one byte string it was measured on (hex);
    """
    cls: str
    applies: Callable[[bytes, int | None], bool]
    length: Callable[[bytes], int | None]
    example: str


# capstone 5.0.9 against Unicorn 2.1.4 (the emulated CPU) and GNU objdump
# 2.40.  The lengths were also confirmed on this host's CPU (AMD EPYC) by
# single-stepping the bytes natively with TF and by the shortest prefix of
# the bytes that runs without an instruction-fetch fault at a page end.
# Every entry is measured again in tests/test_insn_length.py.  First match
# wins.  Entries 3-7 only fire when capstone rejects the bytes.
CAPSTONE_CORRECTIONS: tuple[Correction, ...] = (
    # 1. DESIGN.md: "66 48 c2 iw decodes as 7 bytes; objdump and Unicorn say
    # 5".  Reproduced: capstone reads a 4-byte immediate ("ret 0x1234" from
    # 66 48 c2 34 12 + 2 more bytes; given exactly 5 bytes it rejects them).
    # ret's immediate is always 16 bits; objdump "data16 rex.W ret 0x1234",
    # Unicorn and the CPU take 5 bytes.
    Correction("capstone-66-rex-w-ret-imm",
               lambda code, cs_len: _is_66_ret_imm_rex_w(code),
               lambda code: _after_opcode(code, 1, 2),
               "6648c23412"),
    # 2. DESIGN.md: 0x66 near branches, capstone Intel (rel32) vs objdump and
    # Unicorn AMD (rel16).  Reproduced for e8/e9/0f 8x without REX.W:
    # capstone 6/6/7 bytes (and rejects the bytes if the rel32 is not all
    # there), objdump "callw"/"jmpw"/"je" and Unicorn 4/4/5, with the target
    # truncated to 16 bits.  This AMD host does the same (66 e9 00 00 at
    # 0x10000ffc jumps to 0x1000).  With REX.W all agree on rel32.  (The
    # kernel's own insn decoder marks these opcodes f64 and reads rel32, like
    # Intel.)
    Correction("capstone-66-near-branch-intel-vs-amd",
               lambda code, cs_len: _is_66_near_branch(code),
               _near_branch_rel16,
               "66e93412"),
    # 3. DESIGN.md: "dd cc" rejected.  Reproduced, and the whole family of
    # undocumented x87 register aliases (_X87_ALIASES) is rejected; objdump
    # prints "(bad)" for them too, Unicorn and the CPU run them (2 bytes
    # after prefixes).  Register-only: they never fault.
    Correction("capstone-rejects-valid",
               lambda code, cs_len: cs_len is None and _is_x87_alias(code),
               lambda code: _after_opcode(code, 2, 0),
               "ddcc"),
    # 4. DESIGN.md: "4a 0f 0d 28", "f2 0f 1e fa" rejected.  Reproduced: the
    # prefetch group 0f 0d with ModRM.reg other than 1 (0f 0d 28 alone is
    # rejected too), and the hint-nop space 0f 18..1f under many ModRM/prefix
    # combinations ("f2 0f 1e fa" = repnz nop edx, "0f 1e c0", "0f 18 c0").
    # objdump, Unicorn and the CPU: opcode + ModRM (+SIB/disp), no immediate.
    # (0f 0d with a register operand is #UD everywhere: excluded.)
    Correction("capstone-rejects-valid",
               lambda code, cs_len: cs_len is None and _is_hint_space(code),
               lambda code: _after_modrm(code, 2),
               "4a0f0d28"),
    # 5. Measured: 0f ae e9..ef / f1..f7 / f9..ff (lfence/mfence/sfence with a
    # nonzero r/m field) rejected; objdump knows only the lfence ones,
    # Unicorn and the CPU run all of them as 3 bytes (+ prefixes).
    Correction("capstone-rejects-valid",
               lambda code, cs_len: cs_len is None and _is_fence_alias(code),
               lambda code: _after_modrm(code, 2),
               "0faeed"),
    # 6. Measured: f2 0f bc/bd /r (bsf/bsr with a repne prefix) rejected;
    # objdump prints (bad); Unicorn and the CPU run bsf/bsr.
    Correction("capstone-rejects-valid",
               lambda code, cs_len: cs_len is None and _is_f2_bsf_bsr(code),
               lambda code: _after_modrm(code, 2),
               "f20fbcc0"),
    # 7. Measured: 67 63 /r (movsxd r32, [e..]) rejected; objdump "movsxd
    # eax,DWORD PTR [eax]", Unicorn and the CPU: opcode + ModRM.
    Correction("capstone-rejects-valid",
               lambda code, cs_len: cs_len is None and _is_addr32_movsxd(code),
               lambda code: _after_modrm(code, 1),
               "676300"),
)


def correction_for(code: bytes, cs_len: int | None) -> Correction | None:
    """The first CAPSTONE_CORRECTIONS entry that applies, or None."""
    for corr in CAPSTONE_CORRECTIONS:
        if corr.applies(code, cs_len):
            return corr
    return None


def skip_length(code: bytes) -> int | None:
    """The length the fault handler adds to rip for the instruction at the
    start of ``code`` (the <=15 bytes fetched at rip, possibly fewer).

    capstone's length, corrected where capstone is measured to disagree with
    the CPU (CAPSTONE_CORRECTIONS).  None when no decode is possible (invalid
    bytes, or the fetch came up short): the handler then leaves rip alone
    and the instruction retries, as the kernel does.

    Not corrected, on purpose: a lock prefix on a non-lockable instruction
    ("f0 88 00", lock mov) is #UD on the CPU and capstone rejects it, but
    Unicorn 2.1.4 ignores the lock and runs the instruction, so such a store
    can fault in the emulator and then retry forever; such code is refused
    before it runs (`vdso.insn.unfaithful_reason`, which also refuses
    the "unicorn-only" encodings; "invalid-lock-prefix" in skipcheck's `classify`).
    """
    code = bytes(code[:MAX_INSN_LEN])
    cs_len = capstone_length(code)
    corr = correction_for(code, cs_len)
    if corr is not None:
        n = corr.length(code)
        return n if n is not None and n <= len(code) else None
    return cs_len
