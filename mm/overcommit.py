"""Commit accounting (mm/util.c __vm_enough_memory, Documentation/mm/overcommit-accounting.rst).

Private writable mappings without VM_NORESERVE are charged to vm_committed_as when
created (VM_ACCOUNT) and uncharged when unmapped. VM_NORESERVE mappings are exempt:
MAP_NORESERVE outside OVERCOMMIT_NEVER, and MAP_DROPPABLE always (6.11 mm/mmap.c:
droppable pages can vanish, so reserving them makes no sense, even in mode 2).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Optional

from .flags import (ENOMEM, OVERCOMMIT_ALWAYS, OVERCOMMIT_GUESS, VM_ACCOUNT, VM_HUGETLB,
                    VM_NORESERVE, VM_SHARED, VM_WRITE)

if TYPE_CHECKING:  # pragma: no cover
    from .mm_types import MmStruct, Zone


def accountable_mapping(vm_flags: int) -> bool:
    """mmap_region's accountable_mapping(): private, writable, not NORESERVE."""
    return (vm_flags & (VM_NORESERVE | VM_SHARED | VM_WRITE)) == VM_WRITE


def needs_mprotect_charge(old_flags: int, new_flags: int) -> bool:
    """mprotect_fixup(): making a never-accounted private mapping writable charges it."""
    return bool(new_flags & VM_WRITE) and not (
        old_flags & (VM_ACCOUNT | VM_WRITE | VM_HUGETLB | VM_SHARED | VM_NORESERVE))


def vm_commit_limit(phys: "Zone") -> int:
    """CommitLimit in pages: RAM * overcommit_ratio / 100 + swap
    (or overcommit_kbytes instead of the ratio when set)."""
    if phys.overcommit_kbytes:
        allowed = phys.overcommit_kbytes >> 2
    else:
        allowed = phys.memory_pages * phys.overcommit_ratio // 100
    return allowed + phys.swap.nr_pages


def vm_enough_memory(phys: "Zone", pages: int, mm: Optional["MmStruct"] = None,
                     cap_sys_admin: bool = False) -> int:
    """__vm_enough_memory(): charge ``pages`` to vm_committed_as, or return -ENOMEM."""
    phys.vm_committed_as += pages
    mode = phys.overcommit_memory
    if mode == OVERCOMMIT_ALWAYS:
        return 0
    if mode == OVERCOMMIT_GUESS:
        # Heuristic mode only refuses single requests larger than RAM + swap.
        if pages <= phys.memory_pages + phys.swap.nr_pages:
            return 0
    else:
        allowed = vm_commit_limit(phys)
        if not cap_sys_admin:
            allowed -= phys.admin_reserve_pages       # reserve some for root
        if mm is not None:                            # a user must be able to recover
            allowed -= min(mm.total_vm // 32, phys.user_reserve_pages)
        if phys.vm_committed_as < allowed:
            return 0
    phys.vm_committed_as -= pages
    return -ENOMEM


def vm_unacct_memory(phys: "Zone", pages: int) -> None:
    phys.vm_committed_as -= pages
    assert phys.vm_committed_as >= 0, "commit accounting underflow"
