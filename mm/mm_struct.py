"""struct mm_struct: one address space. Ties the VMAs, the page table and the
syscall-like operations together; the logic lives in the per-concept modules.

Syscall-like methods return a non-negative result or -errno, never raise for bad
user arguments. Every PTE change and every VMA protection change is recorded in the
change log (drain_change_ranges()), whichever code path (or other mm's reclaim)
caused it: one entry per VMA-level change however large, one per PTE changed.
"""

from __future__ import annotations

import itertools
from typing import Optional, Union

# The submodules by name (not `from . import`, which names the package itself
# and so reads as mm_struct -> mm -> mm_struct).
import mm.coredump as _coredump
import mm.fork as _fork
import mm.gup as gup
import mm.madvise as madvise
import mm.memory as memory
import mm.mlock as mlock
import mm.mmap as mmap
import mm.mprotect as mprotect
import mm.mremap as mremap
import mm.smaps as _smaps
import mm.snapshot as _snapshot
import mm.vmscan as vmscan
from .flags import (DROPPABLE_OOM_POLICIES, MMAP_MIN_ADDR, PAGE_SHIFT, PAGE_SIZE,
                    TASK_SIZE, VM_ACCOUNT)
from .file import MappedFile
from .page import PTE
from .pgtable import PageTable
from .physmem import PhysMem
from .stages import FaultResult
from .stats import MMStats
from .vma import VMA
from .vma_tree import VmaTree

_mm_ids = itertools.count(1)
_anon_vma_ids = itertools.count(1)

# x86-64 mmap_base without ASLR: TASK_SIZE minus the default 8 MiB stack gap
# rounded, as in an `setarch -R` process (0x7ffff7fff000-ish). Deterministic.
DEFAULT_MMAP_BASE = 0x7FFFF7FFF000


class MM:
    def __init__(self, phys: PhysMem, droppable_oom: str = "skip",
                 rlimit_memlock: int = 8 << 20, *, cap_ipc_lock: bool = False,
                 mmap_base: int = DEFAULT_MMAP_BASE, task_size: int = TASK_SIZE,
                 mmap_min_addr: int = MMAP_MIN_ADDR) -> None:
        self.id = next(_mm_ids)
        self.phys = phys
        self.droppable_oom = droppable_oom
        self.rlimit_memlock = rlimit_memlock
        self.cap_ipc_lock = cap_ipc_lock
        self.mmap_base = mmap_base
        self.task_size = task_size
        self.mmap_min_addr = mmap_min_addr
        self.vma_tree = VmaTree()
        self.pt = PageTable()                 # vpn -> PTE, touched pages only
        self.locked_vm = 0                    # pages
        self.def_flags = 0                    # VM_LOCKED|VM_LOCKONFAULT after MCL_FUTURE
        self.stats = MMStats()
        self.dead = False
        # The change log: vpns whose PTE changed, and byte ranges whose VMA
        # protection changed, since the last drain.
        self._changed_vpns: set[int] = set()
        self._changed_ranges: list[tuple[int, int]] = []
        phys.register_mm(self)

    # --- policy -----------------------------------------------------------------------
    @property
    def droppable_oom(self) -> str:
        """'skip' (v13/v14: VM_FAULT_SKIP_INSN) or 'retry' (6.11: OOM bit cleared)."""
        return self._droppable_oom

    @droppable_oom.setter
    def droppable_oom(self, policy: str) -> None:
        if policy not in DROPPABLE_OOM_POLICIES:
            raise ValueError(f"droppable_oom must be one of {DROPPABLE_OOM_POLICIES}, not {policy!r}")
        self._droppable_oom = policy

    # --- VMAs -----------------------------------------------------------------------------
    @property
    def vmas(self) -> list[VMA]:
        return self.vma_tree.as_list()

    def find_vma(self, addr: int) -> Optional[VMA]:
        """The VMA containing addr (not the kernel's 'first VMA ending above addr')."""
        return self.vma_tree.find(addr)

    @property
    def map_count(self) -> int:
        return len(self.vma_tree)

    @property
    def total_vm(self) -> int:
        return sum(v.pages for v in self.vma_tree.as_list())

    @property
    def committed(self) -> int:
        """Pages this mm has charged to vm_committed_as (its VM_ACCOUNT VMAs)."""
        return sum(v.pages for v in self.vma_tree.as_list() if v.vm_flags & VM_ACCOUNT)

    def new_anon_vma_id(self) -> int:
        return next(_anon_vma_ids)

    # --- syscalls ---------------------------------------------------------------------------
    def mmap(self, addr: int, length: int, prot: int, flags: int, fd: int = -1,
             offset: int = 0, *, file: Optional[MappedFile] = None) -> int:
        """mmap(2): the address or -errno. For a file mapping, pass the open file as
        ``file`` (fd is then informational); mm only ever reads it."""
        return mmap.do_mmap(self, addr, length, prot, flags, fd, offset, file)

    def munmap(self, addr: int, length: int) -> int:
        return mmap.do_munmap(self, addr, length)

    def mremap(self, old_addr: int, old_len: int, new_len: int, flags: int,
               new_addr: int = 0) -> int:
        """mremap(2): the new address or -errno (MREMAP_MAYMOVE/FIXED/DONTUNMAP)."""
        return mremap.do_mremap(self, old_addr, old_len, new_len, flags, new_addr)

    def mprotect(self, addr: int, length: int, prot: int) -> int:
        return mprotect.do_mprotect(self, addr, length, prot)

    def madvise(self, addr: int, length: int, advice: int) -> int:
        return madvise.do_madvise(self, addr, length, advice)

    def set_vma_name(self, addr: int, length: int, name: str) -> int:
        """prctl(PR_SET_VMA_ANON_NAME): smaps shows [anon:name]."""
        return madvise.set_anon_name(self, addr, length, name)

    def mlock(self, addr: int, length: int) -> int:
        return mlock.sys_mlock(self, addr, length)

    def mlock2(self, addr: int, length: int, flags: int) -> int:
        return mlock.sys_mlock2(self, addr, length, flags)

    def munlock(self, addr: int, length: int) -> int:
        return mlock.sys_munlock(self, addr, length)

    def mlockall(self, flags: int) -> int:
        return mlock.sys_mlockall(self, flags)

    def munlockall(self) -> int:
        return mlock.sys_munlockall(self)

    # --- faults -----------------------------------------------------------------------------
    def access_error(self, vma: VMA, flags: int) -> bool:
        return memory.access_error(vma, flags)

    def handle_mm_fault(self, vma: Optional[VMA], address: int, flags: int) -> FaultResult:
        return memory.handle_mm_fault(self, vma, address, flags)

    # --- page table -----------------------------------------------------------------------------
    def pte(self, vaddr: int) -> Optional[PTE]:
        return self.pt.get(vaddr >> PAGE_SHIFT)

    def vpns_in(self, start: int, end: int) -> list[int]:
        """Sorted vpns of the pages overlapping [start, end) that have a page-table
        entry: O(entries in range), however large the range."""
        return self.pt.vpns_in(start >> PAGE_SHIFT, (end + PAGE_SIZE - 1) >> PAGE_SHIFT)

    def set_pte(self, vpn: int, new: Optional[PTE]) -> None:
        """set_pte_at()/pte_clear() with the bookkeeping: reverse map, frame charge,
        swap slot counts, and the change record. Every PTE change goes through here."""
        pt = self.pt
        old = pt.get(vpn)
        if old is new:
            return
        phys = self.phys
        vaddr = vpn << PAGE_SHIFT
        of = old.frame if old is not None else None
        nf = new.frame if new is not None else None
        if nf is not of:
            if nf is not None and not nf.is_zero:
                phys.rmap_add(nf, self, vaddr)
            if of is not None and not of.is_zero:
                phys.rmap_remove(of, self, vaddr)
        os_ = old.swap_slot if old is not None else None
        ns = new.swap_slot if new is not None else None
        if ns != os_:
            if ns is not None:
                phys.swap.dup(ns)
            if os_ is not None:
                phys.swap.put(os_)
        if new is None:
            del pt[vpn]
        else:
            pt[vpn] = new
        self._changed_vpns.add(vpn)

    _set_pte = set_pte                        # the earlier name, kept for callers

    def zap_range(self, start: int, end: int) -> None:
        for vpn in self.vpns_in(start, end):
            self.set_pte(vpn, None)

    # --- the change log ---------------------------------------------------------------
    def mark_changed(self, start: int, end: int) -> None:
        """Record that the VMA protection of [start, end) changed (one entry, any size)."""
        if end > start:
            ranges = self._changed_ranges
            ranges.append((start, end))
            if len(ranges) > 4096:               # keep the log small between drains
                self._changed_ranges = _coalesce(ranges)

    def pending_change_ranges(self) -> list[tuple[int, int]]:
        """What drain_change_ranges() would return, without draining."""
        pages = []
        run_lo = run_hi = None
        for vpn in sorted(self._changed_vpns):
            if run_hi == vpn:
                run_hi += 1
                continue
            if run_lo is not None:
                pages.append((run_lo << PAGE_SHIFT, run_hi << PAGE_SHIFT))
            run_lo, run_hi = vpn, vpn + 1
        if run_lo is not None:
            pages.append((run_lo << PAGE_SHIFT, run_hi << PAGE_SHIFT))
        return _coalesce(pages + self._changed_ranges)

    def drain_change_ranges(self) -> list[tuple[int, int]]:
        """Sorted, coalesced, page-aligned [start, end) ranges whose PTEs or VMA
        protection may have changed since the last drain (of either kind). One
        entry per mapping however large it is; the emulator re-syncs exactly these
        ranges: unmapped where there is no VMA, PROT_NONE where a VMA has no present
        page, the frame where there is one."""
        out = self.pending_change_ranges()
        self._changed_vpns = set()
        self._changed_ranges = []
        self.phys.note_drain(self)
        return out

    def drain_changes(self) -> set[int]:
        """The same as drain_change_ranges(), expanded to page addresses (for callers
        that sync page by page; avoid it after mapping anything large)."""
        out: set[int] = set()
        for lo, hi in self.drain_change_ranges():
            out.update(range(lo, hi, PAGE_SIZE))
        return out

    @property
    def pending_changes(self) -> int:
        """How many pages the pending change ranges cover."""
        return sum(hi - lo for lo, hi in self.pending_change_ranges()) >> PAGE_SHIFT

    # --- kernel-side access -------------------------------------------------------------------
    def read(self, addr: int, n: int) -> bytes:
        """Peek without faulting: not present (or no VMA) -> zeros, swapped -> swap bytes."""
        return gup.peek(self, addr, n)

    def copy_from_user(self, addr: int, n: int) -> bytes:
        """Up to n bytes, short at the first unreadable page (for instruction fetch)."""
        return gup.copy_from_user(self, addr, n)

    def poke(self, addr: int, data: bytes) -> int:
        """FOLL_FORCE write (ptrace POKEDATA / loader); returns bytes written."""
        return gup.poke(self, addr, data)

    # --- reclaim -----------------------------------------------------------------------------------
    def drop_droppable(self) -> int:
        """Discard every present page of this mm's droppable VMAs; returns the count."""
        return vmscan.drop_mm_droppable(self)

    # --- fork / exit --------------------------------------------------------------------------------
    def dup_mm(self) -> Union["MM", int]:
        """fork(): the child's mm sharing this PhysMem, or -ENOMEM (strict overcommit)."""
        return _fork.dup_mm(self, lambda: MM(
            self.phys, droppable_oom=self.droppable_oom, rlimit_memlock=self.rlimit_memlock,
            cap_ipc_lock=self.cap_ipc_lock, mmap_base=self.mmap_base, task_size=self.task_size,
            mmap_min_addr=self.mmap_min_addr))

    def exit_mmap(self) -> None:
        """Tear the address space down (process exit)."""
        for v in self.vma_tree.as_list():
            mmap.do_munmap_range(self, v.start, v.end)
        self.dead = True
        self.phys.unregister_mm(self)

    # --- snapshots -------------------------------------------------------------------------------------
    def snapshot(self) -> _snapshot.MMSnapshot:
        return _snapshot.take_snapshot(self)

    def restore(self, snap: _snapshot.MMSnapshot) -> None:
        _snapshot.restore_snapshot(self, snap)

    # --- views ---------------------------------------------------------------------------------------------
    def coredump(self) -> _coredump.CoreDump:
        return _coredump.coredump(self)

    def smaps(self) -> str:
        return _smaps.smaps(self)

    def __repr__(self) -> str:
        return (f"MM(id={self.id}, vmas={len(self.vma_tree)}, ptes={len(self.pt)}, "
                f"locked_vm={self.locked_vm}, droppable_oom={self.droppable_oom!r})")


def _coalesce(ranges: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Sort [start, end) ranges and merge the ones that overlap or touch."""
    out: list[tuple[int, int]] = []
    for lo, hi in sorted(ranges):
        if out and lo <= out[-1][1]:
            if hi > out[-1][1]:
                out[-1] = (out[-1][0], hi)
        else:
            out.append((lo, hi))
    return out
