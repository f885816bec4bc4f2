"""Names for the ways capstone, GNU objdump and Unicorn disagree on an
instruction's length (`classify`).

The capstone bugs that `CAPSTONE_CORRECTIONS` corrects have classes of
their own; so do objdump's quirks and QEMU's permissive decoder.
Anything no class explains is "unexplained": skipcheck and decodecheck fail
on it.
"""

from __future__ import annotations

from emulator.insn_length import (CAPSTONE_CORRECTIONS, LEGACY_PREFIXES, correction_for, opcode_of,
                                  parse_prefixes, skip_length)
from emulator.skipcheck.oracles import objdump_prefix_only

# Classes whose byte pattern alone names them, once objdump and Unicorn agree
# with each other and not with capstone: the first two CAPSTONE_CORRECTIONS.
_PATTERN_CLASSES = ("capstone-66-rex-w-ret-imm", "capstone-66-near-branch-intel-vs-amd")


def _is_ud0_ud1(code: bytes) -> bool:
    o = opcode_of(code)
    return o is not None and o[1][:1] == b"\x0f" and o[1][1:2] in (b"\xb9", b"\xff")


def _is_fwait(code: bytes) -> bool:
    o = opcode_of(code)
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
        b in LEGACY_PREFIXES or 0x40 <= b <= 0x4F for b in code[:objdump_len])


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
        corr = correction_for(code, capstone_len)
        if corr is not None and corr.cls in _PATTERN_CLASSES:
            return corr.cls
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
