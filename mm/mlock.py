"""mlock/munlock/mlock2/mlockall/munlockall (mm/mlock.c).

locked_vm counts pages of VM_LOCKED VMAs against RLIMIT_MEMLOCK. Droppable VMAs
are never locked (6.11 mlock_fixup skips VM_DROPPABLE): mlock() on them succeeds,
populates them, and neither sets VM_LOCKED nor counts them. Note that, as in
Linux, mlock's up-front RLIMIT_MEMLOCK estimate still counts the whole requested
length, droppable parts included.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .flags import (EAGAIN, EFAULT, EINVAL, ENOMEM, EPERM, MCL_CURRENT, MCL_FUTURE,
                    MCL_ONFAULT, MLOCK_ONFAULT, PAGE_MASK, PAGE_SHIFT, VM_DROPPABLE,
                    VM_HUGETLB, VM_LOCKED, VM_LOCKED_MASK, VM_LOCKONFAULT, VM_SPECIAL,
                    page_align)
from .gup import populate_range
from .mmap import can_do_mlock

if TYPE_CHECKING:  # pragma: no cover
    from .mm_types import MmStruct
    from .vma import VMA


def mlock_fixup(mm: "MmStruct", vma: "VMA", start: int, end: int, newflags: int) -> None:
    oldflags = vma.vm_flags
    if newflags == oldflags or oldflags & (VM_SPECIAL | VM_HUGETLB | VM_DROPPABLE):
        return                          # don't set VM_LOCKED/VM_LOCKONFAULT, don't count
    pages = (end - start) >> PAGE_SHIFT
    if not newflags & VM_LOCKED:
        pages = -pages
    elif oldflags & VM_LOCKED:
        pages = 0
    mm.locked_vm += pages
    for v in mm.vma_tree.isolate(start, end):
        v.vm_flags = newflags


def apply_vma_lock_flags(mm: "MmStruct", start: int, length: int, flags: int) -> int:
    end = start + length
    if end < start:
        return -EINVAL
    if end == start:
        return 0
    nstart = start
    error = 0
    while nstart < end:
        vma = mm.vma_tree.find(nstart)
        if vma is None:
            error = -ENOMEM
            break
        tmp = min(vma.end, end)
        mlock_fixup(mm, vma, nstart, tmp, (vma.vm_flags & ~VM_LOCKED_MASK) | flags)
        nstart = tmp
    mm.vma_tree.merge_around(start, end)
    return error


def count_mm_mlocked_page_nr(mm: "MmStruct", start: int, length: int) -> int:
    end = start + length
    n = 0
    for v in mm.vma_tree.overlapping(start, end):
        if v.vm_flags & VM_LOCKED:
            n += (min(v.end, end) - max(v.start, start)) >> PAGE_SHIFT
    return n


def _posix_error(err: int) -> int:
    """__mlock_posix_error_return(): POSIX wants EAGAIN/ENOMEM the other way round."""
    if err == -EFAULT:
        return -ENOMEM
    if err == -ENOMEM:
        return -EAGAIN
    return err


def do_mlock(mm: "MmStruct", start: int, length: int, vm_flags: int) -> int:
    if not can_do_mlock(mm):
        return -EPERM
    length = page_align(length + (start & ~PAGE_MASK))
    start &= PAGE_MASK
    lock_limit = mm.rlimit_memlock >> PAGE_SHIFT
    locked = (length >> PAGE_SHIFT) + mm.locked_vm
    if locked > lock_limit and not mm.cap_ipc_lock:
        locked -= count_mm_mlocked_page_nr(mm, start, length)   # already locked in range
    if locked > lock_limit and not mm.cap_ipc_lock:
        return -ENOMEM
    error = apply_vma_lock_flags(mm, start, length, vm_flags)
    if error:
        return error
    error = populate_range(mm, start, start + length, ignore_errors=False)
    return _posix_error(error) if error < 0 else 0


def sys_mlock(mm: "MmStruct", start: int, length: int) -> int:
    return do_mlock(mm, start, length, VM_LOCKED)


def sys_mlock2(mm: "MmStruct", start: int, length: int, flags: int) -> int:
    if flags & ~MLOCK_ONFAULT:
        return -EINVAL
    return do_mlock(mm, start, length,
                    VM_LOCKED | (VM_LOCKONFAULT if flags & MLOCK_ONFAULT else 0))


def sys_munlock(mm: "MmStruct", start: int, length: int) -> int:
    length = page_align(length + (start & ~PAGE_MASK))
    start &= PAGE_MASK
    return apply_vma_lock_flags(mm, start, length, 0)


def apply_mlockall_flags(mm: "MmStruct", flags: int) -> int:
    mm.def_flags &= ~VM_LOCKED_MASK
    if flags & MCL_FUTURE:
        mm.def_flags |= VM_LOCKED
        if flags & MCL_ONFAULT:
            mm.def_flags |= VM_LOCKONFAULT
        if not flags & MCL_CURRENT:
            return 0
    to_add = 0
    if flags & MCL_CURRENT:
        to_add |= VM_LOCKED
        if flags & MCL_ONFAULT:
            to_add |= VM_LOCKONFAULT
    for v in mm.vma_tree.as_list():
        mlock_fixup(mm, v, v.start, v.end, (v.vm_flags & ~VM_LOCKED_MASK) | to_add)
    if mm.vma_tree.as_list():
        mm.vma_tree.merge_around(0, mm.task_size)
    return 0


def sys_mlockall(mm: "MmStruct", flags: int) -> int:
    if (not flags or flags & ~(MCL_CURRENT | MCL_FUTURE | MCL_ONFAULT)
            or flags == MCL_ONFAULT):
        return -EINVAL
    if not can_do_mlock(mm):
        return -EPERM
    lock_limit = mm.rlimit_memlock >> PAGE_SHIFT
    ret = -ENOMEM
    if not flags & MCL_CURRENT or mm.total_vm <= lock_limit or mm.cap_ipc_lock:
        ret = apply_mlockall_flags(mm, flags)
    if ret == 0 and flags & MCL_CURRENT:
        populate_range(mm, 0, mm.task_size, ignore_errors=True)
    return ret


def sys_munlockall(mm: "MmStruct") -> int:
    return apply_mlockall_flags(mm, 0)
