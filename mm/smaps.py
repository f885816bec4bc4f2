"""/proc/PID/smaps-like text (fs/proc/task_mmu.c show_smap, show_smap_vma_flags).

Dirty state is not tracked: every anonymous page with a real frame counts as
dirty (true for zero-filled, COW-copied and written pages) except MADV_FREE'd ones
not written since, which are counted as clean LazyFree. The zero page is not a
"normal" page and counts in no Rss, like in Linux.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .flags import (PAGE_SIZE, VM_EXEC, VM_FLAG_MNEMONICS, VM_LOCKED, VM_MAYSHARE,
                    VM_READ, VM_WRITE, vm_flags_str)

__all__ = ["VM_FLAG_MNEMONICS", "vm_flags_str", "vma_header", "vma_usage", "smaps"]

if TYPE_CHECKING:  # pragma: no cover
    from .mm_types import MmStruct


def vma_header(vma) -> str:
    f = vma.vm_flags
    perms = (("r" if f & VM_READ else "-") + ("w" if f & VM_WRITE else "-")
             + ("x" if f & VM_EXEC else "-") + ("s" if f & VM_MAYSHARE else "p"))
    line = f"{vma.start:08x}-{vma.end:08x} {perms} {0:08x} 00:00 0 "
    if vma.name:
        line = line.ljust(73) + f"[anon:{vma.name}]"
    return line


def vma_usage(mm: "MmStruct", vma) -> dict[str, int]:
    """Per-VMA page counters in kB, as show_smap computes them."""
    rss = shared = private = swap = lazy = 0
    pss = pss_dirty = swap_pss = 0.0
    zero = mm.phys.zero_frame
    swapmap = mm.phys.swap.slots
    for vpn in mm.vpns_in(vma.start, vma.end):
        pte = mm.pt[vpn]
        f = pte.frame
        if f is None:
            if pte.swap_slot is not None:
                swap += 1
                s = swapmap.get(pte.swap_slot)
                swap_pss += 1.0 / max(1, s.refs if s is not None else 1)
            continue
        if f is zero:
            continue
        rss += 1
        mc = max(1, f.mapcount)
        pss += 1.0 / mc
        if mc > 1:
            shared += 1
        else:
            private += 1
        if f.lazyfree:
            lazy += 1
        else:
            pss_dirty += 1.0 / mc
    kb = PAGE_SIZE // 1024
    locked = vma.vm_flags & VM_LOCKED
    return {
        "Size": vma.size // 1024, "Rss": rss * kb, "Pss": int(pss * kb),
        "Pss_Dirty": int(pss_dirty * kb), "Shared": shared * kb, "Private": private * kb,
        "Swap": swap * kb, "SwapPss": int(swap_pss * kb), "LazyFree": lazy * kb,
        "Locked": int(pss * kb) if locked else 0,
    }


def smaps(mm: "MmStruct") -> str:
    out = []
    kb = PAGE_SIZE // 1024
    for v in mm.vma_tree:
        u = vma_usage(mm, v)
        lazy = u["LazyFree"]
        out.append(vma_header(v))
        rows = [
            ("Size", u["Size"]), ("KernelPageSize", kb), ("MMUPageSize", kb),
            ("Rss", u["Rss"]), ("Pss", u["Pss"]), ("Pss_Dirty", u["Pss_Dirty"]),
            ("Shared_Clean", 0), ("Shared_Dirty", u["Shared"]),
            ("Private_Clean", lazy), ("Private_Dirty", u["Private"] - lazy),
            ("Referenced", u["Rss"]), ("Anonymous", u["Rss"]), ("KSM", 0),
            ("LazyFree", lazy), ("AnonHugePages", 0), ("ShmemPmdMapped", 0),
            ("FilePmdMapped", 0), ("Shared_Hugetlb", 0), ("Private_Hugetlb", 0),
            ("Swap", u["Swap"]), ("SwapPss", u["SwapPss"]), ("Locked", u["Locked"]),
        ]
        for name, val in rows:
            out.append(f"{name + ':':<16}{val:>8} kB")
        out.append(f"THPeligible:    {0:>8}")
        out.append(f"VmFlags: {vm_flags_str(v.vm_flags)} ")
    return "\n".join(out) + ("\n" if out else "")
