"""The generic fault path (mm/memory.c): handle_mm_fault -> handle_pte_fault ->
do_anonymous_page / do_wp_page / do_swap_page. mm decides; the arch side
(emulator) applies the VM_FAULT_* bits.

Every fault is one of:
- a none PTE in anonymous memory, read:  map the shared zero page read-only (no
  allocation);
- a none PTE in anonymous memory, write: allocate and zero a frame (OOM can
  happen here, in COW copies, swap-in and file reads);
- a none PTE in a file mapping (do_fault): do_read_fault maps the page-cache page
  read-only, do_cow_fault gives a write a private copy of it; a page past the
  end of the file is VM_FAULT_SIGBUS;
- a swap PTE:        swap in (VM_FAULT_MAJOR, as the kernel reports it);
- a write to a read-only present PTE: do_wp_page (zero page -> fresh zeroed frame;
  page-cache page -> copy; sole owner -> reuse; shared -> copy).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Optional

from .flags import (DROPPABLE_OOM_SKIP, FAULT_FLAG_INSTRUCTION, FAULT_FLAG_USER,
                    FAULT_FLAG_WRITE, PAGE_MASK, PAGE_SHIFT, VM_EXEC, VM_FAULT_MAJOR,
                    VM_FAULT_OOM, VM_FAULT_SIGBUS, VM_FAULT_SIGSEGV, VM_FAULT_SKIP_INSN, VM_MAYWRITE,
                    VM_READ, VM_WRITE)
from .filemap import file_pages, filemap_fault
from .page import PTE, ZERO_BYTES
from .stages import FaultResult, FaultStage

if TYPE_CHECKING:  # pragma: no cover
    from .mm_types import MmStruct
    from .vma import VMA

__all__ = ["access_error", "handle_mm_fault", "FaultResult", "FaultStage"]


def access_error(vma: "VMA", flags: int) -> bool:
    """x86 access_error() in FAULT_FLAG_* terms: may this access touch this VMA?

    Writes need VM_WRITE, instruction fetches VM_EXEC. Reads need any of
    VM_READ|VM_WRITE|VM_EXEC: on x86 a writable or executable page is readable
    (there is no write-only or execute-only PTE without protection keys)."""
    f = vma.vm_flags
    if flags & FAULT_FLAG_WRITE:
        return not (f & VM_WRITE)
    if flags & FAULT_FLAG_INSTRUCTION:
        return not (f & VM_EXEC)
    return not (f & (VM_READ | VM_WRITE | VM_EXEC))


def handle_mm_fault(mm: "MmStruct", vma: Optional["VMA"], address: int, flags: int) -> FaultResult:
    """Resolve a fault at ``address`` in ``vma`` (as found by mm.find_vma).

    Applies the droppable-OOM rule after the PTE-level handler (6.11 mm/memory.c
    handle_mm_fault: VM_DROPPABLE clears VM_FAULT_OOM; the v13/v14 series
    additionally sets VM_FAULT_SKIP_INSN).  Under `retry`, the design the
    running kernel has, the rule covers user-mode faults only: measured on
    6.18 (faultpath's native twin), a kernel-mode fault on a droppable page
    whose allocation fails keeps VM_FAULT_OOM, as on any other VMA -
    getrandom's copy_to_user and read(2) into it return -EFAULT after one
    failed charge, MADV_POPULATE_WRITE -ENOMEM - while a user-mode store to
    the same page refaults until memory comes back.  The rule sits after the
    allocation, so where it failed (memcg charge or page allocator) does not
    matter to it.  Under `skip` (never merged, not measurable here) the
    series' rule is kept as written, for both modes; what a skip means for a
    kernel-mode fault is the arch code's business.

    Like the kernel's, this does not check access rights beyond sanitize_fault_flags
    (a write needs VM_MAYWRITE, and VM_WRITE unless the mapping is COW, i.e. a
    FOLL_FORCE write): call access_error() first for CPU faults.
    """
    stages: list[FaultStage] = []
    write = bool(flags & FAULT_FLAG_WRITE)
    mm.stats.faults += 1
    live = mm.find_vma(address) if vma is not None and vma.contains(address) else None
    reason = None
    if live is None:
        reason = "no_vma"
    elif write and not (live.vm_flags & VM_MAYWRITE):
        reason = "write_to_unwritable"
    elif write and not (live.vm_flags & VM_WRITE) and not live.is_cow_mapping:
        reason = "force_write_to_shared"
    stages.append(FaultStage("vma_check", {
        "address": address, "write": write, "user": bool(flags & FAULT_FLAG_USER),
        "vma": (live.start, live.end, live.vm_flags) if live is not None else None}))
    if reason is not None:
        stages.append(FaultStage("sigsegv", {"reason": reason}))
        mm.stats.faults_by_kind["sigsegv"] += 1
        return FaultResult(VM_FAULT_SIGSEGV, stages)

    ret = handle_pte_fault(mm, live, address, flags, stages)

    if ret & VM_FAULT_OOM:
        if live.is_droppable and (flags & FAULT_FLAG_USER or mm.droppable_oom == DROPPABLE_OOM_SKIP):
            policy = mm.droppable_oom
            ret &= ~VM_FAULT_OOM
            if policy == DROPPABLE_OOM_SKIP:
                ret |= VM_FAULT_SKIP_INSN
            stages.append(FaultStage("droppable_oom", {
                "policy": policy, "bits": ret, "user": bool(flags & FAULT_FLAG_USER),
                "action": "skip_insn" if policy == DROPPABLE_OOM_SKIP else "refault"}))
            mm.stats.droppable_oom += 1
            mm.stats.faults_by_kind["droppable_oom"] += 1
        else:
            stages.append(FaultStage("oom", {"user": bool(flags & FAULT_FLAG_USER)}))
            mm.stats.oom += 1
            mm.stats.faults_by_kind["oom"] += 1
    return FaultResult(ret, stages)


def handle_pte_fault(mm: "MmStruct", vma: "VMA", address: int, flags: int,
                     stages: list[FaultStage]) -> int:
    vpn = address >> PAGE_SHIFT
    pte = mm.pt.get(vpn)
    if pte is not None and pte.guard:
        # handle_pte_marker(): a guard region faults, whatever the access.
        stages.append(FaultStage("sigsegv", {"reason": "guard_region"}))
        mm.stats.faults_by_kind["guard"] += 1
        return VM_FAULT_SIGSEGV
    if pte is None or pte.none:
        if vma.vm_file is not None:
            return do_fault(mm, vma, vpn, flags, stages)
        return do_anonymous_page(mm, vma, vpn, flags, stages)
    if pte.frame is None:
        return do_swap_page(mm, vma, vpn, pte, flags, stages)
    if flags & FAULT_FLAG_WRITE and not pte.writable:
        return do_wp_page(mm, vma, vpn, pte, stages)
    # The PTE already permits the access (another path fixed it first).
    stages.append(FaultStage("spurious", {"pfn": pte.frame.pfn, "writable": pte.writable}))
    mm.stats.faults_by_kind["spurious"] += 1
    return 0


def _anon_vma_prepare(mm: "MmStruct", vma: "VMA") -> None:
    if vma.anon_vma is None:
        vma.anon_vma = mm.new_anon_vma_id()


def _new_zeroed(mm: "MmStruct", vma: "VMA", vpn: int, stages: list[FaultStage],
                from_zero_page: bool) -> int:
    frame = mm.phys.alloc_frame(stages, droppable=vma.is_droppable)
    if frame is None:
        return VM_FAULT_OOM
    _anon_vma_prepare(mm, vma)
    frame.data[:] = ZERO_BYTES
    stages.append(FaultStage("zero_fill", {"pfn": frame.pfn, "from_zero_page": from_zero_page}))
    mm.stats.zero_fills += 1
    mm.set_pte(vpn, PTE(frame, bool(vma.vm_flags & VM_WRITE)))
    return 0


def do_anonymous_page(mm: "MmStruct", vma: "VMA", vpn: int, flags: int,
                      stages: list[FaultStage]) -> int:
    if not flags & FAULT_FLAG_WRITE:
        # Read of a never-written page: the zero page, read-only, nothing allocated.
        mm.set_pte(vpn, mm.phys.zero_pte)
        stages.append(FaultStage("map_zero_page", {}))
        mm.stats.zero_page_maps += 1
        mm.stats.faults_by_kind["anon_zero_page"] += 1
        return 0
    ret = _new_zeroed(mm, vma, vpn, stages, from_zero_page=False)
    if not ret:
        mm.stats.faults_by_kind["anon_write"] += 1
    return ret


def do_fault(mm: "MmStruct", vma: "VMA", vpn: int, flags: int,
             stages: list[FaultStage]) -> int:
    """A none PTE in a file mapping: do_read_fault, or do_cow_fault for a write
    (every file mapping here is private or read-only shared). A page wholly past
    the end of the file does not exist: VM_FAULT_SIGBUS."""
    pgoff = vma.pgoff_of(vpn << PAGE_SHIFT)
    if pgoff >= file_pages(vma.vm_file):
        stages.append(FaultStage("sigbus", {"reason": "beyond_eof", "pgoff": pgoff}))
        mm.stats.faults_by_kind["sigbus"] += 1
        return VM_FAULT_SIGBUS
    if flags & FAULT_FLAG_WRITE:
        return do_cow_fault(mm, vma, vpn, pgoff, stages)
    return do_read_fault(mm, vma, vpn, pgoff, stages)


def do_read_fault(mm: "MmStruct", vma: "VMA", vpn: int, pgoff: int,
                  stages: list[FaultStage]) -> int:
    """Map the page-cache page, read-only whatever the VMA allows: a later write
    goes through do_wp_page and copies."""
    frame, ret = filemap_fault(mm.phys, vma.vm_file, pgoff, stages)
    if frame is None:
        return ret
    mm.set_pte(vpn, PTE(frame, False))
    mm.stats.faults_by_kind["file_read"] += 1
    return ret


def do_cow_fault(mm: "MmStruct", vma: "VMA", vpn: int, pgoff: int,
                 stages: list[FaultStage]) -> int:
    """A write to a never-mapped page of a private file mapping: a private copy
    of the file page (which is read into the page cache if needed)."""
    phys = mm.phys
    new = phys.alloc_frame(stages)
    if new is None:
        return VM_FAULT_OOM
    src, ret = filemap_fault(phys, vma.vm_file, pgoff, stages)
    if src is None:
        phys.free_frame(new)
        return ret
    _anon_vma_prepare(mm, vma)
    new.data[:] = src.data
    stages.append(FaultStage("cow_copy", {"from_pfn": src.pfn, "pfn": new.pfn, "file": True}))
    mm.stats.cow_copies += 1
    mm.stats.faults_by_kind["file_cow"] += 1
    mm.set_pte(vpn, PTE(new, bool(vma.vm_flags & VM_WRITE)))
    return ret


def do_wp_page(mm: "MmStruct", vma: "VMA", vpn: int, pte: PTE, stages: list[FaultStage]) -> int:
    phys = mm.phys
    old = pte.frame
    writable = bool(vma.vm_flags & VM_WRITE)
    if old.mapping is not None:
        # A page-cache page in a private mapping: always copied (wp_page_copy),
        # never reused, even when only this PTE maps it.
        return _wp_page_copy(mm, vma, vpn, pte, stages)
    if old.is_zero:
        # wp_page_copy() from the zero page allocates a zeroed page: no copy.
        ret = _new_zeroed(mm, vma, vpn, stages, from_zero_page=True)
        if not ret:
            mm.stats.faults_by_kind["wp_zero"] += 1
        return ret
    if old.exclusive:
        # wp_page_reuse(): we are the only user; just set the W bit (and a write
        # re-dirties an MADV_FREE'd page, which cancels the lazy free).
        phys.set_lazyfree(old, False)
        mm.set_pte(vpn, PTE(old, writable))
        stages.append(FaultStage("reuse", {"pfn": old.pfn}))
        mm.stats.reuses += 1
        mm.stats.faults_by_kind["wp_reuse"] += 1
        return 0
    if old.mapcount == 1:
        # Only snapshots share the frame. To the emulated system this is a reuse;
        # the snapshot keeps the old bytes, the mm gets an identical copy, and the
        # budget sees one frame traded for another (no allocation, cannot fail).
        new = phys.alloc_frame(None, droppable=old.droppable, exempt=True)
        new.data[:] = old.data
        mm.set_pte(vpn, PTE(new, writable))
        stages.append(FaultStage("reuse", {"pfn": new.pfn, "snapshot_copy": True}))
        mm.stats.reuses += 1
        mm.stats.faults_by_kind["wp_reuse"] += 1
        return 0
    return _wp_page_copy(mm, vma, vpn, pte, stages)


def _wp_page_copy(mm: "MmStruct", vma: "VMA", vpn: int, pte: PTE,
                  stages: list[FaultStage]) -> int:
    """wp_page_copy(): a private copy of a shared (forked or page-cache) frame."""
    phys = mm.phys
    old = pte.frame
    writable = bool(vma.vm_flags & VM_WRITE)
    # Pin the source so reclaim cannot take it from under us while we allocate.
    phys.pinned.add(old)
    try:
        new = phys.alloc_frame(stages, droppable=vma.is_droppable)
    finally:
        phys.pinned.discard(old)
    if new is None:
        return VM_FAULT_OOM
    if mm.pt.get(vpn) is not pte:          # pte_same() failed: let the access retry
        phys.free_frame(new)
        return 0
    _anon_vma_prepare(mm, vma)
    new.data[:] = old.data
    stages.append(FaultStage("cow_copy", {"from_pfn": old.pfn, "pfn": new.pfn,
                                          "file": old.mapping is not None}))
    mm.stats.cow_copies += 1
    mm.stats.faults_by_kind["wp_copy"] += 1
    mm.set_pte(vpn, PTE(new, writable))
    return 0


def do_swap_page(mm: "MmStruct", vma: "VMA", vpn: int, pte: PTE, flags: int,
                 stages: list[FaultStage]) -> int:
    phys = mm.phys
    slot = phys.swap.get(pte.swap_slot)
    new = phys.alloc_frame(stages, droppable=vma.is_droppable)
    if new is None:
        return VM_FAULT_OOM
    if mm.pt.get(vpn) is not pte:
        phys.free_frame(new)
        return 0
    new.data[:] = slot.data
    stages.append(FaultStage("swap_in", {"slot": slot.slot, "pfn": new.pfn}))
    # The new frame is exclusive: writable right away for a write fault; a read
    # fault maps it read-only and a later write reuses it.
    write = bool(flags & FAULT_FLAG_WRITE) and bool(vma.vm_flags & VM_WRITE)
    mm.set_pte(vpn, PTE(new, write))
    mm.stats.swapins += 1
    phys.stats.swapins += 1
    mm.stats.faults_by_kind["swap_in"] += 1
    return VM_FAULT_MAJOR


def page_of(address: int) -> int:
    return address & PAGE_MASK
