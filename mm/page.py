"""Physical frames (struct page/folio) and page-table entries.

A Frame's ``data`` is one ``bytearray(4096)`` for the frame's whole life: the
emulator maps it into Unicorn by pointer, so it is only ever written in place
(``data[:] = ...`` with 4096 bytes), never resized or replaced.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from .flags import PAGE_SIZE

ZERO_BYTES = bytes(PAGE_SIZE)


@dataclass(eq=False)
class Frame:
    """One physical page frame.

    rmap:      the (mm, vaddr) pairs whose PTE maps this frame (the reverse map
               reclaim walks to unmap it everywhere). mapcount == len(rmap).
    snap_refs: references held by MM snapshots. refcount = mapcount + snap_refs.
    charged:   counted against PhysMem's budget; true exactly while mapcount > 0
               (frames held only by snapshots are not charged).
    droppable: the folio is not swap-backed: set when it was allocated for a
               VM_DROPPABLE VMA (6.11 mm/rmap.c: folio_add_new_anon_rmap leaves
               droppable folios !swapbacked, so reclaim discards them, dirty or not).
    lazyfree:  MADV_FREE'd and not written since: discardable like droppable.
    stale:     (mm id, drain generation) of every mapping removed since the frame was
               last handed out; the frame is reused only once each of those mms has
               drained its changes (so the emulator no longer maps the old address).
    mapping:   ((file key), page index) for a page-cache frame (folio->mapping,
               ->index), None for anonymous memory. Page-cache frames are never
               written and never exclusive: a write to a private mapping copies.
    cached:    the frame is in the page cache now (charged even when unmapped).
    """

    pfn: int
    data: bytearray = field(default_factory=lambda: bytearray(PAGE_SIZE), repr=False)
    rmap: set = field(default_factory=set, repr=False)
    snap_refs: int = 0
    charged: bool = False
    droppable: bool = False
    lazyfree: bool = False
    is_zero: bool = False
    stale: list = field(default_factory=list, repr=False)
    mapping: Optional[tuple] = None
    cached: bool = False

    @property
    def mapcount(self) -> int:
        return len(self.rmap)

    @property
    def refcount(self) -> int:
        return len(self.rmap) + self.snap_refs

    @property
    def exclusive(self) -> bool:
        """An anonymous frame mapped by exactly one PTE and referenced by nothing
        else (what do_wp_page may reuse)."""
        return (len(self.rmap) == 1 and self.snap_refs == 0 and not self.is_zero
                and self.mapping is None)

    def mappers(self) -> list[tuple[Any, int]]:
        """(mm, vaddr) of every PTE mapping the frame (the mm: an mm_types.MmStruct;
        page.py stays below mm_types, so the type is not spelled here)."""
        return list(self.rmap)


@dataclass(frozen=True, slots=True)
class PTE:
    """A page-table entry. Immutable: every change installs a new PTE object, which
    lets snapshots and fork share PTE objects safely.

    frame:     None => not present (swapped if swap_slot is not None).
    writable:  the hardware W bit (False for the zero page, COW-shared frames and
               snapshot write-protected pages).
    swap_slot: swap entry of a swapped-out page.
    dropped:   the last thing that happened to this page was a drop of droppable
               memory (kept as a not-present marker so page views can show it).
    snap_wp:   write-protected only by an MM snapshot (a harness artifact, not the
               kernel's).
    guard:     a guard-region PTE marker (MADV_GUARD_INSTALL, 6.13): not present,
               not none; any access faults with VM_FAULT_SIGSEGV.
    """

    frame: Optional[Frame]
    writable: bool
    swap_slot: Optional[int] = None
    dropped: bool = False
    snap_wp: bool = False
    guard: bool = False

    @property
    def present(self) -> bool:
        return self.frame is not None

    @property
    def swapped(self) -> bool:
        return self.frame is None and self.swap_slot is not None

    @property
    def none(self) -> bool:
        """pte_none(): nothing here (a dropped marker counts as none, a guard
        marker does not)."""
        return self.frame is None and self.swap_slot is None and not self.guard


# The marker PTE left behind by dropping a droppable page.
DROPPED_PTE = PTE(None, False, None, True)
# The guard-region marker (PTE_MARKER_GUARD); one shared immutable object.
GUARD_PTE = PTE(None, False, guard=True)
