"""Event counters (the model's /proc/vmstat): per mm and per PhysMem."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field


@dataclass
class MMStats:
    """What happened to one mm. Counters are never reset by restore().

    faults_by_kind keys: "anon_zero_page" (read fault mapped the zero page),
    "anon_write" (zero-filled frame), "wp_zero" (write after the zero page),
    "wp_copy" (COW copy), "wp_reuse" (sole owner made writable), "swap_in",
    "spurious", "sigsegv", "oom", "droppable_oom".
    """

    faults: int = 0
    faults_by_kind: Counter = field(default_factory=Counter)
    oom: int = 0                 # VM_FAULT_OOM returned (non-droppable)
    droppable_oom: int = 0       # OOM on a droppable VMA turned into skip/retry
    drops: int = 0               # droppable (or lazyfree) pages discarded from this mm
    swapouts: int = 0            # PTEs of this mm replaced by swap entries
    swapins: int = 0
    cow_copies: int = 0          # do_wp_page copied (incl. from the zero page)
    reuses: int = 0              # do_wp_page reused a sole-owner frame
    zero_fills: int = 0          # frames zeroed for this mm
    zero_page_maps: int = 0      # read faults that mapped the shared zero page

    @property
    def cow(self) -> int:
        return self.cow_copies


@dataclass
class PhysStats:
    """What happened to physical memory, whichever mm caused it."""

    allocs: int = 0              # successful frame allocations
    alloc_failures: int = 0      # failed attempts (injected or out of memory)
    injected_failures: int = 0
    reclaim_runs: int = 0
    drops: int = 0
    swapouts: int = 0
    swapins: int = 0
    frames_created: int = 0      # new Frame objects (vs recycled ones)
    pagecache_reads: int = 0     # file pages read into the page cache
    pagecache_evictions: int = 0  # page-cache pages dropped by reclaim
