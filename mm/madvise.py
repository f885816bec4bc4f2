"""madvise(2) (mm/madvise.c) for anonymous memory.

Flag advice (WIPEONFORK/KEEPONFORK, DONTDUMP/DODUMP, DONTFORK/DOFORK, RANDOM/
SEQUENTIAL/NORMAL, HUGEPAGE/NOHUGEPAGE, MERGEABLE/UNMERGEABLE) splits and merges
VMAs; on a droppable VMA, KEEPONFORK and DODUMP are refused with -EINVAL (6.11:
droppable memory must stay wipe-on-fork and out of core dumps) while KSM advice is
accepted and ignored (KSM never merges droppable pages). DONTNEED zaps pages (next
access reads zeros), FREE marks pages lazily freeable, PAGEOUT reclaims them now,
POPULATE_READ/WRITE fault them in, GUARD_INSTALL/GUARD_REMOVE place and clear
guard markers. A hole in the range gives -ENOMEM after the mapped parts were
handled, as in Linux.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .flags import (EINVAL, ENOMEM, EPERM, MADV_COLD, MADV_DODUMP, MADV_DOFORK,
                    MADV_DONTDUMP, MADV_DONTFORK, MADV_DONTNEED, MADV_DONTNEED_LOCKED,
                    MADV_FREE, MADV_GUARD_INSTALL, MADV_GUARD_REMOVE, MADV_HUGEPAGE,
                    MADV_HWPOISON, MADV_KEEPONFORK, MADV_MERGEABLE, MADV_NOHUGEPAGE,
                    MADV_NORMAL, MADV_PAGEOUT, MADV_POPULATE_READ, MADV_POPULATE_WRITE,
                    MADV_RANDOM, MADV_REMOVE, MADV_SEQUENTIAL, MADV_SOFT_OFFLINE,
                    MADV_UNMERGEABLE, MADV_WILLNEED, MADV_WIPEONFORK, PAGE_MASK, PAGE_SHIFT,
                    VM_DONTCOPY, VM_DONTDUMP, VM_DONTEXPAND, VM_DROPPABLE, VM_HUGEPAGE,
                    VM_HUGETLB, VM_IO, VM_LOCKED, VM_MAYBE_GUARD, VM_MAYSHARE, VM_MERGEABLE,
                    VM_MIXEDMAP, VM_NOHUGEPAGE, VM_PFNMAP, VM_RAND_READ, VM_SEQ_READ,
                    VM_SHARED, VM_SPECIAL, VM_WIPEONFORK, page_align)
from .gup import populate_range_for
from .page import GUARD_PTE, PTE
from .vmscan import discard_frame, frame_unevictable, swap_out_frame

if TYPE_CHECKING:  # pragma: no cover
    from .mm_types import MmStruct
    from .vma import VMA

_FLAG_ADVICE = {MADV_NORMAL, MADV_RANDOM, MADV_SEQUENTIAL, MADV_DONTFORK, MADV_DOFORK,
                MADV_DONTDUMP, MADV_DODUMP, MADV_WIPEONFORK, MADV_KEEPONFORK,
                MADV_HUGEPAGE, MADV_NOHUGEPAGE, MADV_MERGEABLE, MADV_UNMERGEABLE}
_VALID = _FLAG_ADVICE | {MADV_WILLNEED, MADV_DONTNEED, MADV_DONTNEED_LOCKED, MADV_FREE,
                         MADV_REMOVE, MADV_COLD, MADV_PAGEOUT, MADV_POPULATE_READ,
                         MADV_POPULATE_WRITE, MADV_GUARD_INSTALL, MADV_GUARD_REMOVE}


def ksm_compatible(vm_flags: int) -> bool:
    """mm/ksm.c vma_ksm_compatible(): KSM never merges shared, special, hugetlb or
    droppable memory; MADV_MERGEABLE on such a VMA is accepted and ignored."""
    return not vm_flags & (VM_SHARED | VM_MAYSHARE | VM_PFNMAP | VM_IO | VM_DONTEXPAND
                           | VM_HUGETLB | VM_MIXEDMAP | VM_DROPPABLE)


def is_valid_guard_vma(vm_flags: int, allow_locked: bool) -> bool:
    """mm/madvise.c is_valid_guard_vma(): no guard regions in special or hugetlb
    VMAs, and none installed in locked ones (removing them there is fine)."""
    bad = VM_SPECIAL | VM_HUGETLB | (0 if allow_locked else VM_LOCKED)
    return not vm_flags & bad


def madvise_new_flags(vma: "VMA", advice: int) -> int:
    """madvise_vma_behavior(): the VMA's new vm_flags, or -errno."""
    f = vma.vm_flags
    if advice == MADV_NORMAL:
        return f & ~(VM_RAND_READ | VM_SEQ_READ)
    if advice == MADV_SEQUENTIAL:
        return (f & ~VM_RAND_READ) | VM_SEQ_READ
    if advice == MADV_RANDOM:
        return (f & ~VM_SEQ_READ) | VM_RAND_READ
    if advice == MADV_DONTFORK:
        return f | VM_DONTCOPY
    if advice == MADV_DOFORK:
        if f & VM_IO:
            return -EINVAL
        return f & ~VM_DONTCOPY
    if advice == MADV_WIPEONFORK:
        if f & VM_SHARED or vma.vm_file is not None:    # only private anonymous memory
            return -EINVAL
        return f | VM_WIPEONFORK
    if advice == MADV_KEEPONFORK:
        if f & VM_DROPPABLE:
            return -EINVAL
        return f & ~VM_WIPEONFORK
    if advice == MADV_DONTDUMP:
        return f | VM_DONTDUMP
    if advice == MADV_DODUMP:
        if (not f & VM_HUGETLB and f & VM_SPECIAL) or f & VM_DROPPABLE:
            return -EINVAL
        return f & ~VM_DONTDUMP
    if advice == MADV_HUGEPAGE:
        return (f & ~VM_NOHUGEPAGE) | VM_HUGEPAGE
    if advice == MADV_NOHUGEPAGE:
        return (f & ~VM_HUGEPAGE) | VM_NOHUGEPAGE
    if advice == MADV_MERGEABLE:
        if f & VM_MERGEABLE or not ksm_compatible(f):
            return f                           # ksm_madvise(): "just ignore the advice"
        return f | VM_MERGEABLE
    if advice == MADV_UNMERGEABLE:
        return f & ~VM_MERGEABLE               # nothing was ever merged: no pages to unshare
    raise AssertionError(advice)


def _zap(mm: "MmStruct", start: int, end: int) -> None:
    """zap_page_range_single(): the range becomes none (not 'dropped'). Guard
    markers survive: only unmapping the VMA removes them."""
    for vpn in mm.vpns_in(start, end):
        if not mm.pt[vpn].guard:
            mm.set_pte(vpn, None)


def _guard_install(mm: "MmStruct", vma: "VMA", start: int, end: int) -> int:
    """madvise_guard_install(): flag the whole VMA VM_MAYBE_GUARD (no split), zap
    whatever is mapped in the range and leave a guard marker in every page."""
    if not is_valid_guard_vma(vma.vm_flags, allow_locked=False):
        return -EINVAL
    vma.vm_flags |= VM_MAYBE_GUARD
    pt = mm.pt
    for vpn in range(start >> PAGE_SHIFT, end >> PAGE_SHIFT):
        if pt.get(vpn) is not GUARD_PTE:
            mm.set_pte(vpn, GUARD_PTE)
    return 0


def _guard_remove(mm: "MmStruct", vma: "VMA", start: int, end: int) -> int:
    """madvise_guard_remove(): clear the markers in the range; pages and
    VM_MAYBE_GUARD stay."""
    if not is_valid_guard_vma(vma.vm_flags, allow_locked=True):
        return -EINVAL
    for vpn in mm.vpns_in(start, end):
        if mm.pt[vpn].guard:
            mm.set_pte(vpn, None)
    return 0


def _lazyfree(mm: "MmStruct", start: int, end: int) -> None:
    """madvise_free_pte_range(): swap entries are freed, exclusive frames become
    lazily freeable and write-protected, so a later write (do_wp_page reuse)
    re-dirties them and cancels the free."""
    zero = mm.phys.zero_frame
    for vpn in mm.vpns_in(start, end):
        pte = mm.pt[vpn]
        if pte.frame is None:
            if pte.swap_slot is not None:
                mm.set_pte(vpn, None)
            continue
        f = pte.frame
        if f is zero or not f.exclusive:
            continue
        mm.phys.set_lazyfree(f, True)
        if pte.writable:
            mm.set_pte(vpn, PTE(f, False))


def _pageout(mm: "MmStruct", start: int, end: int) -> None:
    """MADV_PAGEOUT: reclaim exclusively mapped pages now (drop droppable ones,
    swap out the rest if swap has room)."""
    phys = mm.phys
    for vpn in mm.vpns_in(start, end):
        pte = mm.pt.get(vpn)
        if pte is None or pte.frame is None or pte.frame.is_zero or pte.frame.mapcount != 1:
            continue
        f = pte.frame
        if frame_unevictable(f):
            continue                           # kernel pages of a VM_IO special mapping
        if f.droppable or f.lazyfree or f.mapping is not None:
            discard_frame(phys, f)      # page-cache pages: evicted, re-read later
        elif phys.swap.free > 0:
            swap_out_frame(phys, f)


def do_madvise(mm: "MmStruct", start: int, len_in: int, advice: int) -> int:
    if advice in (MADV_HWPOISON, MADV_SOFT_OFFLINE):
        return -EPERM                          # needs CAP_SYS_ADMIN
    if advice not in _VALID:
        return -EINVAL
    if start & ~PAGE_MASK:
        return -EINVAL
    length = page_align(len_in)
    if len_in and not length:
        return -EINVAL
    end = start + length
    if end < start:
        return -EINVAL
    if end == start:
        return 0
    if advice in (MADV_POPULATE_READ, MADV_POPULATE_WRITE):
        return populate_range_for(mm, start, end, advice == MADV_POPULATE_WRITE)

    unmapped_error = 0
    pos = start
    while pos < end:
        vma = mm.vma_tree.find(pos)
        if vma is None:
            nxt = mm.vma_tree.find_next(pos)
            if nxt is None or nxt.start >= end:
                unmapped_error = -ENOMEM
                break
            unmapped_error = -ENOMEM
            pos = nxt.start
            continue
        tmp = min(vma.end, end)
        err = _madvise_vma(mm, vma, pos, tmp, advice)
        if err:
            mm.vma_tree.merge_around(start, end)
            return err
        pos = tmp
    mm.vma_tree.merge_around(start, end)
    return unmapped_error


def _madvise_vma(mm: "MmStruct", vma: "VMA", start: int, end: int, advice: int) -> int:
    f = vma.vm_flags
    if advice in _FLAG_ADVICE:
        newflags = madvise_new_flags(vma, advice)
        if newflags < 0:
            return newflags
        if newflags != f:
            for v in mm.vma_tree.isolate(start, end):
                v.vm_flags = newflags
        return 0
    if advice in (MADV_DONTNEED, MADV_DONTNEED_LOCKED, MADV_FREE, MADV_COLD, MADV_PAGEOUT):
        # can_madv_lru_vma(): not on locked, PFN-mapped or hugetlb VMAs
        # (MADV_DONTNEED_LOCKED tolerates VM_LOCKED).
        bad = VM_PFNMAP | VM_HUGETLB | (0 if advice == MADV_DONTNEED_LOCKED else VM_LOCKED)
        if f & bad:
            return -EINVAL
    if advice in (MADV_DONTNEED, MADV_DONTNEED_LOCKED):
        _zap(mm, start, end)
    elif advice == MADV_FREE:
        if vma.vm_file is not None:
            return -EINVAL                     # lazy freeing is for anonymous memory
        _lazyfree(mm, start, end)
    elif advice == MADV_PAGEOUT:
        _pageout(mm, start, end)
    elif advice == MADV_REMOVE:
        return -EINVAL                         # needs a shared (shmem/file) mapping
    elif advice == MADV_GUARD_INSTALL:
        return _guard_install(mm, vma, start, end)
    elif advice == MADV_GUARD_REMOVE:
        return _guard_remove(mm, vma, start, end)
    # MADV_WILLNEED and MADV_COLD are hints with no effect on this model.
    return 0


def set_anon_name(mm: "MmStruct", start: int, len_in: int, name: str) -> int:
    """prctl(PR_SET_VMA, PR_SET_VMA_ANON_NAME): name anonymous VMAs ("" clears);
    smaps then shows [anon:name]. Same range rules as madvise."""
    if len(name) > 79 or any(c in name for c in "\\`$[]") or not name.isprintable():
        return -EINVAL
    if start & ~PAGE_MASK:
        return -EINVAL
    end = start + page_align(len_in)
    if end < start:
        return -EINVAL
    error = 0
    pos = start
    while pos < end:
        vma = mm.vma_tree.find(pos)
        if vma is None:
            nxt = mm.vma_tree.find_next(pos)
            error = -ENOMEM
            if nxt is None or nxt.start >= end:
                break
            pos = nxt.start
            continue
        tmp = min(vma.end, end)
        if vma.name != name:
            for v in mm.vma_tree.isolate(pos, tmp):
                v.name = name
        pos = tmp
    mm.vma_tree.merge_around(start, end)
    return error


__all__ = ["do_madvise", "madvise_new_flags", "set_anon_name"]
