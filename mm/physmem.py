"""Physical memory: frames under a budget, the zero page, LRU lists, swap,
allocation-failure injection and commit accounting. One PhysMem is shared by every
mm of the system (a parent and its forked children).

Budget: ``charged`` counts frames mapped by at least one PTE, and page-cache
frames (mapped or not, as long as they are cached). Frames that only MM
snapshots still reference are *not* charged (a snapshot is a harness feature, not
memory the emulated system owns); restore() charges them again, which may leave
``charged`` above ``memory_pages`` until the next allocation reclaims.
"""

from __future__ import annotations

import weakref
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Optional

from .flags import (OVERCOMMIT_ALWAYS, OVERCOMMIT_GUESS, OVERCOMMIT_NEVER, PAGE_SIZE,
                    SWAP_CLUSTER_MAX)
from .kconfig import KernelConfig, host_kernel_config
from .page import PTE, Frame
from .stages import FaultStage
from .stats import PhysStats
from .swapfile import SwapArea
from .vmscan import ReclaimResult, drop_all_droppable, reclaim

if TYPE_CHECKING:  # pragma: no cover
    from .mm_types import MmStruct


class PhysMem:
    def __init__(self, memory_pages: int, swap_pages: int = 0, overcommit_memory: int = 0,
                 overcommit_ratio: int = 50, *, kconfig: Optional[KernelConfig] = None) -> None:
        if memory_pages <= 0:
            raise ValueError("memory_pages must be positive")
        if overcommit_memory not in (OVERCOMMIT_GUESS, OVERCOMMIT_ALWAYS, OVERCOMMIT_NEVER):
            raise ValueError("overcommit_memory must be 0, 1 or 2")
        self.memory_pages = memory_pages
        # The kernel's build options are system-wide, like the memory itself.
        self.kconfig = kconfig if kconfig is not None else host_kernel_config()
        self.swap = SwapArea(swap_pages)
        self.overcommit_memory = overcommit_memory
        self.overcommit_ratio = overcommit_ratio
        self.overcommit_kbytes = 0
        # mm/util.c defaults: admin reserve min(3% of RAM, 8 MiB), user reserve
        # min(3% of RAM, 128 MiB), both in pages here.
        self.admin_reserve_pages = min(memory_pages // 32, (8 << 20) // PAGE_SIZE)
        self.user_reserve_pages = min(memory_pages // 32, (128 << 20) // PAGE_SIZE)
        self.vm_committed_as = 0
        self.reclaim_batch = SWAP_CLUSTER_MAX
        self.free_cache_max = 4096        # recyclable frames kept for reuse

        # ZERO_PAGE: shared, read-only, never charged, never in any rmap.
        self.zero_frame = Frame(pfn=0, is_zero=True)
        self.zero_pte = PTE(self.zero_frame, False)

        self.charged = 0
        self.lru_anon: OrderedDict[Frame, None] = OrderedDict()   # swap-backed
        self.lru_drop: OrderedDict[Frame, None] = OrderedDict()   # droppable / lazyfree
        self.lru_file: OrderedDict[Frame, None] = OrderedDict()   # page cache (clean)
        self.page_cache: dict[tuple, Frame] = {}                  # (file key, pgoff) -> frame
        self.pinned: set[Frame] = set()
        self._free: deque[Frame] = deque()
        self._next_pfn = 1
        self._mm_gen: dict[int, int] = {}     # live mm id -> drain generation
        self._fail_persistent = False
        self._fail_count = 0
        self.stats = PhysStats()

    # --- sizes ----------------------------------------------------------------
    @property
    def swap_pages(self) -> int:
        return self.swap.nr_pages

    @property
    def free_pages(self) -> int:
        return max(0, self.memory_pages - self.charged)

    # --- allocation-failure injection -------------------------------------------
    def fail_allocations(self, count: Optional[int] = None, *, persistent: bool = False) -> None:
        """persistent=True: every attempt fails until switched off; count=K: the next K
        attempts fail (transient, as when the OOM killer frees memory elsewhere);
        fail_allocations(None): off. Injected failures fail before reclaim."""
        self._fail_persistent = bool(persistent)
        self._fail_count = 0 if persistent or not count else int(count)

    def fail_state(self) -> tuple[bool, int]:
        """The injection state, for snapshots of the whole machine."""
        return (self._fail_persistent, self._fail_count)

    def set_fail_state(self, state: tuple[bool, int]) -> None:
        self._fail_persistent, self._fail_count = state

    @property
    def failing(self) -> str:
        if self._fail_persistent:
            return "persistent"
        return f"transient:{self._fail_count}" if self._fail_count else "off"

    # --- the allocator ------------------------------------------------------------
    def alloc_frame(self, stages: Optional[list] = None, *, droppable: bool = False,
                    exempt: bool = False) -> Optional[Frame]:
        """alloc_pages() for a user page: free budget, else reclaim, else None.

        The frame comes back uncharged and unzeroed; mapping it (rmap_add) charges it.
        ``exempt``: a charge swap, not a new page (the snapshot-transparent COW
        copy), which needs no budget and cannot fail.
        """
        if exempt:
            return self._take_frame(droppable)
        if self._fail_persistent or self._fail_count > 0:
            if not self._fail_persistent:
                self._fail_count -= 1
            self.stats.alloc_failures += 1
            self.stats.injected_failures += 1
            if stages is not None:
                stages.append(FaultStage("alloc", {"ok": False, "reason": "injected",
                                                   "mode": "persistent" if self._fail_persistent
                                                   else "transient"}))
            return None
        if self.charged >= self.memory_pages:
            res = reclaim(self, self.charged - self.memory_pages + 1)
            if stages is not None:
                stages.append(FaultStage("reclaim", res.detail()))
            if self.charged >= self.memory_pages:
                self.stats.alloc_failures += 1
                if stages is not None:
                    stages.append(FaultStage("alloc", {"ok": False, "reason": "no_memory"}))
                return None
        frame = self._take_frame(droppable)
        if stages is not None:
            stages.append(FaultStage("alloc", {"ok": True, "pfn": frame.pfn}))
        return frame

    def _take_frame(self, droppable: bool) -> Frame:
        self.stats.allocs += 1
        frame = None
        for _ in range(min(4, len(self._free))):
            f = self._free[0]
            if self._reusable(f):
                frame = self._free.popleft()
                break
            self._free.rotate(-1)
        if frame is None:
            frame = Frame(pfn=self._next_pfn)
            self._next_pfn += 1
            self.stats.frames_created += 1
        frame.stale.clear()
        frame.droppable = droppable
        frame.lazyfree = False
        frame.mapping = None
        return frame

    def _reusable(self, f: Frame) -> bool:
        gens = self._mm_gen
        for mid, gen in f.stale:
            cur = gens.get(mid)
            if cur is not None and cur <= gen:
                return False          # that mm has not drained the unmapping yet
        return True

    def free_frame(self, frame: Frame) -> None:
        """Give back a frame that was allocated but never mapped."""
        assert not frame.rmap and frame.snap_refs == 0 and not frame.charged
        self._release(frame)

    def _release(self, frame: Frame) -> None:
        self._free.append(frame)
        if len(self._free) > self.free_cache_max:
            self._free.popleft()          # forget it; the GC frees it once unmapped

    # --- charge / LRU ---------------------------------------------------------------
    def _charge(self, frame: Frame) -> None:
        frame.charged = True
        self.charged += 1
        if frame.mapping is not None:
            lru = self.lru_file
        elif frame.droppable or frame.lazyfree:
            lru = self.lru_drop
        else:
            lru = self.lru_anon
        lru[frame] = None

    def _uncharge(self, frame: Frame) -> None:
        frame.charged = False
        self.charged -= 1
        self.lru_anon.pop(frame, None)
        self.lru_drop.pop(frame, None)
        self.lru_file.pop(frame, None)

    def set_lazyfree(self, frame: Frame, lazy: bool) -> None:
        if frame.lazyfree == lazy:
            return
        frame.lazyfree = lazy
        if frame.charged and not frame.droppable and frame.mapping is None:
            src, dst = (self.lru_anon, self.lru_drop) if lazy else (self.lru_drop, self.lru_anon)
            src.pop(frame, None)
            dst[frame] = None

    # --- reverse map ---------------------------------------------------------------
    def rmap_add(self, frame: Frame, mm: "MmStruct", vaddr: int) -> None:
        frame.rmap.add((mm, vaddr))
        if not frame.charged:
            self._charge(frame)

    def rmap_remove(self, frame: Frame, mm: "MmStruct", vaddr: int) -> None:
        frame.rmap.discard((mm, vaddr))
        frame.stale.append((mm.id, self._mm_gen.get(mm.id, 0)))
        if not frame.rmap and not frame.cached:   # a cached page stays, charged
            self._uncharge(frame)
            if frame.snap_refs == 0:
                self._release(frame)

    # --- the page cache (mm/filemap.py reads pages in) ------------------------------------
    def pagecache_add(self, frame: Frame, key: tuple) -> None:
        """Insert a freshly read frame as the page-cache page for key; charged from
        now on, mapped or not."""
        assert key not in self.page_cache
        frame.mapping = key
        frame.cached = True
        self.page_cache[key] = frame
        if not frame.charged:
            self._charge(frame)

    def pagecache_remove(self, frame: Frame) -> None:
        """Evict a page-cache frame (it must be unmapped already)."""
        assert not frame.rmap and self.page_cache.get(frame.mapping) is frame
        del self.page_cache[frame.mapping]
        frame.cached = False
        self._uncharge(frame)
        self.stats.pagecache_evictions += 1
        if frame.snap_refs == 0:
            self._release(frame)

    # --- snapshot references ----------------------------------------------------------
    def snap_get(self, frame: Frame) -> None:
        frame.snap_refs += 1

    def snap_put(self, frame: Frame) -> None:
        frame.snap_refs -= 1
        assert frame.snap_refs >= 0
        if frame.snap_refs == 0 and not frame.rmap and not frame.cached:
            self._release(frame)

    # --- machine snapshots (a harness feature, like mm/snapshot.py) ---------------------
    def cache_snapshot(self) -> "CacheSnapshot":
        """The page cache's contents and the LRU lists' order.  Restoring every
        mm brings its pages back, but not pages the cache took in since (they
        are charged) nor the order reclaim would pick victims in; this does.
        The cached frames are held (snap_get) so that none is recycled."""
        frames = list(self.page_cache.values())
        for f in frames:
            self.snap_get(f)
        snap = CacheSnapshot(dict(self.page_cache), list(self.lru_anon), list(self.lru_drop), list(self.lru_file))
        snap._finalizer = weakref.finalize(snap, _put_frames, self, frames)
        return snap

    def cache_restore(self, snap: "CacheSnapshot") -> None:
        """After every mm was restored: evict what the cache took in since (it
        is mapped by nobody now), take back what it evicted, reorder the LRUs."""
        for key, f in list(self.page_cache.items()):
            if snap.page_cache.get(key) is not f and not f.rmap:
                self.pagecache_remove(f)
        for key, f in snap.page_cache.items():
            if key not in self.page_cache and not f.cached:
                self.pagecache_add(f, key)
        for lru, order in ((self.lru_anon, snap.lru_anon), (self.lru_drop, snap.lru_drop),
                           (self.lru_file, snap.lru_file)):
            first = [f for f in order if f in lru]
            seen = set(first)
            rest = [f for f in lru if f not in seen]
            lru.clear()
            lru.update((f, None) for f in first + rest)

    # --- mm registry (for safe frame recycling) ------------------------------------------
    def register_mm(self, mm: "MmStruct") -> None:
        self._mm_gen[mm.id] = 0

    def unregister_mm(self, mm: "MmStruct") -> None:
        self._mm_gen.pop(mm.id, None)

    def note_drain(self, mm: "MmStruct") -> None:
        if mm.id in self._mm_gen:
            self._mm_gen[mm.id] += 1

    # --- whole-system operations --------------------------------------------------------
    def drop_droppable(self) -> int:
        """Discard every droppable frame of every mm (system-wide `drop`)."""
        return drop_all_droppable(self)

    def shrink(self, nr_pages: int) -> ReclaimResult:
        """Run reclaim for nr_pages regardless of the budget (memory pressure)."""
        return reclaim(self, nr_pages)

    def __repr__(self) -> str:
        return (f"PhysMem(charged={self.charged}/{self.memory_pages}, swap={self.swap.used}/"
                f"{self.swap.nr_pages}, committed={self.vm_committed_as}, fail={self.failing})")


@dataclass(eq=False)
class CacheSnapshot:
    """PhysMem.cache_snapshot(): the page cache and the LRU lists' order."""
    page_cache: dict[tuple, Frame]
    lru_anon: list[Frame]
    lru_drop: list[Frame]
    lru_file: list[Frame]
    _finalizer: Any = field(default=None, repr=False)


def _put_frames(phys: PhysMem, frames: list[Frame]) -> None:
    for f in frames:
        phys.snap_put(f)
