"""Page reclaim (mm/vmscan.c, mm/rmap.c try_to_unmap_one).

Order of a shrink pass, SWAP_CLUSTER_MAX pages at a time, oldest first:
 1. discardable frames: droppable ones (never swap-backed; discarded even when
    dirty: 6.11 try_to_unmap_one skips the "dirty lazyfree -> keep" rule for
    VM_DROPPABLE) and MADV_FREE'd ones not written since;
 2. clean page-cache frames (file pages: unmapped everywhere and evicted; the
    next fault reads them again). The kernel balances file and anonymous LRUs by
    swappiness; this model takes discardable anonymous pages first;
 3. only when passes 1 and 2 freed nothing, and only with free swap: other
    anonymous frames are swapped out (bytes copied into a slot, every mapping PTE
    replaced by the swap entry).
mlocked frames (mapped by a VM_LOCKED VMA) are never reclaimed (the kernel moves
them to the unevictable list; here they are rotated to the LRU tail), nor are
kernel-provided pages mapped by a VM_IO special mapping (mm/special_mapping.py:
in the kernel such pages were never on an LRU). Frames pinned
by a fault in progress are skipped too (an elevated refcount makes reclaim fail).

Unmapping goes through the reverse map, so the PTE change is recorded in whichever
mm maps the frame, not only the one that triggered reclaim.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

from .flags import PAGE_SHIFT, VM_IO, VM_LOCKED
from .page import DROPPED_PTE, PTE, Frame

if TYPE_CHECKING:  # pragma: no cover
    from .mm_types import MmStruct, Zone


@dataclass
class ReclaimResult:
    dropped: int = 0        # droppable/lazyfree frames discarded
    evicted: int = 0        # clean page-cache frames dropped
    swapped: int = 0        # anonymous frames swapped out
    scanned: int = 0
    unevictable: int = 0    # skipped: mlocked
    pinned: int = 0         # skipped: in use by the fault in progress
    swap_full: bool = False

    @property
    def reclaimed(self) -> int:
        return self.dropped + self.evicted + self.swapped

    def detail(self) -> dict:
        return asdict(self)


def frame_mlocked(frame: Frame) -> bool:
    """folio mlocked: mapped by at least one VM_LOCKED VMA."""
    for mm, vaddr in frame.rmap:
        vma = mm.find_vma(vaddr)
        if vma is not None and vma.vm_flags & VM_LOCKED:
            return True
    return False


def frame_unevictable(frame: Frame) -> bool:
    """!folio_evictable(): mlocked, or a kernel page of a VM_IO special mapping."""
    for mm, vaddr in frame.rmap:
        vma = mm.find_vma(vaddr)
        if vma is not None and vma.vm_flags & (VM_LOCKED | VM_IO):
            return True
    return False


def discard_frame(phys: "Zone", frame: Frame) -> None:
    """Unmap a discardable frame from every PTE. Droppable pages leave the
    'dropped' marker; a later read maps the zero page, a write a fresh zeroed frame.
    A page-cache page is evicted too: the next fault reads the file again."""
    if frame.mapping is not None:
        for mm, vaddr in list(frame.rmap):
            mm.set_pte(vaddr >> PAGE_SHIFT, None)
        if frame.cached:
            phys.pagecache_remove(frame)
        return
    marker = DROPPED_PTE if frame.droppable else None
    for mm, vaddr in list(frame.rmap):
        mm.set_pte(vaddr >> PAGE_SHIFT, marker)
        mm.stats.drops += 1
    phys.stats.drops += 1


def swap_out_frame(phys: "Zone", frame: Frame) -> bool:
    """Write the frame to a swap slot and point every mapping PTE at it."""
    slot = phys.swap.alloc(frame.data, origin=tuple(sorted((mm.id, vaddr) for mm, vaddr in frame.rmap)))
    if slot is None:
        return False
    pte = PTE(None, False, slot.slot)
    for mm, vaddr in list(frame.rmap):
        mm.set_pte(vaddr >> PAGE_SHIFT, pte)
        mm.stats.swapouts += 1
    phys.stats.swapouts += 1
    return True


def _scan(phys: "Zone", lru: "OrderedDict[Frame, None]", target: int,
          res: ReclaimResult, swap: bool, counter: str = "dropped") -> int:
    got = 0
    budget = len(lru)                       # look at each frame at most once per pass
    while lru and budget > 0 and got < target:
        budget -= 1
        frame = next(iter(lru))
        res.scanned += 1
        if frame in phys.pinned:
            lru.move_to_end(frame)
            res.pinned += 1
            continue
        if frame_unevictable(frame):
            lru.move_to_end(frame)
            res.unevictable += 1
            continue
        if swap:
            if not swap_out_frame(phys, frame):
                res.swap_full = True
                break
            res.swapped += 1
        else:
            discard_frame(phys, frame)
            setattr(res, counter, getattr(res, counter) + 1)
        got += 1
    return got


def shrink(phys: "Zone", nr_to_reclaim: int) -> ReclaimResult:
    """One reclaim pass: droppable and lazily freed pages first, then clean
    page-cache pages, then swap-out (if any swap and nothing was freed yet)."""
    phys.stats.reclaim_runs += 1
    res = ReclaimResult()
    got = _scan(phys, phys.lru_drop, nr_to_reclaim, res, swap=False)
    if got < nr_to_reclaim and phys.lru_file:
        _scan(phys, phys.lru_file, nr_to_reclaim - got, res, swap=False, counter="evicted")
    if res.reclaimed == 0 and phys.swap.nr_pages > 0:
        _scan(phys, phys.lru_anon, nr_to_reclaim, res, swap=True)
    return res


def reclaim(phys: "Zone", need: int) -> ReclaimResult:
    """try_to_free_pages(): shrink until ``need`` pages were freed or no progress."""
    total = ReclaimResult()
    while True:
        r = shrink(phys, max(need - total.reclaimed, phys.reclaim_batch))
        for k in ("dropped", "evicted", "swapped", "scanned", "unevictable", "pinned"):
            setattr(total, k, getattr(total, k) + getattr(r, k))
        total.swap_full = total.swap_full or r.swap_full
        if r.reclaimed == 0 or total.reclaimed >= need:
            return total


def drop_mm_droppable(mm: "MmStruct") -> int:
    """Discard every present page of mm's droppable VMAs (the `drop` injection:
    what reclaim would eventually do to all of them). Returns pages dropped."""
    zero = mm.phys.zero_frame
    frames = []
    seen = set()
    pt = mm.pt
    for vma in mm.vma_tree:
        if not vma.is_droppable:
            continue
        for vpn in mm.vpns_in(vma.start, vma.end):
            f = pt[vpn].frame
            if f is None or f is zero or f in seen:
                continue
            seen.add(f)
            frames.append(f)
    for f in frames:
        discard_frame(mm.phys, f)
    return len(frames)


def drop_all_droppable(phys: "Zone") -> int:
    """Discard every droppable frame of every mm sharing phys."""
    frames = [f for f in phys.lru_drop if f.droppable]
    for f in frames:
        discard_frame(phys, f)
    return len(frames)
