"""mmap/munmap (mm/mmap.c do_mmap, mmap_region, do_vmi_munmap; get_unmapped_area).

Anonymous memory (MAP_PRIVATE, MAP_DROPPABLE) and file-backed mappings of files
opened read-only (mm/file.py): MAP_PRIVATE ones, and read-only MAP_SHARED ones,
which the kernel turns into private read-only mappings for a read-only open (a
writable MAP_SHARED is -EACCES). Shared anonymous memory (shmem) is refused
(-ENODEV), MAP_HUGETLB as on a system with no huge pages reserved (-ENOMEM).

Under mlockall(MCL_FUTURE) the order is the kernel's: vm_flags include
mm->def_flags from the start, so VM_LOCKED takes part in the RLIMIT_MEMLOCK check
(-EAGAIN) and in the populate decision; the final step of mmap_region clears it
for VMAs that cannot be locked (droppable ones), which are then populated but
neither marked "lo" nor counted in locked_vm.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Optional

from .flags import (EACCES, EAGAIN, EBADF, EEXIST, EINVAL, ENODEV, ENOMEM, EOPNOTSUPP,
                    EOVERFLOW, EPERM, MAP_ANONYMOUS, MAP_DENYWRITE, MAP_DROPPABLE,
                    MAP_EXECUTABLE, MAP_FIXED, MAP_FIXED_NOREPLACE, MAP_GROWSDOWN,
                    MAP_HUGETLB, MAP_LOCKED, MAP_NONBLOCK, MAP_NORESERVE, MAP_POPULATE,
                    MAP_PRIVATE, MAP_SHARED, MAP_SHARED_VALIDATE, MAP_STACK, MAP_TYPE,
                    MAP_UNINITIALIZED, OVERCOMMIT_NEVER, PAGE_MASK, PAGE_SHIFT, PROT_WRITE,
                    VM_ACCOUNT, VM_DONTDUMP, VM_DROPPABLE, VM_GROWSDOWN, VM_HUGETLB,
                    VM_LOCKED, VM_LOCKED_MASK, VM_MAYEXEC, VM_MAYREAD, VM_MAYSHARE,
                    VM_MAYWRITE, VM_NORESERVE, VM_SPECIAL, VM_WIPEONFORK, calc_vm_flag_bits,
                    calc_vm_prot_bits, page_align)
from .gup import populate_range
from .overcommit import accountable_mapping, vm_enough_memory, vm_unacct_memory
from .vma import VMA

if TYPE_CHECKING:  # pragma: no cover
    from .file import MappedFile
    from .mm_types import MmStruct

MAX_MAP_COUNT = 65530           # /proc/sys/vm/max_map_count default
MAX_LFS_FILESIZE = (1 << 63) - 1
# The flags MAP_SHARED keeps and MAP_SHARED_VALIDATE accepts (include/linux/mman.h).
LEGACY_MAP_MASK = (MAP_SHARED | MAP_PRIVATE | MAP_FIXED | MAP_ANONYMOUS | MAP_DENYWRITE
                   | MAP_EXECUTABLE | MAP_UNINITIALIZED | MAP_GROWSDOWN | MAP_LOCKED
                   | MAP_NORESERVE | MAP_POPULATE | MAP_NONBLOCK | MAP_STACK | MAP_HUGETLB)


def can_do_mlock(mm: "MmStruct") -> bool:
    """mm/mlock.c can_do_mlock(): a non-zero RLIMIT_MEMLOCK or CAP_IPC_LOCK."""
    return mm.cap_ipc_lock or mm.rlimit_memlock != 0


def mlock_future_ok(mm: "MmStruct", vm_flags: int, nbytes: int) -> bool:
    """mm/mmap.c mlock_future_ok(): would locking nbytes more stay within RLIMIT_MEMLOCK?"""
    if not vm_flags & VM_LOCKED or mm.cap_ipc_lock:
        return True
    return (nbytes >> 12) + mm.locked_vm <= (mm.rlimit_memlock >> 12)


def vma_supports_mlock(vm_flags: int) -> bool:
    """mm: prevent droppable mappings from being locked (6.18 stable): VM_SPECIAL,
    hugetlb and droppable VMAs never carry VM_LOCKED nor count in locked_vm."""
    return not vm_flags & (VM_SPECIAL | VM_HUGETLB | VM_DROPPABLE)


def get_unmapped_area(mm: "MmStruct", addr: int, length: int, flags: int) -> int:
    """x86-64 top-down allocator: honour MAP_FIXED, then a free hint, then the
    highest gap below mmap_base, then anything up to TASK_SIZE."""
    task_size = mm.task_size
    if length > task_size:
        return -ENOMEM
    if flags & MAP_FIXED:
        if addr & ~PAGE_MASK:
            return -EINVAL
        if addr > task_size - length:
            return -ENOMEM
        if addr < mm.mmap_min_addr:
            return -EPERM                    # security_mmap_addr()
        return addr
    if addr:
        addr = page_align(addr)
        if (addr <= task_size - length and addr >= mm.mmap_min_addr
                and not mm.vma_tree.overlapping(addr, addr + length)):
            return addr
    for lo, hi in (mm.mmap_min_addr, mm.mmap_base), (mm.mmap_base, task_size):
        for g0, g1 in mm.vma_tree.gaps_topdown(lo, hi):
            if g1 - g0 >= length:
                return g1 - length
    return -ENOMEM


def do_mmap(mm: "MmStruct", addr: int, length: int, prot: int, flags: int, fd: int = -1,
            offset: int = 0, file: Optional["MappedFile"] = None) -> int:
    """mmap(2). Returns the address or -errno.

    Without MAP_ANONYMOUS, ``file`` is the open file ``fd`` refers to (the caller
    resolved the descriptor; mm treats every file as opened read-only). With
    MAP_ANONYMOUS both are ignored, as the kernel ignores fd."""
    if offset & ~PAGE_MASK:
        return -EINVAL                       # x86 sys_mmap: offset must be page aligned
    typ = flags & MAP_TYPE
    if flags & MAP_ANONYMOUS:
        file = None
    else:
        if file is None:
            if fd < 0:
                return -EBADF                # ksys_mmap_pgoff: fget(fd) fails
            # do_mmap's file switch knows no MAP_DROPPABLE (6.11: droppable memory
            # must be anonymous) and no unknown types.
            if typ not in (MAP_SHARED, MAP_PRIVATE, MAP_SHARED_VALIDATE):
                return -EINVAL
            return -ENODEV                   # a descriptor but no file object to map
        if flags & MAP_HUGETLB:
            return -EINVAL                   # MAP_HUGETLB with a file not on hugetlbfs
    if file is None and flags & MAP_HUGETLB and typ != MAP_DROPPABLE:
        return -ENOMEM                       # no huge pages reserved (nr_hugepages = 0)

    if length == 0:
        return -EINVAL
    if flags & MAP_FIXED_NOREPLACE:
        flags |= MAP_FIXED
    if not flags & MAP_FIXED:
        addr &= PAGE_MASK                    # round_hint_to_min()
        if addr and addr < mm.mmap_min_addr:
            addr = page_align(mm.mmap_min_addr)
    length = page_align(length)
    if length == 0 or length > mm.task_size:
        return -ENOMEM
    if file is not None and offset + length > MAX_LFS_FILESIZE:
        return -EOVERFLOW                    # file_mmap_ok()
    if len(mm.vma_tree) > MAX_MAP_COUNT:
        return -ENOMEM

    # mm->def_flags (mlockall(MCL_FUTURE)) goes in here, droppable or not: VM_LOCKED
    # is therefore present at the RLIMIT_MEMLOCK check and at the populate decision
    # below; only mmap_region's last step drops it from a VMA that cannot be locked.
    vm_flags = (calc_vm_prot_bits(prot) | calc_vm_flag_bits(flags) | mm.def_flags
                | VM_MAYREAD | VM_MAYWRITE | VM_MAYEXEC)

    addr = get_unmapped_area(mm, addr, length, flags)
    if addr < 0:
        return addr
    if flags & MAP_FIXED_NOREPLACE and mm.vma_tree.overlapping(addr, addr + length):
        return -EEXIST
    if flags & MAP_LOCKED and not can_do_mlock(mm):
        return -EPERM
    if not mlock_future_ok(mm, vm_flags, length):
        return -EAGAIN                       # MAP_LOCKED over RLIMIT_MEMLOCK

    if file is not None:
        if typ in (MAP_SHARED, MAP_SHARED_VALIDATE):
            if typ == MAP_SHARED:
                flags &= LEGACY_MAP_MASK
            elif flags & ~LEGACY_MAP_MASK:
                return -EOPNOTSUPP           # MAP_SHARED_VALIDATE: unknown flags
            if prot & PROT_WRITE:
                return -EACCES               # the file is open read-only
            # A read-only open: VM_MAYSHARE (smaps says 's') but neither VM_SHARED
            # nor VM_MAYWRITE, so the mapping behaves as a private read-only one and
            # mprotect(PROT_WRITE) is -EACCES.
            vm_flags |= VM_MAYSHARE
            vm_flags &= ~VM_MAYWRITE
        elif typ != MAP_PRIVATE:
            return -EINVAL
        if vm_flags & VM_GROWSDOWN:
            return -EINVAL
    elif typ == MAP_SHARED:
        return -ENODEV                       # shared anonymous memory (shmem) not modelled
    elif typ == MAP_DROPPABLE:
        # 6.11 mm/mmap.c: a locked or stack area makes no sense droppable; huge
        # pages neither. Droppable pages are not reserved (VM_NORESERVE, even under
        # OVERCOMMIT_NEVER) and too volatile to survive fork or core dumps.
        if flags & MAP_LOCKED or flags & MAP_HUGETLB or vm_flags & VM_GROWSDOWN:
            return -EINVAL
        vm_flags |= VM_DROPPABLE | VM_NORESERVE | VM_WIPEONFORK | VM_DONTDUMP
    elif typ != MAP_PRIVATE:
        return -EINVAL                       # incl. DROPPABLE|PRIVATE, DROPPABLE|SHARED

    if flags & MAP_NORESERVE and mm.phys.overcommit_memory != OVERCOMMIT_NEVER:
        vm_flags |= VM_NORESERVE             # honoured only when overcommit is allowed

    addr = mmap_region(mm, addr, length, vm_flags, file, offset >> PAGE_SHIFT)
    if addr < 0:
        return addr
    if vm_flags & VM_LOCKED or (flags & (MAP_POPULATE | MAP_NONBLOCK)) == MAP_POPULATE:
        # mm_populate(): best effort, errors ignored (mmap already succeeded). It
        # skips VM_LOCKONFAULT VMAs, which a droppable VMA no longer is by now: under
        # mlockall(MCL_FUTURE | MCL_ONFAULT) a new droppable mapping is populated.
        populate_range(mm, addr, addr + length, ignore_errors=True)
    return addr


def mmap_region(mm: "MmStruct", addr: int, length: int, vm_flags: int,
                file: Optional["MappedFile"] = None, pgoff: int = 0) -> int:
    """Replace whatever is at [addr, addr+length) by a new VMA (of file from page
    pgoff, or anonymous)."""
    end = addr + length
    pages = length >> 12
    old_accounted = sum(
        (min(v.end, end) - max(v.start, addr)) >> 12
        for v in mm.vma_tree.overlapping(addr, end) if v.vm_flags & VM_ACCOUNT)
    charged = 0
    if accountable_mapping(vm_flags):
        # Charge before unmapping the old range so a refusal leaves it intact; the
        # old range's charge carries over (mmap_region's nr_accounted).
        charged = pages - old_accounted
        if charged > 0 and vm_enough_memory(mm.phys, charged, mm):
            return -ENOMEM
        vm_flags |= VM_ACCOUNT
    do_munmap_range(mm, addr, end)
    if vm_flags & VM_ACCOUNT:
        mm.phys.vm_committed_as += pages - max(charged, 0)
    if vm_flags & VM_LOCKED:
        if not vma_supports_mlock(vm_flags):
            vm_flags &= ~VM_LOCKED_MASK
        else:
            mm.locked_vm += pages
    # Every new VMA is soft-dirty, on kernels built with CONFIG_MEM_SOFT_DIRTY.
    vma = VMA(addr, end, vm_flags | mm.phys.kconfig.vm_softdirty, vm_file=file,
              vm_pgoff=pgoff if file is not None else 0)
    mm.vma_tree.insert(vma)
    mm.vma_tree.merge_around(addr, end)
    mm.mark_changed(addr, end)
    return addr


def do_munmap(mm: "MmStruct", start: int, length: int) -> int:
    """munmap(2)."""
    if start & ~PAGE_MASK or start > mm.task_size or length > mm.task_size - start:
        return -EINVAL
    length = page_align(length)
    if length == 0:
        return -EINVAL
    do_munmap_range(mm, start, start + length)
    return 0


def do_munmap_range(mm: "MmStruct", start: int, end: int) -> None:
    """Remove [start, end): split boundary VMAs, free their pages and swap slots,
    undo their commit charge and locked_vm."""
    for v in mm.vma_tree.isolate(start, end):
        if v.vm_flags & VM_ACCOUNT:
            vm_unacct_memory(mm.phys, v.pages)
        if v.vm_flags & VM_LOCKED:
            mm.locked_vm -= v.pages
        mm.zap_range(v.start, v.end)
        mm.vma_tree.remove(v)
        mm.mark_changed(v.start, v.end)


__all__ = ["do_mmap", "do_munmap", "get_unmapped_area", "mmap_region", "can_do_mlock",
           "mlock_future_ok", "vma_supports_mlock"]
