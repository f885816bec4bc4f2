"""fork's address-space copy (kernel/fork.c dup_mm/dup_mmap, mm/memory.c
copy_page_range).

Per parent VMA:
- VM_DONTCOPY: absent in the child;
- VM_ACCOUNT: charged again for the child (strict overcommit can make fork fail
  with -ENOMEM);
- VM_LOCKED/VM_LOCKONFAULT cleared (locks are not inherited; child locked_vm = 0,
  and MCL_FUTURE's def_flags are not inherited either);
- VM_WIPEONFORK (so every droppable VMA): the child gets the VMA with no pages
  (reads see zeros); VM_DROPPABLE and the other flags are inherited; a pinned
  special mapping (mm/special_mapping.py) gets fresh zeroed kernel pages instead,
  or the fork fails with -ENOMEM;
- a file mapping with no anonymous page and no guard marker: the VMA only; the
  child faults its pages in from the page cache;
- otherwise the PTEs are shared copy-on-write: present frames are write-protected
  in both mms; swap entries, zero-page and page-cache mappings are shared.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable, Union

from .flags import ENOMEM, VM_ACCOUNT, VM_COPY_ON_FORK, VM_INIT_DEF_MASK, VM_LOCKED_MASK
from .overcommit import vm_enough_memory, vm_unacct_memory
from .page import PTE
from .special_mapping import dup_special_mappings

if TYPE_CHECKING:  # pragma: no cover
    from .mm_types import MmStruct


def vma_needs_copy(vma) -> bool:
    """kernel/fork.c vma_needs_copy(): anonymous pages (an anon_vma) or guard
    markers (VM_COPY_ON_FORK) live only in the page table and must be copied; a
    file mapping without either is refaulted from the page cache by the child."""
    return vma.vm_file is None or vma.anon_vma is not None or bool(vma.vm_flags & VM_COPY_ON_FORK)


def dup_mm(parent: "MmStruct", allocate_mm: Callable[[], "MmStruct"]) -> Union["MmStruct", int]:
    """The child's mm, or -ENOMEM when commit accounting refuses it.

    allocate_mm() returns the child's empty mm (allocate_mm() + mm_init() in
    kernel/fork.c: same PhysMem, same limits); this module fills it in (dup_mmap)."""
    phys = parent.phys
    charged = 0
    for v in parent.vma_tree:
        if v.is_dontcopy or not v.vm_flags & VM_ACCOUNT:
            continue
        if vm_enough_memory(phys, v.pages, parent):
            if charged:
                vm_unacct_memory(phys, charged)
            return -ENOMEM
        charged += v.pages

    child = allocate_mm()
    child.def_flags = parent.def_flags & VM_INIT_DEF_MASK
    copied = []
    for v in parent.vma_tree:
        if v.is_dontcopy:
            continue
        cv = v.copy(vm_flags=v.vm_flags & ~VM_LOCKED_MASK)
        if v.is_wipeonfork:
            cv.anon_vma = None                 # no pages, a fresh anon_vma later
        elif vma_needs_copy(v):
            copied.append(v)
        child.vma_tree.insert(cv)
        child.mark_changed(cv.start, cv.end)

    ppt = parent.pt
    for v in copied:
        for vpn in parent.vpns_in(v.start, v.end):
            pte = ppt[vpn]
            if pte.none:
                continue                       # dropped markers are not copied
            if pte.frame is not None and pte.writable:
                pte = PTE(pte.frame, False)    # COW: write-protect the parent too
                parent.set_pte(vpn, pte)
            child.set_pte(vpn, pte)
    if dup_special_mappings(child):
        child.exit_mmap()
        return -ENOMEM
    return child


__all__ = ["dup_mm"]
