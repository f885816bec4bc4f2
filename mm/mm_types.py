"""What mm's per-concept modules (memory, mmap, madvise, mlock, fork, vmscan, ...)
use of an address space and of physical memory, as typing Protocols.

The kernel's include/linux/mm_types.h plays the same part: the per-concept .c
files see struct mm_struct's fields, not the code that creates one. Here
mm_struct.MM and physmem.PhysMem implement these protocols; the per-concept
modules annotate with them and so never import mm_struct or physmem, which keeps
the package's import graph free of circles (python tests/import_graph.py).

This module imports only leaf modules (records, no logic).
"""

from __future__ import annotations

from collections import OrderedDict
from typing import TYPE_CHECKING, Optional, Protocol

if TYPE_CHECKING:  # pragma: no cover
    from .kconfig import KernelConfig
    from .page import PTE, Frame
    from .pgtable import PageTable
    from .stats import MMStats, PhysStats
    from .swapfile import SwapArea
    from .vma import VMA
    from .vma_tree import VmaTree


class Zone(Protocol):
    """Physical memory as mm's code uses it (the kernel's zone: free budget, LRU
    lists, the allocator, plus swap, commit accounting and the kernel config)."""

    memory_pages: int
    charged: int
    swap: "SwapArea"
    kconfig: "KernelConfig"
    zero_frame: "Frame"
    zero_pte: "PTE"
    lru_anon: "OrderedDict[Frame, None]"
    lru_drop: "OrderedDict[Frame, None]"
    lru_file: "OrderedDict[Frame, None]"
    page_cache: "dict[tuple, Frame]"
    pinned: set
    stats: "PhysStats"
    vm_committed_as: int
    overcommit_memory: int
    overcommit_ratio: int
    overcommit_kbytes: int
    admin_reserve_pages: int
    user_reserve_pages: int
    reclaim_batch: int

    def alloc_frame(self, stages: Optional[list] = None, *, droppable: bool = False,
                    exempt: bool = False) -> Optional["Frame"]: ...

    def free_frame(self, frame: "Frame") -> None: ...

    def rmap_add(self, frame: "Frame", mm: "MmStruct", vaddr: int) -> None: ...

    def rmap_remove(self, frame: "Frame", mm: "MmStruct", vaddr: int) -> None: ...

    def set_lazyfree(self, frame: "Frame", lazy: bool) -> None: ...

    def pagecache_add(self, frame: "Frame", key: tuple) -> None: ...

    def pagecache_remove(self, frame: "Frame") -> None: ...

    def snap_get(self, frame: "Frame") -> None: ...

    def snap_put(self, frame: "Frame") -> None: ...

    def register_mm(self, mm: "MmStruct") -> None: ...

    def unregister_mm(self, mm: "MmStruct") -> None: ...

    def note_drain(self, mm: "MmStruct") -> None: ...


class MmStruct(Protocol):
    """One address space as mm's code uses it (struct mm_struct's fields and the
    page-table primitives every operation goes through)."""

    id: int
    phys: Zone
    vma_tree: "VmaTree"
    pt: "PageTable"
    stats: "MMStats"
    locked_vm: int
    def_flags: int
    rlimit_memlock: int
    cap_ipc_lock: bool
    task_size: int
    mmap_base: int
    mmap_min_addr: int
    droppable_oom: str
    dead: bool

    @property
    def map_count(self) -> int: ...

    @property
    def total_vm(self) -> int: ...

    def find_vma(self, addr: int) -> Optional["VMA"]: ...

    def vpns_in(self, start: int, end: int) -> list[int]: ...

    def set_pte(self, vpn: int, new: Optional["PTE"]) -> None: ...

    def zap_range(self, start: int, end: int) -> None: ...

    def mark_changed(self, start: int, end: int) -> None: ...

    def new_anon_vma_id(self) -> int: ...

    def exit_mmap(self) -> None: ...


__all__ = ["MmStruct", "Zone"]
