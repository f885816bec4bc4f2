"""struct vm_area_struct: one virtual memory area of an mm."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Optional

from .flags import (PAGE_SHIFT, PROT_EXEC, PROT_READ, PROT_WRITE, VM_ACCOUNT,
                    VM_DONTCOPY, VM_DONTDUMP, VM_DROPPABLE, VM_EXEC, VM_LOCKED,
                    VM_LOCKONFAULT, VM_MAYWRITE, VM_NORESERVE, VM_READ, VM_SHARED,
                    VM_SPECIAL, VM_STICKY, VM_WIPEONFORK, VM_WRITE, vm_flags_str)


@dataclass
class VMA:
    """[start, end) with vm_flags.

    ``anon_vma`` stands for the kernel's anon_vma pointer: None until the first
    anonymous page is allocated (anon_vma_prepare), then an id shared by the pieces
    of a split (it decides mergeability and core-dump size). ``vm_file`` is the
    mapped file (mm/file.py MappedFile) or None for anonymous memory, and
    ``vm_pgoff`` the file page at ``start``."""

    start: int
    end: int
    vm_flags: int
    name: str = ""
    anon_vma: Optional[int] = None
    vm_file: Optional[Any] = None
    vm_pgoff: int = 0

    @property
    def size(self) -> int:
        return self.end - self.start

    @property
    def pages(self) -> int:
        return (self.end - self.start) >> PAGE_SHIFT

    @property
    def prot(self) -> int:
        f = self.vm_flags
        return ((PROT_READ if f & VM_READ else 0) | (PROT_WRITE if f & VM_WRITE else 0)
                | (PROT_EXEC if f & VM_EXEC else 0))

    def contains(self, addr: int) -> bool:
        return self.start <= addr < self.end

    @property
    def is_droppable(self) -> bool:
        return bool(self.vm_flags & VM_DROPPABLE)

    @property
    def is_locked(self) -> bool:
        return bool(self.vm_flags & VM_LOCKED)

    @property
    def is_lockonfault(self) -> bool:
        return bool(self.vm_flags & VM_LOCKONFAULT)

    @property
    def is_wipeonfork(self) -> bool:
        return bool(self.vm_flags & VM_WIPEONFORK)

    @property
    def is_dontcopy(self) -> bool:
        return bool(self.vm_flags & VM_DONTCOPY)

    @property
    def is_dontdump(self) -> bool:
        return bool(self.vm_flags & VM_DONTDUMP)

    @property
    def is_accounted(self) -> bool:
        return bool(self.vm_flags & VM_ACCOUNT)

    @property
    def is_noreserve(self) -> bool:
        return bool(self.vm_flags & VM_NORESERVE)

    @property
    def is_anonymous(self) -> bool:
        return self.vm_file is None

    def pgoff_of(self, addr: int) -> int:
        """linear_page_index(): the file page mapped at addr."""
        return self.vm_pgoff + ((addr - self.start) >> PAGE_SHIFT)

    @property
    def is_cow_mapping(self) -> bool:
        """is_cow_mapping(): private and may become writable."""
        return (self.vm_flags & (VM_SHARED | VM_MAYWRITE)) == VM_MAYWRITE

    @property
    def is_accessible(self) -> bool:
        return bool(self.vm_flags & (VM_READ | VM_WRITE | VM_EXEC))

    def copy(self, **changes) -> "VMA":
        return replace(self, **changes)

    def __repr__(self) -> str:  # compact, kernel-ish
        n = f" {self.name}" if self.name else ""
        if self.vm_file is not None:
            n += f" {self.vm_file.name}@{self.vm_pgoff << PAGE_SHIFT:#x}"
        return f"VMA({self.start:#x}-{self.end:#x} [{vm_flags_str(self.vm_flags)}]{n})"


def can_merge(a: VMA, b: VMA) -> bool:
    """is_mergeable_vma() for two adjacent VMAs, a directly below b: same flags
    apart from the sticky ones (VM_SOFTDIRTY, VM_MAYBE_GUARD), same anon name,
    compatible anon_vma, nothing VM_SPECIAL, and for file mappings the same open
    file with contiguous file offsets."""
    return (a.end == b.start
            and ((a.vm_flags ^ b.vm_flags) & ~VM_STICKY) == 0
            and not (a.vm_flags & VM_SPECIAL)
            and a.name == b.name
            and a.vm_file is b.vm_file
            and (a.vm_file is None or b.vm_pgoff == a.vm_pgoff + a.pages)
            and (a.anon_vma is None or b.anon_vma is None or a.anon_vma == b.anon_vma))
