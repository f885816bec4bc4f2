"""insn_fetch_from_user() and the skip length, as the v13/v14 x86 patch uses them.

The kernel copies up to MAX_INSN_SIZE (15) bytes from the user rip with
copy_from_user(); the copy stops short at the first byte it cannot read, and
a copy of 0 bytes (or a failed decode) makes the handler return without
touching rip, so the instruction is retried.  The length is capstone's,
corrected where capstone disagrees with the CPU (emulator/insn_length.py).
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from emulator.insn_length import skip_length
from emulator.usercopy import copy_from_user
from vdso.insn import MAX_INSN_LEN

if TYPE_CHECKING:
    from emulator.task import Task

__all__ = ["insn_fetch_from_user", "skip_length"]


def insn_fetch_from_user(m: "Task", rip: int) -> bytes:
    return copy_from_user(m, rip, MAX_INSN_LEN, exec_only=True)
