"""Kernel-provided pages mapped into a process (mm/mmap.c _install_special_mapping,
mm/memory.c vm_insert_page): the "permanent pages" idea for vgetrandom states,
the `pinned` design of `faultpath compare`.

The kernel allocates the pages itself, zeroes them and maps them at once with
VM_IO | VM_DONTEXPAND | VM_DONTDUMP | VM_WIPEONFORK (| VM_NORESERVE):

- never swapped or reclaimed: pages the kernel allocated and inserted are not on
  any LRU; vmscan.frame_unevictable() treats every frame mapped by a VM_IO VMA so;
- charged to no rlimit: no VM_LOCKED (locked_vm, RLIMIT_MEMLOCK untouched; mlock
  skips VM_SPECIAL VMAs anyway) and no VM_ACCOUNT (vm_committed_as untouched);
- wiped on fork: VM_WIPEONFORK, and dup_mm gives the child fresh zeroed kernel
  pages (populate_special_mapping), so the child never faults on them either; a
  fork that cannot get them fails with -ENOMEM, as fork may;
- not dumped: VM_DONTDUMP (and VM_IO).

They do use physical frames (the budget); nothing bounds how many a process can
ask for, which is the design's cost.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .flags import (EINVAL, ENOMEM, PAGE_MASK, PAGE_SHIFT, PAGE_SIZE, VM_DONTDUMP,
                    VM_DONTEXPAND, VM_IO, VM_MAYREAD, VM_MAYWRITE, VM_NORESERVE, VM_READ,
                    VM_WIPEONFORK, VM_WRITE, page_align)
from .page import PTE, ZERO_BYTES
from .vma import VMA

if TYPE_CHECKING:  # pragma: no cover
    from .mm_types import MmStruct

# What marks a mapping as kernel-provided, pinned state pages.
PINNED_MARK = VM_IO | VM_DONTEXPAND | VM_WIPEONFORK
PINNED_VM_FLAGS = (VM_READ | VM_WRITE | VM_MAYREAD | VM_MAYWRITE | PINNED_MARK
                   | VM_DONTDUMP | VM_NORESERVE)
PINNED_NAME = "vgetrandom-pinned"


def is_pinned_mapping(vma: VMA) -> bool:
    return (vma.vm_flags & PINNED_MARK) == PINNED_MARK


def populate_special_mapping(mm: "MmStruct", vma: VMA) -> int:
    """Give every page of vma a freshly allocated zeroed frame (vm_insert_page).
    Returns 0, or -ENOMEM when the allocator fails (pages already mapped stay)."""
    phys = mm.phys
    for addr in range(vma.start, vma.end, PAGE_SIZE):
        vpn = addr >> PAGE_SHIFT
        pte = mm.pt.get(vpn)
        if pte is not None and pte.frame is not None and not pte.frame.is_zero:
            continue
        frame = phys.alloc_frame(None)
        if frame is None:
            return -ENOMEM
        if vma.anon_vma is None:
            vma.anon_vma = mm.new_anon_vma_id()
        frame.data[:] = ZERO_BYTES
        mm.set_pte(vpn, PTE(frame, True))
    return 0


def install_special_mapping(mm: "MmStruct", length: int, vm_flags: int = PINNED_VM_FLAGS,
                            name: str = PINNED_NAME) -> int:
    """Map ``length`` bytes of kernel-provided, populated pages; the address or -errno."""
    from .mmap import do_munmap_range, get_unmapped_area
    if length <= 0:
        return -EINVAL
    length = page_align(length)
    addr = get_unmapped_area(mm, 0, length, 0)
    if addr < 0:
        return addr
    assert not addr & ~PAGE_MASK
    vma = VMA(addr, addr + length, vm_flags | mm.phys.kconfig.vm_softdirty, name)
    mm.vma_tree.insert(vma)
    mm.mark_changed(addr, addr + length)
    err = populate_special_mapping(mm, mm.find_vma(addr))
    if err:
        do_munmap_range(mm, addr, addr + length)
        return err
    return addr


def dup_special_mappings(child: "MmStruct") -> int:
    """dup_mm's part: the child's (wiped) pinned mappings get fresh pages."""
    for v in child.vma_tree.as_list():
        if is_pinned_mapping(v):
            err = populate_special_mapping(child, v)
            if err:
                return err
    return 0


__all__ = ["PINNED_MARK", "PINNED_VM_FLAGS", "PINNED_NAME", "is_pinned_mapping",
           "install_special_mapping", "populate_special_mapping", "dup_special_mappings"]
