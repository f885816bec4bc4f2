"""Three independent x86-64 instruction-length oracles, and the skip length.

The `skip` design's fault handler decodes the instruction at rip and adds its
length to rip (``do_user_addr_fault`` after ``VM_FAULT_SKIP_INSN``).  A wrong
length resumes execution in the middle of an instruction, so the decoder the
handler uses (capstone) is cross-checked here against two others:

``capstone_length``
    capstone 5, detail off, first instruction of the bytes.
``objdump_length`` / ``objdump_lengths`` / ``objdump_first_lengths``
    GNU objdump on a raw binary file (``-b binary -m i386:x86-64``).  Many
    snippets are batched into one objdump run.
``unicorn_length``
    what Unicorn 2.1.x (QEMU's x86 translator, the CPU the emulator runs)
    consumes for the instruction.  See `unicorn_probe` for the method.

`classify` names the known divergence classes between them, and
`skip_length` is capstone's length corrected (explicit table
`CAPSTONE_CORRECTIONS`) so that it equals what the emulated CPU executes.

Measured with capstone 5.0.9, GNU objdump 2.40 and Unicorn 2.1.4; the
measurements are asserted in tests/test_insn_length.py.
"""

from __future__ import annotations

import functools
import os
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator, Sequence

import capstone

MAX_INSN_LEN = 15            # the architectural limit on an x86 instruction

# --------------------------------------------------------------------------
# capstone
# --------------------------------------------------------------------------


@functools.lru_cache(maxsize=None)
def _capstone() -> capstone.Cs:
    """The one capstone handle (x86-64, Intel syntax, detail off).

    Created once and never reconfigured, so sharing it is safe.
    """
    cs = capstone.Cs(capstone.CS_ARCH_X86, capstone.CS_MODE_64)
    cs.syntax = capstone.CS_OPT_SYNTAX_INTEL
    cs.detail = False
    return cs


def capstone_insn(code: bytes, addr: int = 0) -> tuple[int, str] | None:
    """(length, "mnemonic operands") of the first instruction, or None."""
    for _addr, size, mnemonic, op_str in _capstone().disasm_lite(
            bytes(code[:MAX_INSN_LEN]), addr, 1):
        return size, f"{mnemonic} {op_str}".strip()
    return None


def capstone_length(code: bytes, addr: int = 0) -> int | None:
    """Capstone's length of the first instruction in ``code``; None if it
    rejects the bytes (invalid, or truncated by the end of ``code``)."""
    insn = capstone_insn(code, addr)
    return None if insn is None else insn[0]


# --------------------------------------------------------------------------
# GNU objdump
# --------------------------------------------------------------------------

OBJDUMP = "objdump"

# objdump's instruction line: "  addr:\tbytes\ttext".  With --insn-width=15
# every instruction fits on one line, but a continuation line ("  addr:\tbytes"
# with no text) is still folded into the previous instruction for robustness.
_LINE = re.compile(r"^\s*([0-9a-f]+):\t([0-9a-f]{2}(?: [0-9a-f]{2})*)\s*(?:\t(.*))?$")


def have_objdump() -> bool:
    """True if GNU objdump is on PATH."""
    return shutil.which(OBJDUMP) is not None


_OBJDUMP_BAD_OPERAND = re.compile(r"(?:^|[ ,])\?(?:$|[ ,])")


def objdump_is_bad(text: str) -> bool:
    """objdump's ways of saying it could not decode: "(bad)", a bare ".byte"
    (bytes cut off by a symbol or section end), or a "?" operand (an
    invalid segment register, e.g. "8c fa" = "mov edx,?")."""
    if "(bad)" in text or text.startswith(".byte"):
        return True
    if "?" not in text:
        return False
    operands = text.split("#", 1)[0].split("<", 1)[0]
    return _OBJDUMP_BAD_OPERAND.search(operands) is not None


# objdump prints a prefix on its own line when it decides the prefix does
# not belong to the next instruction (a REX followed by another prefix, a
# second REX, a prefix before fwait...).
_PREFIX_WORD = re.compile(
    r"(?:rex(?:\.[WRXB]+)?|data16|addr32|[cdefgs]s|lock|rep|repz|repnz|bnd|notrack"
    r"|xacquire|xrelease)$")


def objdump_prefix_only(text: str) -> bool:
    """True if objdump's text is nothing but prefix names ("rex.WX", "ds
    rex.WRX", "data16 rex.W")."""
    words = text.split()
    return bool(words) and all(_PREFIX_WORD.match(w) for w in words)


def parse_objdump(lines: Iterable[str]) -> Iterator[tuple[str | None, int, int, str]]:
    """Yield (section, address, length, text) per instruction from objdump's
    disassembly output, streaming.  Continuation lines (a long instruction
    split over several lines) are folded into their instruction."""
    section = None
    pending = None                      # [section, addr, nbytes, text]
    for line in lines:
        if line.startswith("Disassembly of section "):
            section = line[len("Disassembly of section "):].strip().rstrip(":")
            continue
        m = _LINE.match(line)
        if m is None:
            continue
        addr = int(m.group(1), 16)
        nbytes = (len(m.group(2)) + 1) // 3
        text = m.group(3)
        if text is None:
            # continuation of the previous instruction's bytes
            if pending is not None and addr == pending[1] + pending[2]:
                pending[2] += nbytes
                continue
            text = ""
        if pending is not None:
            yield tuple(pending)
        pending = [section, addr, nbytes, " ".join(text.split())]
    if pending is not None:
        yield tuple(pending)


def _run_objdump_binary(data: bytes, vma: int = 0) -> list[tuple[int, int, str]]:
    """Linear-sweep disassembly of raw bytes: [(address, length, text)]."""
    fd, path = tempfile.mkstemp(prefix="faultpath-insn-", suffix=".bin")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        out = subprocess.run(
            [OBJDUMP, "-D", "-z", "-b", "binary", "-m", "i386:x86-64",
             "-M", "intel", "--insn-width=15", f"--adjust-vma={vma:#x}", path],
            check=True, capture_output=True, text=True,
            env={**os.environ, "LC_ALL": "C"}).stdout
    finally:
        os.unlink(path)
    return [(a, n, t) for _s, a, n, t in parse_objdump(out.splitlines())]


def objdump_lengths(code: bytes, addr: int = 0) -> list[tuple[int, int, str]]:
    """objdump's linear sweep over ``code`` placed at ``addr``:
    [(offset, length, text)].  An instruction cut off by the end of ``code``
    comes out as objdump prints it (a short "(bad)" or ".byte")."""
    return [(a - addr, n, t) for a, n, t in _run_objdump_binary(bytes(code), addr)]


# Batching: snippet i is placed at offset i*_STRIDE and followed by one-byte
# nops.  The first instruction of a snippet (and any garbage decoded from the
# snippet's tail) ends before i*_STRIDE + 2*MAX_INSN_LEN, after which the
# sweep walks the nops one byte at a time and lands exactly on the next
# snippet.  A snippet whose record does not start on its slot is re-run alone.
_STRIDE = 64
_FILL = 0x90


def objdump_first_lengths(snippets: Sequence[bytes]) -> list[tuple[int, str] | None]:
    """(length, text) of the first instruction of each snippet per objdump,
    in one objdump run; None where objdump prints "(bad)" or the instruction
    would run past the end of the snippet."""
    if not snippets:
        return []
    blob = bytearray([_FILL]) * (_STRIDE * len(snippets))
    for i, s in enumerate(snippets):
        s = bytes(s[:MAX_INSN_LEN])
        blob[i * _STRIDE:i * _STRIDE + len(s)] = s
    starts = {a: (n, t) for a, n, t in _run_objdump_binary(bytes(blob))}
    result: list[tuple[int, str] | None] = []
    for i, s in enumerate(snippets):
        s = bytes(s[:MAX_INSN_LEN])
        rec = starts.get(i * _STRIDE)
        if rec is None:                         # desynchronised: run it alone
            alone = objdump_lengths(s)
            rec = (alone[0][1], alone[0][2]) if alone else None
        if rec is None or objdump_is_bad(rec[1]) or rec[0] > len(s):
            result.append(None)
        else:
            result.append(rec)
    return result


def objdump_length(code: bytes) -> int | None:
    """objdump's length of the first instruction; None for "(bad)"."""
    rec = objdump_first_lengths([code])[0]
    return None if rec is None else rec[0]


# --------------------------------------------------------------------------
# Unicorn
# --------------------------------------------------------------------------

_U_CODE_PAGE = 0x0010_0000        # the snippet ends exactly at the end of this page
_U_SCRATCH = 0x0100_0000          # every GPR points into the middle of this
_U_SCRATCH_SIZE = 0x20_0000
_U_PAGE = 0x1000
_QEMU_UNPATCHED_SIZE = 0xF1F1F1F1  # Unicorn's placeholder before it patches in the size


@dataclass(frozen=True)
class UnicornProbe:
    """What one single-instruction run in Unicorn showed.

    length      QEMU translator's byte count for the instruction (None if the
                translator refused it: #UD, unsupported AVX, or truncated).
    rip_delta   rip after the run minus start, when the run ended without error.
    block_size  size of the translated block that starts at the instruction,
                as UC_HOOK_BLOCK reported it.
    error       the UcError text, if any (memory faults after the length is
                known are expected: the operand may point anywhere).
    """
    length: int | None
    rip_delta: int | None
    block_size: int | None
    error: str | None

    @property
    def method(self) -> str:
        """How the length is corroborated: "fallthrough" (executed and rip
        advanced by the length), "block" (the one-instruction block's size
        equals it: branches, and runs that faulted on an operand), or
        "decoded" (only the translator's count)."""
        if self.length is None:
            return "rejected"
        if self.rip_delta == self.length:
            return "fallthrough"
        if self.block_size == self.length:
            return "block"
        return "decoded"


def _unicorn_would_abort(code: bytes) -> bool:
    """``lock bt/bts/btr/btc reg`` aborts the whole process in Unicorn 2.1.4
    (DESIGN.md; fixed upstream later).  Hardware raises #UD for a lock prefix
    on a register operand, so there is no length to execute anyway."""
    p = parse_prefixes(code)
    if p is None or 0xF0 not in p.legacy or p.opcode_pos + 2 >= len(code):
        return False
    op0, op1 = code[p.opcode_pos], code[p.opcode_pos + 1]
    modrm = code[p.opcode_pos + 2]
    return op0 == 0x0F and op1 in (0xA3, 0xAB, 0xB3, 0xBB, 0xBA) and modrm >= 0xC0


def unicorn_probe(code: bytes) -> UnicornProbe:
    """Run the first instruction of ``code`` once in a throwaway Unicorn.

    Method.  ``code`` is written so that it ends exactly at the end of a
    mapped page (the next page is unmapped), so an instruction longer than
    ``code`` cannot borrow bytes: its fetch faults and it has no length.
    Unicorn exits are set at every address after the start, so QEMU's
    translator ends the block at the first instruction boundary: the block
    is exactly one instruction and the bytes after it are never translated.
    All sixteen GPRs point at the middle of a 2 MiB scratch mapping so that
    most memory operands execute.  Then ``emu_start(count=1)``.

    The length is the size argument of a UC_HOOK_CODE bounded to the start:
    Unicorn patches it with ``s->pc - pc_start`` once the translator has
    decoded the instruction, i.e. the bytes the emulated CPU consumes (the
    placeholder 0xf1f1f1f1 stays when the translator bails out with #UD).
    It is corroborated two ways: the UC_HOOK_BLOCK size of the
    one-instruction block (this is how branches are covered: a taken branch
    leaves rip at its target, not after itself), and, for instructions that
    fall through, the rip delta after the run.

    A run that ends in UC_ERR_INSN_INVALID gives no length: QEMU raises #UD
    before finishing the decode (its partial count is meaningless, e.g. 4 for
    the 5-byte VEX.256 ``c4 e2 7d 18 c0``).
    """
    from unicorn import Uc, UcError, UC_ARCH_X86, UC_MODE_64, UC_HOOK_CODE, UC_HOOK_BLOCK
    from unicorn import UC_ERR_INSN_INVALID
    from unicorn import x86_const as X

    code = bytes(code[:MAX_INSN_LEN])
    if not code or _unicorn_would_abort(code):
        return UnicornProbe(None, None, None, "refused before running")
    uc = Uc(UC_ARCH_X86, UC_MODE_64)
    uc.mem_map(_U_CODE_PAGE, _U_PAGE)
    uc.mem_map(_U_SCRATCH, _U_SCRATCH_SIZE)
    end = _U_CODE_PAGE + _U_PAGE
    start = end - len(code)
    uc.mem_write(start, code)
    mid = _U_SCRATCH + _U_SCRATCH_SIZE // 2
    for reg in (X.UC_X86_REG_RAX, X.UC_X86_REG_RBX, X.UC_X86_REG_RCX, X.UC_X86_REG_RDX,
                X.UC_X86_REG_RSI, X.UC_X86_REG_RDI, X.UC_X86_REG_RBP, X.UC_X86_REG_RSP,
                X.UC_X86_REG_R8, X.UC_X86_REG_R9, X.UC_X86_REG_R10, X.UC_X86_REG_R11,
                X.UC_X86_REG_R12, X.UC_X86_REG_R13, X.UC_X86_REG_R14, X.UC_X86_REG_R15):
        uc.reg_write(reg, mid)
    sizes: list[int] = []
    blocks: list[int] = []
    uc.hook_add(UC_HOOK_CODE, lambda _uc, a, s, _d: sizes.append(s), None, start, start)
    uc.hook_add(UC_HOOK_BLOCK,
                lambda _uc, a, s, _d: blocks.append(s) if a == start else None)
    # An exit at every byte after the start: the translator ends the block
    # at the first instruction boundary, so the bytes after the instruction
    # are never translated (a tail that runs into the unmapped page, or that
    # holds a lock-bt, would otherwise break the whole block).
    uc.ctl_exits_enabled(True)
    uc.ctl_set_exits(list(range(start + 1, end + 1)))
    error = None
    invalid = False
    try:
        uc.emu_start(start, end, count=1)
    except UcError as e:
        error = str(e)
        invalid = e.errno == UC_ERR_INSN_INVALID
    length = sizes[0] if sizes else None
    if invalid or length is None or length == _QEMU_UNPATCHED_SIZE or length > len(code):
        length = None
    rip_delta = None if error else uc.reg_read(X.UC_X86_REG_RIP) - start
    return UnicornProbe(length, rip_delta, blocks[0] if blocks else None, error)


def unicorn_length(code: bytes) -> int | None:
    """Length of the first instruction as Unicorn's CPU consumes it; None if
    Unicorn does not run it (see `unicorn_probe`)."""
    return unicorn_probe(code).length


# --------------------------------------------------------------------------
# Prefix parsing (enough to recognise the divergence classes)
# --------------------------------------------------------------------------

_LEGACY_PREFIXES = frozenset((0xF0, 0xF2, 0xF3, 0x2E, 0x36, 0x3E, 0x26, 0x64, 0x65, 0x66, 0x67))


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
        if b in _LEGACY_PREFIXES:
            legacy.append(b)
            rex = None
        elif 0x40 <= b <= 0x4F:
            rex = b
        else:
            return Prefixes(tuple(legacy), rex, i)
        i += 1
    return None


def _opcode(code: bytes) -> tuple[Prefixes, bytes] | None:
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
    o = _opcode(code)
    return o is not None and o[0].opsize and o[0].rex_w and o[1][:1] == b"\xc2"


def _is_66_near_branch(code: bytes) -> bool:
    """0x66 without REX.W on call/jmp rel32 or jcc rel32."""
    o = _opcode(code)
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
    o = _opcode(code)
    return _no_lock(o) and len(o[1]) >= 2 and (o[1][0], o[1][1]) in _X87_ALIASES


def _is_hint_space(code: bytes) -> bool:
    """0f 0d /r with a memory operand (the prefetch group, any ModRM.reg) and
    0f 18..0f 1f /r (hint nops, any ModRM), without lock."""
    o = _opcode(code)
    if not _no_lock(o) or len(o[1]) < 3 or o[1][0] != 0x0F:
        return False
    op, modrm = o[1][1], o[1][2]
    return (op == 0x0D and modrm < 0xC0) or 0x18 <= op <= 0x1F


def _is_fence_alias(code: bytes) -> bool:
    """0f ae with mod=3 and reg 5/6/7: lfence/mfence/sfence, any r/m."""
    o = _opcode(code)
    return (_no_lock(o) and len(o[1]) >= 3 and o[1][:2] == b"\x0f\xae"
            and o[1][2] >= 0xC0 and (o[1][2] >> 3) & 7 >= 5)


def _is_f2_bsf_bsr(code: bytes) -> bool:
    """f2 0f bc / f2 0f bd: bsf/bsr with an (ignored) repne prefix.  (f3 makes
    them tzcnt/lzcnt, which capstone knows.)"""
    o = _opcode(code)
    return (_no_lock(o) and 0xF2 in o[0].legacy and 0xF3 not in o[0].legacy
            and o[1][:1] == b"\x0f" and o[1][1:2] in (b"\xbc", b"\xbd"))


def _is_addr32_movsxd(code: bytes) -> bool:
    """67 63 /r without REX.W: movsxd r32, r/m32 with a 32-bit address."""
    o = _opcode(code)
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
    o = _opcode(code)
    assert o is not None
    return _after_opcode(code, 1 if o[1][0] in (0xE8, 0xE9) else 2, 2)


@dataclass(frozen=True)
class Correction:
    """One measured capstone divergence and the length the CPU uses.

    cls        the `classify` class it belongs to;
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
    the "unicorn-only" encodings; "invalid-lock-prefix" in `classify`).
    """
    code = bytes(code[:MAX_INSN_LEN])
    cs_len = capstone_length(code)
    corr = correction_for(code, cs_len)
    if corr is not None:
        n = corr.length(code)
        return n if n is not None and n <= len(code) else None
    return cs_len


# --------------------------------------------------------------------------
# Classification
# --------------------------------------------------------------------------

def _is_ud0_ud1(code: bytes) -> bool:
    o = _opcode(code)
    return o is not None and o[1][:1] == b"\x0f" and o[1][1:2] in (b"\xb9", b"\xff")


def _is_fwait(code: bytes) -> bool:
    o = _opcode(code)
    return o is not None and o[1][:1] == b"\x9b"


def _rejected_only_for_lock(code: bytes, others: set[int]) -> bool:
    """capstone rejects ``code`` but its (corrected) length of the same
    bytes without the lock prefixes, plus those prefixes, is what the
    others say."""
    p = parse_prefixes(code)
    if p is None or 0xF0 not in p.legacy:
        return False
    nlock = p.legacy.count(0xF0)
    head = bytes(b for b in code[:p.opcode_pos] if b != 0xF0)
    n = skip_length(head + bytes(code[p.opcode_pos:]))
    return n is not None and others == {n + nlock}


def _objdump_cut_after_prefix(code: bytes, objdump_len: int) -> bool:
    """objdump's instruction is only prefix bytes of ``code``."""
    return 0 < objdump_len <= len(code) and all(
        b in _LEGACY_PREFIXES or 0x40 <= b <= 0x4F for b in code[:objdump_len])


def _known_valid_alias(code: bytes) -> bool:
    """Encodings the CPU runs that capstone (and objdump) may reject: the
    capstone-rejects-valid entries of CAPSTONE_CORRECTIONS."""
    return any(c.cls == "capstone-rejects-valid" and c.applies(code, None)
               for c in CAPSTONE_CORRECTIONS)


CLASSES = (
    "agree",
    "capstone-66-rex-w-ret-imm",
    "capstone-66-near-branch-intel-vs-amd",
    "capstone-rejects-valid",
    "objdump-bad",
    "data-or-padding",
    "invalid-lock-prefix",
    "capstone-ud0-ud1-no-modrm",
    "objdump-fwait-prefix",
    "objdump-prefix-split",
    "unicorn-only",
    "unexplained",
)


def classify(code: bytes, capstone_len: int | None, objdump_len: int | None,
             unicorn_len: int | None, *, in_code: bool | None = None,
             objdump_text: str | None = None) -> str:
    """Name the divergence between the three oracles for ``code``.

    ``None`` means the oracle rejected the bytes (objdump: "(bad)").  Unicorn
    also gives None when it was not consulted, or when it raises #UD
    (architectural: ud2, lock on a register; or a Unicorn 2.1.4 gap:
    VEX.256/EVEX), so a Unicorn None never makes a divergence by itself.
    ``in_code=False`` says the bytes are known not to be instructions;
    divergences there that match no capstone bug are "data-or-padding".

    Classes, first match wins:
      agree                  capstone == objdump (possibly both None) and
                             Unicorn agrees or has no length;
      capstone-66-rex-w-ret-imm / capstone-66-near-branch-intel-vs-amd
                             the byte pattern matches, objdump and Unicorn
                             (those that answered) agree, capstone differs
                             (or rejects: it wants rel32 bytes that are not
                             there);                       [DESIGN.md]
      data-or-padding        ``in_code`` is False;
      invalid-lock-prefix    capstone rejects only because of a lock prefix
                             on a non-lockable instruction (hardware: #UD,
                             capstone is right); objdump prints "lock ...",
                             and Unicorn runs it ignoring the lock
                             (unfaithful);                 [measured]
      capstone-ud0-ud1-no-modrm
                             0f b9 / 0f ff: capstone 2 bytes, objdump a
                             ModRM more (as Intel's SDM); both are #UD, so
                             no CPU length;                [measured]
      objdump-fwait-prefix   9b: objdump folds fwait into the next x87
                             instruction ("finit") or prints a prefix before
                             it alone; capstone and Unicorn make fwait its
                             own instruction, as the CPU does;   [measured]
      objdump-prefix-split   objdump prints the leading prefix(es) as an
                             instruction of their own ("rex.WX": a REX
                             followed by another prefix or REX, which the
                             CPU ignores but still consumes); capstone and
                             Unicorn count them in the instruction (or both
                             reject the whole).  Needs ``objdump_text``, or
                             recognises a REX byte objdump stopped after.
                                                           [measured]
      capstone-rejects-valid capstone None; objdump and/or Unicorn decode it
                             to one length; if only Unicorn does, the
                             encoding must be a known alias the CPU runs
                             (CAPSTONE_CORRECTIONS; DESIGN.md: dd cc,
                             4a 0f 0d 28, f2 0f 1e fa);
      unicorn-only           capstone and objdump reject, Unicorn runs it:
                             QEMU's permissive decoder (0f 50 with a memory
                             operand, movbe with a register operand, 8f /1-7,
                             ...; #UD on hardware);        [measured]
      objdump-bad            objdump "(bad)" while capstone decodes and
                             Unicorn agrees with capstone or has no length;
      unexplained            anything else.
    """
    if capstone_len == objdump_len and unicorn_len in (None, capstone_len):
        return "agree"
    others = {n for n in (objdump_len, unicorn_len) if n is not None}
    if len(others) == 1 and capstone_len not in others:
        if _is_66_ret_imm_rex_w(code):
            return "capstone-66-rex-w-ret-imm"
        if _is_66_near_branch(code):
            return "capstone-66-near-branch-intel-vs-amd"
    if in_code is False:
        return "data-or-padding"
    if capstone_len is None and others and _rejected_only_for_lock(code, others):
        return "invalid-lock-prefix"
    if _is_ud0_ud1(code) and capstone_len is not None and unicorn_len is None:
        return "capstone-ud0-ud1-no-modrm"
    if _is_fwait(code) and capstone_len is not None and unicorn_len in (None, capstone_len):
        return "objdump-fwait-prefix"
    if unicorn_len in (None, capstone_len) and objdump_len is not None and (
            capstone_len is None or objdump_len < capstone_len) and (
            objdump_prefix_only(objdump_text) if objdump_text is not None
            else _objdump_cut_after_prefix(code, objdump_len)):
        return "objdump-prefix-split"
    if capstone_len is None and len(others) == 1:
        if objdump_len is None and not _known_valid_alias(code):
            return "unicorn-only"
        return "capstone-rejects-valid"
    if objdump_len is None and capstone_len is not None and unicorn_len in (None, capstone_len):
        return "objdump-bad"
    return "unexplained"
