"""What /proc and the aux vector say about the stepped process.

gdb learns where a Linux process's vDSO is from the aux vector
(AT_SYSINFO_EHDR, served as qXfer:auxv:read) and how long it is from
/proc/PID/task/PID/maps (read through vFile:open).  Both are built here
from the emulated process itself: its mm's VMAs and the kernel's special
mappings, formatted as fs/proc/task_mmu.c show_map_vma() prints them.
"""
from __future__ import annotations

import struct

from emulator.kernel import SENTINEL_PAGE
from mm.flags import PAGE_SIZE
from mm.smaps import vma_header

# include/uapi/linux/auxvec.h
AT_NULL = 0
AT_PAGESZ = 6
AT_ENTRY = 9
AT_SYSINFO_EHDR = 33


def auxv(image_base: int, entry: int = SENTINEL_PAGE) -> bytes:
    """The aux vector of an x86-64 process: (type, value) u64 pairs up to AT_NULL.
    AT_ENTRY is the caller's code (the return sentinel), which the executable
    the stub serves (emulator/debug/process_elf.py) says is its entry point."""
    pairs = [(AT_SYSINFO_EHDR, image_base), (AT_PAGESZ, PAGE_SIZE), (AT_ENTRY, entry), (AT_NULL, 0)]
    return b"".join(struct.pack("<QQ", t, v) for t, v in pairs)


def maps(kernel, mm, exe_path: str, names: dict[int, str] | None = None) -> str:
    """/proc/PID/maps.  `names`: VMA start -> a bracketed name for anonymous
    areas the kernel names itself ([stack])."""
    names = names or {}
    rows = []
    for name, start, backing, perms in kernel.special_mappings():
        p = ("r" if "r" in perms else "-") + "-" + ("x" if "x" in perms else "-") + "p"
        label = exe_path if start == SENTINEL_PAGE else name
        rows.append((start, _line(start, start + len(backing), p, label)))
    for v in mm.vmas:
        head = vma_header(v)
        label = names.get(v.start, "")
        rows.append((v.start, head.rstrip() if not label else head.split("[anon:")[0].ljust(73) + label))
    return "".join(r + "\n" for _, r in sorted(rows))


def _line(start: int, end: int, perms: str, name: str) -> str:
    return f"{start:08x}-{end:08x} {perms} {0:08x} 00:00 0".ljust(73) + name
