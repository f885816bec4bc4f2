"""/proc/PID/smaps-like text (fs/proc/task_mmu.c show_smap, show_smap_vma_flags).

Dirty state is not tracked: every anonymous page with a real frame counts as
dirty (true for zero-filled, COW-copied and written pages) except MADV_FREE'd ones
not written since, which are counted as clean LazyFree; page-cache pages are clean
(nothing ever writes them) and not Anonymous. The zero page is not a "normal" page
and counts in no Rss, like in Linux.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from .flags import (PAGE_SHIFT, PAGE_SIZE, VM_EXEC, VM_FLAG_MNEMONICS, VM_LOCKED,
                    VM_MAYSHARE, VM_READ, VM_WRITE, vm_flags_str)

__all__ = ["VM_FLAG_MNEMONICS", "vm_flags_str", "vma_header", "vma_usage", "smaps"]

if TYPE_CHECKING:  # pragma: no cover
    from .mm_types import MmStruct


def vma_header(vma) -> str:
    """show_map_vma(): range, perms, file offset, device, inode, then the path
    (or [anon:name]) from column 74."""
    f = vma.vm_flags
    perms = (("r" if f & VM_READ else "-") + ("w" if f & VM_WRITE else "-")
             + ("x" if f & VM_EXEC else "-") + ("s" if f & VM_MAYSHARE else "p"))
    file = vma.vm_file
    if file is not None:
        dev, ino, off = file.dev, file.ino, vma.vm_pgoff << PAGE_SHIFT
        major, minor = os.major(dev), os.minor(dev)      # st_dev as stat(2) encodes it
    else:
        major = minor = ino = off = 0
    line = f"{vma.start:08x}-{vma.end:08x} {perms} {off:08x} {major:02x}:{minor:02x} {ino} "
    if file is not None:
        line = line.ljust(73) + file.name
    elif vma.name:
        line = line.ljust(73) + f"[anon:{vma.name}]"
    return line


def vma_usage(mm: "MmStruct", vma) -> dict[str, int]:
    """Per-VMA page counters in kB, as show_smap computes them. Anonymous frames
    are dirty unless MADV_FREE'd (LazyFree); page-cache frames are clean and not
    Anonymous."""
    rss = anon = lazy = swap = 0
    shared_clean = shared_dirty = private_clean = private_dirty = 0
    pss = pss_dirty = swap_pss = 0.0
    zero = mm.phys.zero_frame
    swapmap = mm.phys.swap.slots
    pt = mm.pt
    for vpn in mm.vpns_in(vma.start, vma.end):
        pte = pt[vpn]
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
        clean = f.mapping is not None or f.lazyfree
        if f.mapping is None:
            anon += 1
        if f.lazyfree:
            lazy += 1
        if not clean:
            pss_dirty += 1.0 / mc
        if mc > 1:
            if clean:
                shared_clean += 1
            else:
                shared_dirty += 1
        elif clean:
            private_clean += 1
        else:
            private_dirty += 1
    kb = PAGE_SIZE // 1024
    locked = vma.vm_flags & VM_LOCKED
    return {
        "Size": vma.size // 1024, "Rss": rss * kb, "Pss": int(pss * kb),
        "Pss_Dirty": int(pss_dirty * kb), "Shared_Clean": shared_clean * kb,
        "Shared_Dirty": shared_dirty * kb, "Private_Clean": private_clean * kb,
        "Private_Dirty": private_dirty * kb, "Anonymous": anon * kb,
        "Shared": (shared_clean + shared_dirty) * kb,
        "Private": (private_clean + private_dirty) * kb,
        "Swap": swap * kb, "SwapPss": int(swap_pss * kb), "LazyFree": lazy * kb,
        "Locked": int(pss * kb) if locked else 0,
    }


def smaps(mm: "MmStruct") -> str:
    out = []
    kb = PAGE_SIZE // 1024
    for v in mm.vma_tree:
        u = vma_usage(mm, v)
        out.append(vma_header(v))
        rows = [
            ("Size", u["Size"]), ("KernelPageSize", kb), ("MMUPageSize", kb),
            ("Rss", u["Rss"]), ("Pss", u["Pss"]), ("Pss_Dirty", u["Pss_Dirty"]),
            ("Shared_Clean", u["Shared_Clean"]), ("Shared_Dirty", u["Shared_Dirty"]),
            ("Private_Clean", u["Private_Clean"]), ("Private_Dirty", u["Private_Dirty"]),
            ("Referenced", u["Rss"]), ("Anonymous", u["Anonymous"]), ("KSM", 0),
            ("LazyFree", u["LazyFree"]), ("AnonHugePages", 0), ("ShmemPmdMapped", 0),
            ("FilePmdMapped", 0), ("Shared_Hugetlb", 0), ("Private_Hugetlb", 0),
            ("Swap", u["Swap"]), ("SwapPss", u["SwapPss"]), ("Locked", u["Locked"]),
        ]
        for name, val in rows:
            out.append(f"{name + ':':<16}{val:>8} kB")
        out.append(f"THPeligible:    {0:>8}")
        out.append(f"VmFlags: {vm_flags_str(v.vm_flags)} ")
    return "\n".join(out) + ("\n" if out else "")
