"""faultpath's pure-Python model of Linux memory management with VM_DROPPABLE.

Stdlib only; never imports Unicorn, capstone, keystone or the emulator. The
interface contract is docs/mm-api.md. Modules, one concept each:

    flags       PROT_/MAP_/MADV_/MCL_/MREMAP_/VM_/VM_FAULT_/FAULT_FLAG_ values, errno
    kconfig     KernelConfig: build options that change behaviour (soft-dirty)
    vma         struct vm_area_struct
    vma_tree    the ordered VMA set: lookup, split, merge
    page        Frame (struct page) and PTE
    swapfile    swap slots
    physmem     PhysMem: frames under a budget, zero page, LRU, failure injection
    overcommit  commit accounting (vm_committed_as, overcommit modes)
    vmscan      reclaim: drop droppable pages, swap out anonymous ones
    stages      FaultStage / FaultResult
    memory      handle_mm_fault and the per-kind fault handlers
    gup         populate, peek, copy_from_user, FOLL_FORCE poke
    mmap        mmap/munmap, get_unmapped_area
    mremap      mremap: grow, shrink, move, DONTUNMAP
    mprotect    mprotect
    mlock       mlock/munlock/mlock2/mlockall/munlockall
    special_mapping  kernel-provided pinned pages (_install_special_mapping)
    madvise     madvise
    fork        dup_mm
    coredump    the core-dump view
    smaps       /proc/PID/smaps text
    snapshot    snapshot/restore
    stats       counters
    mm_struct   class MM tying it together
"""

from . import flags
from .coredump import CoreDump, CoreSegment
from .flags import *  # noqa: F401,F403  (the constants are the API too)
from .kconfig import KernelConfig, host_kernel_config
from .memory import access_error, handle_mm_fault
from .mm_struct import MM
from .page import PTE, Frame
from .physmem import PhysMem
from .snapshot import MMSnapshot
from .stages import STAGE_KINDS, FaultResult, FaultStage
from .stats import MMStats, PhysStats
from .vma import VMA

__all__ = ["MM", "PhysMem", "VMA", "PTE", "Frame", "FaultResult", "FaultStage", "STAGE_KINDS",
           "MMSnapshot", "CoreDump", "CoreSegment", "MMStats", "PhysStats", "access_error",
           "handle_mm_fault", "flags", "KernelConfig", "host_kernel_config"]
__all__ += [_n for _n in dir(flags) if _n.isupper()]
