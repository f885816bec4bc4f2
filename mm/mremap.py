"""mremap(2) (mm/mremap.c as of 6.18): shrink, grow in place, move (MREMAP_MAYMOVE,
MREMAP_FIXED), keep the source mapped (MREMAP_DONTUNMAP), and the 6.17 batched
move of every VMA in a range (MREMAP_FIXED without a size change).

Moving carries the PTEs over as they are: frames (and so the data), swap entries
and guard markers; the new VMA keeps the old one's flags, name and anon_vma, so a
droppable mapping stays droppable (dp wf dd nr). Nothing is copied and nothing is
faulted, except that growing a VM_LOCKED mapping populates the new part.

Accounting follows the kernel's net effect: a VM_ACCOUNT mapping is charged for
what it grows (or, with DONTUNMAP, for the whole new copy, since the source keeps
its charge); locked_vm moves with a locked mapping. With DONTUNMAP the source loses
VM_LOCKED but locked_vm is not lowered for it (6.18 move_vma: "we won't unmap, so
we don't touch locked_vm"), so the count stays high until exit, as on the host.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .flags import (EAGAIN, EFAULT, EINVAL, ENOMEM, MAP_FIXED, MREMAP_DONTUNMAP,
                    MREMAP_FIXED, MREMAP_MAYMOVE, PAGE_MASK, PAGE_SHIFT, VM_ACCOUNT,
                    VM_DONTEXPAND, VM_LOCKED, VM_LOCKED_MASK, VM_MAYSHARE, VM_PFNMAP,
                    VM_SHARED, page_align)
from .gup import populate_range
from .mmap import MAX_MAP_COUNT, do_munmap_range, get_unmapped_area, mlock_future_ok
from .overcommit import vm_enough_memory

if TYPE_CHECKING:  # pragma: no cover
    from .mm_types import MmStruct
    from .vma import VMA


def do_mremap(mm: "MmStruct", addr: int, old_len: int, new_len: int, flags: int,
              new_addr: int = 0) -> int:
    """mremap(2): the (new) address, or -errno."""
    err = _check_params(mm, addr, old_len, new_len, flags, new_addr)
    if err:
        return err
    old_len, new_len = page_align(old_len), page_align(new_len)
    fixed = bool(flags & MREMAP_FIXED)
    dontunmap = bool(flags & MREMAP_DONTUNMAP)

    vma = mm.find_vma(addr)
    if vma is None:
        return -EFAULT
    if fixed and old_len == new_len:
        return _remap_move(mm, addr, old_len, new_addr, dontunmap)
    if not old_len and not vma.vm_flags & (VM_SHARED | VM_MAYSHARE):
        return -EINVAL                    # old_len 0 duplicates shared mappings only
    if dontunmap and vma.vm_flags & (VM_DONTEXPAND | VM_PFNMAP):
        return -EINVAL
    if fixed:
        return _mremap_to(mm, vma, addr, old_len, new_len, new_addr, dontunmap)
    if new_len <= old_len and not dontunmap:
        # Shrinking (or no change) only unmaps the tail: no VMA boundary rule applies,
        # the old range may run over several VMAs and holes.
        if new_len < old_len:
            do_munmap_range(mm, addr + new_len, addr + old_len)
        return addr
    err = _check_resize(mm, vma, addr, old_len, new_len)
    if err:
        return err
    if not dontunmap and addr + old_len == vma.end and _expandable(mm, vma, addr + new_len):
        return _expand_in_place(mm, vma, addr, old_len, new_len)
    if not flags & MREMAP_MAYMOVE:
        return -ENOMEM
    target = get_unmapped_area(mm, 0, new_len, 0)
    if target < 0:
        return target
    return move_vma(mm, vma, addr, old_len, new_len, target, dontunmap)


def _check_params(mm: "MmStruct", addr: int, old_len: int, new_len: int, flags: int,
                  new_addr: int) -> int:
    """check_mremap_params(): everything that needs no VMA."""
    if flags & ~(MREMAP_FIXED | MREMAP_MAYMOVE | MREMAP_DONTUNMAP):
        return -EINVAL
    if flags & MREMAP_FIXED and not flags & MREMAP_MAYMOVE:
        return -EINVAL
    if flags & MREMAP_DONTUNMAP and (not flags & MREMAP_MAYMOVE or old_len != new_len):
        return -EINVAL
    if addr & ~PAGE_MASK:
        return -EINVAL
    old_len, new_len = page_align(old_len), page_align(new_len)
    if not new_len:
        return -EINVAL
    if flags & MREMAP_FIXED:
        if new_addr & ~PAGE_MASK:
            return -EINVAL
        if new_len > mm.task_size or new_addr > mm.task_size - new_len:
            return -EINVAL
        if addr < new_addr + new_len and new_addr < addr + old_len:
            return -EINVAL                # source and target overlap
    return 0


def _check_resize(mm: "MmStruct", vma: "VMA", addr: int, old_len: int, new_len: int) -> int:
    """check_prep_vma() for a move or a growth: the old range lies in one VMA, and
    a growth must be allowed by the VMA and by RLIMIT_MEMLOCK."""
    if old_len > vma.end - addr:
        return -EFAULT
    if new_len <= old_len:
        return 0
    if vma.vm_flags & (VM_DONTEXPAND | VM_PFNMAP):
        return -EFAULT
    if not mlock_future_ok(mm, vma.vm_flags, new_len - old_len):
        return -EAGAIN
    return 0


def _expandable(mm: "MmStruct", vma: "VMA", new_end: int) -> bool:
    """vma_expandable(): nothing mapped between the VMA's end and new_end."""
    return new_end <= mm.task_size and not mm.vma_tree.overlapping(vma.end, new_end)


def _expand_in_place(mm: "MmStruct", vma: "VMA", addr: int, old_len: int, new_len: int) -> int:
    pages = (new_len - old_len) >> PAGE_SHIFT
    if vma.vm_flags & VM_ACCOUNT and vm_enough_memory(mm.phys, pages, mm):
        return -ENOMEM
    old_end = vma.end
    vma.end = addr + new_len                 # the start, and so the tree order, stays
    if vma.vm_flags & VM_LOCKED:
        mm.locked_vm += pages
    mm.mark_changed(old_end, vma.end)
    mm.vma_tree.merge_around(vma.start, vma.end)
    if vma.vm_flags & VM_LOCKED:
        populate_range(mm, addr + old_len, addr + new_len, ignore_errors=True)
    return addr


def _mremap_to(mm: "MmStruct", vma: "VMA", addr: int, old_len: int, new_len: int,
               new_addr: int, dontunmap: bool) -> int:
    """MREMAP_FIXED with a size change: unmap the target, shrink the source first
    if asked, then move."""
    if new_len > old_len:
        err = _check_resize(mm, vma, addr, old_len, new_len)
        if err:
            return err
    target = get_unmapped_area(mm, new_addr, new_len, MAP_FIXED)
    if target < 0:
        return target
    do_munmap_range(mm, new_addr, new_addr + new_len)
    if old_len > new_len:
        do_munmap_range(mm, addr + new_len, addr + old_len)
        old_len = new_len
    vma = mm.find_vma(addr)
    if vma is None or old_len > vma.end - addr:
        return -EFAULT
    return move_vma(mm, vma, addr, old_len, new_len, new_addr, dontunmap)


def _remap_move(mm: "MmStruct", addr: int, length: int, new_addr: int, dontunmap: bool) -> int:
    """remap_move() (6.17): a pure move with MREMAP_FIXED takes every VMA of
    [addr, addr+length) along, gaps included (the target's gaps are left alone).
    No gap is allowed at the start. A failure part-way leaves a partial move."""
    end = addr + length
    result = -EFAULT
    first = True
    for vma in mm.vma_tree.overlapping(addr, end):
        start = max(vma.start, addr)
        if first and start > addr:
            return -EFAULT
        piece_end = min(vma.end, end)
        if dontunmap and vma.vm_flags & (VM_DONTEXPAND | VM_PFNMAP):
            return -EINVAL
        target = new_addr + (start - addr)
        n = piece_end - start
        err = get_unmapped_area(mm, target, n, MAP_FIXED)
        if err < 0:
            return err
        do_munmap_range(mm, target, target + n)
        live = mm.find_vma(start)
        res = move_vma(mm, live, start, n, n, target, dontunmap)
        if res < 0:
            return res
        if first:
            result = res
            first = False
    return result


def move_vma(mm: "MmStruct", vma: "VMA", old_addr: int, old_len: int, new_len: int,
             new_addr: int, dontunmap: bool) -> int:
    """Give [old_addr, old_addr+old_len) of vma a new home of new_len bytes at
    new_addr (already free), carrying its PTEs over."""
    if mm.map_count >= MAX_MAP_COUNT - 3:
        return -ENOMEM
    flags = vma.vm_flags
    grow = (new_len - old_len) >> PAGE_SHIFT
    if flags & VM_ACCOUNT:
        charge = new_len >> PAGE_SHIFT if dontunmap else grow
        if charge > 0 and vm_enough_memory(mm.phys, charge, mm):
            return -ENOMEM
    old_end = old_addr + old_len
    if old_len:
        olds = mm.vma_tree.isolate(old_addr, old_end)
        new = olds[0].copy(start=new_addr, end=new_addr + new_len)
    else:
        # old_len 0 on a shared mapping: a second mapping of the same file pages.
        olds = []
        new = vma.copy(start=new_addr, end=new_addr + new_len,
                       vm_pgoff=vma.pgoff_of(old_addr) if vma.vm_file is not None else 0)
    mm.vma_tree.insert(new)
    mm.mark_changed(new_addr, new_addr + new_len)

    # move_page_tables(): the PTEs change address, nothing else. Install at the new
    # address first, so a frame never loses its last mapping on the way.
    delta = (new_addr - old_addr) >> PAGE_SHIFT
    pt = mm.pt
    for vpn in mm.vpns_in(old_addr, old_end):
        pte = pt[vpn]
        if pte.none:
            mm.set_pte(vpn, None)           # a dropped marker stays behind, as none
            continue
        mm.set_pte(vpn + delta, pte)
        mm.set_pte(vpn, None)

    if flags & VM_LOCKED:
        mm.locked_vm += new_len >> PAGE_SHIFT
    if dontunmap:
        # The source stays mapped, empty, and can no longer be locked.
        for v in olds:
            v.vm_flags &= ~VM_LOCKED_MASK
        mm.mark_changed(old_addr, old_end)
    else:
        # The source's commit charge moves with the mapping: remove it unaccounted.
        for v in olds:
            if v.vm_flags & VM_LOCKED:
                mm.locked_vm -= v.pages
            mm.vma_tree.remove(v)
        mm.mark_changed(old_addr, old_end)
    if dontunmap:
        mm.vma_tree.merge_around(old_addr, old_end)
    mm.vma_tree.merge_around(new_addr, new_addr + new_len)
    if flags & VM_LOCKED and new_len > old_len:
        populate_range(mm, new_addr + old_len, new_addr + new_len, ignore_errors=True)
    return new_addr


__all__ = ["do_mremap", "move_vma"]
