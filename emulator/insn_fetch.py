"""insn_fetch_from_user() and the skip length, as the v13/v14 x86 patch uses them.

The kernel copies up to MAX_INSN_SIZE (15) bytes from the user rip with
copy_from_user(); the copy stops short at the first byte it cannot read, and
a copy of 0 bytes (or a failed decode) makes the handler return without
touching rip, so the instruction is retried.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from vdso.insn import MAX_INSN_LEN

if TYPE_CHECKING:
    from emulator.machine import Machine

PAGE_SIZE = 4096


def insn_fetch_from_user(m: "Machine", rip: int) -> bytes:
    from emulator.usercopy import copy_from_user
    return copy_from_user(m, rip, MAX_INSN_LEN, exec_only=True)


def skip_length(raw: bytes) -> int | None:
    """The length to add to rip, or None when nothing decodes (retry)."""
    try:
        from emulator.insn_length import skip_length as corrected
    except ImportError:      # pragma: no cover - the corrected table is part of the package
        corrected = None
    if corrected is not None:
        return corrected(raw)
    from vdso.insn import decode_one
    ins = decode_one(raw)
    return ins.size if ins else None
