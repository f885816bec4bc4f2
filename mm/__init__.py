"""faultpath's pure-Python model of Linux memory management with VM_DROPPABLE.

Stdlib only; never imports Unicorn, capstone, keystone or the emulator. The
interface is described in docs/mm-api.md. Modules, one concept each, from the
leaves up (no module imports one above it; python tests/import_graph.py):

    flags       PROT_/MAP_/MADV_/MCL_/MREMAP_/VM_/VM_FAULT_/FAULT_FLAG_ values, errno,
                VmFlags mnemonics
    kconfig     KernelConfig: build options that change behaviour (soft-dirty)
    stats       counters;  stages: FaultStage / FaultResult;  swapfile: swap slots
    page        Frame (struct page) and PTE (incl. the dropped and guard markers)
    pgtable     PageTable: touched pages only, walked by range
    file        MappedFile (what mm needs of a file), BytesFile, HostFile
    vma         struct vm_area_struct;  vma_tree: the ordered VMA set (split, merge)
    mm_types    MmStruct / Zone protocols: what the modules below see of MM/PhysMem
    vmscan      reclaim: drop droppable pages, swap out anonymous ones
    physmem     PhysMem: frames under a budget, zero page, LRU, page cache, failure injection
    filemap     the page cache: file pages read on fault, shared by every mapping
    overcommit  commit accounting (vm_committed_as, overcommit modes)
    memory      handle_mm_fault and the per-kind fault handlers
    gup         populate, peek, copy_from_user, FOLL_FORCE poke
    mmap        mmap/munmap, get_unmapped_area
    mremap      mremap: grow, shrink, move, DONTUNMAP, multi-VMA move
    mprotect    mprotect
    mlock       mlock/munlock/mlock2/mlockall/munlockall
    madvise     madvise (incl. KSM advice, populate, guard regions)
    special_mapping  kernel-provided pinned pages (_install_special_mapping)
    fork        dup_mm's copy of the address space
    coredump    the core-dump view;  smaps: /proc/PID/smaps text
    snapshot    snapshot/restore
    mm_struct   class MM tying it together
"""

from . import flags
from .coredump import CoreDump, CoreSegment
from .flags import *  # noqa: F401,F403  (the constants are the API too)
from .file import BytesFile, HostFile, MappedFile
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
           "handle_mm_fault", "flags", "KernelConfig", "host_kernel_config", "MappedFile",
           "BytesFile", "HostFile"]
__all__ += [_n for _n in dir(flags) if _n.isupper()]
