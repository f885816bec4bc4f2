"""Refuse assembled code that Unicorn 2.1 cannot run as the CPU does.

Capstone decodes every statement that is code (data directives and alignment
padding are skipped by the caller) and refuses, with file:line, VEX (c4/c5),
EVEX (62) and XOP (8f) encodings, which Unicorn 2.1 runs wrongly or not at
all, and `lock bt/bts/btr/btc` with a register operand, which aborts Unicorn
2.1.4.  The rules themselves are vdso.insn's, shared with the run-time block
checks; this module applies them to a range of freshly assembled bytes and
records each instruction's source line on the way.
"""
from __future__ import annotations

from vdso.errors import UnfaithfulInstruction
from vdso.insn import disassembler, unfaithful_reason


def decode_range(code: bytes, base: int, start: int, end: int, where: str,
                 source_lines: dict[int, str]) -> None:
    """Decode code[start:end] (at address base + start) as instructions only;
    record `where` for each instruction's offset in source_lines."""
    off = start
    for insn in disassembler(detail=True).disasm(code[start:end], base + start):
        reason = unfaithful_reason(bytes(insn.bytes), insn.mnemonic, insn.op_str)
        if reason:
            raise UnfaithfulInstruction(
                f"{where}: {insn.mnemonic} {insn.op_str} ({bytes(insn.bytes).hex(' ')}) "
                f"at {insn.address:#x}: {reason}")
        source_lines[off] = where
        off += insn.size
    if off != end:
        raw = code[off:min(end, off + 15)]
        why = unfaithful_reason(raw) or "they do not decode as an x86-64 instruction"
        raise UnfaithfulInstruction(f"{where}: bytes {raw.hex(' ')} at {base + off:#x}: {why}")


def check_faithful(code: bytes, addr: int, where: str = "<code>") -> None:
    """Refuse code Unicorn 2.1 cannot run faithfully (linear sweep over all of
    `code`, which must be instructions only)."""
    decode_range(code, addr, 0, len(code), where, {})
