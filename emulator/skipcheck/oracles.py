"""Two instruction-length oracles independent of capstone, which the skip
length (`emulator.insn_length.skip_length`) is checked against:

``objdump_length`` / ``objdump_lengths`` / ``objdump_first_lengths``
    GNU objdump on a raw binary file (``-b binary -m i386:x86-64``).  Many
    snippets are batched into one objdump run.
``unicorn_length``
    what Unicorn 2.1.x (QEMU's x86 translator, the CPU the emulator runs)
    consumes for the instruction.  See `unicorn_probe` for the method.

`emulator.skipcheck.divergence.classify` names the ways they and capstone
disagree.  Only the tools use them (skipcheck, decodecheck, the tests); the
fault path never runs objdump or a second Unicorn.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from typing import Iterable, Iterator, Sequence

from emulator.insn_length import parse_prefixes
from vdso.insn import MAX_INSN_LEN

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
