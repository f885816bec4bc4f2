"""The proposed designs for vgetrandom state memory, as `faultpath compare` runs them.

Every design runs the same vDSO code with the same libc logic (one state per
thread, states carved so that none straddles a page); they differ only in how
libc (or the kernel for it) allocates the state pages and in how mm treats them:

droppable-skip   MAP_DROPPABLE from the vDSO's own params; OOM on a droppable
                 page -> VM_FAULT_SKIP_INSN (the seed's v13/v14 x86 patch).
droppable-retry  the same mapping; OOM -> `ret &= ~VM_FAULT_OOM`, the access
                 refaults (what 6.11 merged).
mlock            private anonymous + mlock() + MADV_WIPEONFORK + MADV_DONTDUMP,
                 the earlier (v6-era) approach: each locked page is charged to
                 RLIMIT_MEMLOCK; locks are not inherited across fork.
pinned           the "permanent pages" idea: kernel-provided pages, populated at
                 once, never swapped or reclaimed, charged to no rlimit, wiped
                 on fork, not dumped (mm/special_mapping.py).
plain-anon       private anonymous memory: swappable, dumped, copied on fork.

When a state page cannot be had (mmap refused by strict overcommit, mlock over
RLIMIT_MEMLOCK, no memory for pinned pages), libc gives the thread no state and
calls the getrandom syscall instead, as glibc does; the failure is counted.
"""
from __future__ import annotations

import copy
from collections import Counter
from dataclasses import dataclass
from typing import TYPE_CHECKING

from emulator.errors import EmulationError, UsageError
from emulator.options import split_list
from mm import flags as F
from mm.special_mapping import install_special_mapping
from emulator.libc import VgetrandomCaller

if TYPE_CHECKING:
    from emulator.machine import Machine

PAGE_SIZE = 4096
RW = F.PROT_READ | F.PROT_WRITE
ANON_PRIVATE = F.MAP_PRIVATE | F.MAP_ANONYMOUS


@dataclass(frozen=True)
class Design:
    name: str
    kind: str              # droppable | mlock | pinned | anon
    droppable_oom: str     # mm policy for droppable VMAs (skip | retry)
    description: str
    source: str


DESIGNS: dict[str, Design] = {d.name: d for d in [
    Design("droppable-skip", "droppable", "skip",
           "MAP_DROPPABLE; OOM on a droppable page -> skip the faulting instruction",
           "v13/v14 series, x86: mm: Skip faulting instruction for VM_DROPPABLE faults (Dec 2022 - Jan 2023)"),
    Design("droppable-retry", "droppable", "retry",
           "MAP_DROPPABLE; OOM on a droppable page -> clear VM_FAULT_OOM, the access refaults",
           "Linux 6.11 (mm: add MAP_DROPPABLE for designating always lazily freeable mappings)"),
    Design("mlock", "mlock", "skip",
           "private anon + mlock() + MADV_WIPEONFORK + MADV_DONTDUMP; charged to RLIMIT_MEMLOCK",
           "the earlier v6-era vgetrandom_alloc approach (locked, wipe-on-fork, dont-dump pages)"),
    Design("pinned", "pinned", "skip",
           "kernel-provided pages: never swapped or reclaimed, no rlimit, wiped on fork, not dumped",
           "the 'permanent pages' idea from the review threads"),
    Design("plain-anon", "anon", "skip",
           "private anonymous memory: swappable, dumped, copied on fork",
           "baseline: what a library gets with a plain malloc/mmap"),
]}


def parse_designs(spec: str | None) -> list[Design]:
    """--designs: None or `all` for every design, else a comma list of names
    (an empty list or item is an error)."""
    if spec is None or spec == "all":
        return list(DESIGNS.values())
    out = []
    for name in split_list(spec, "--designs"):
        if name not in DESIGNS:
            raise UsageError(f"--designs: unknown design {name!r} (one of: {', '.join(DESIGNS)})")
        if DESIGNS[name] not in out:
            out.append(DESIGNS[name])
    return out


class DesignCaller(VgetrandomCaller):
    """libc's vgetrandom with a design's state allocator: states are handed to
    threads as they appear, a page at a time; thread_states[t] is None when the
    design could not provide a page (that thread uses the syscall)."""

    def __init__(self, machine: "Machine", design: Design, nthreads: int = 1,
                 buffer_size: int = PAGE_SIZE):
        self.design = design
        self.thread_states: list[int | None] = []
        self.state_pages: list[int] = []
        self.alloc_failures: Counter = Counter()      # reason -> threads left without a state
        self._free_slots: list[int] = []
        super().__init__(machine, nstates=nthreads, buffer_size=buffer_size)

    # --- allocation -------------------------------------------------------------
    def alloc_states(self, n: int) -> list[int]:
        if n and not self.v14 and self.params is None:
            self.query_params()
        if self.v14:
            from emulator.syscalls import vgetrandom_state_size
            self.state_size = vgetrandom_state_size()
        elif self.params is not None:
            size = self.params.size_of_opaque_state
            if size <= 0 or size > PAGE_SIZE:
                raise EmulationError(f"vDSO reports an opaque state size of {size}")
            self.state_size = size
        for _ in range(n):
            st = self._next_slot()
            self.thread_states.append(st)
            if st is not None:
                self.states.append(st)
        return self.states

    def _next_slot(self) -> int | None:
        if not self._free_slots:
            page, why = self.alloc_state_page()
            if page is None:
                self.alloc_failures[why] += 1
                return None
            self.state_pages.append(page)
            per_page = PAGE_SIZE // self.state_size
            self._free_slots = [page + i * self.state_size for i in range(per_page)]
        return self._free_slots.pop(0)

    def alloc_state_page(self) -> tuple[int | None, str]:
        """One page for states, the design's way; (address, "") or (None, reason)."""
        mm = self.m.mm
        kind = self.design.kind
        if kind == "pinned":
            r = install_special_mapping(mm, PAGE_SIZE)
            if r < 0:
                return None, "oom"
            self.m.sync_range(r, PAGE_SIZE)
            return r, ""
        if kind == "droppable":
            if self.v14:
                prot, flags = RW, F.MAP_DROPPABLE | F.MAP_ANONYMOUS   # what vgetrandom_alloc maps
            else:
                prot, flags = self.params.mmap_prot, self.params.mmap_flags
        else:
            prot, flags = RW, ANON_PRIVATE
        r = mm.mmap(0, PAGE_SIZE, prot, flags, -1, 0)
        if r < 0:
            return None, ("overcommit" if r == -F.ENOMEM and
                          mm.phys.overcommit_memory == F.OVERCOMMIT_NEVER else f"mmap:{-r}")
        if kind == "mlock":
            e = mm.mlock(r, PAGE_SIZE)
            if e < 0:
                mm.munmap(r, PAGE_SIZE)
                self.m.sync_range(r, PAGE_SIZE)
                return None, "rlimit" if e in (-F.ENOMEM, -F.EAGAIN, -F.EPERM) else f"mlock:{-e}"
            for advice in (F.MADV_WIPEONFORK, F.MADV_DONTDUMP):
                e = mm.madvise(r, PAGE_SIZE, advice)
                if e < 0:
                    raise EmulationError(f"madvise({advice}) on a state page failed with errno {-e}")
        self.m.sync_range(r, PAGE_SIZE)
        return r, ""

    # --- fork -------------------------------------------------------------------------
    def for_machine(self, machine: "Machine") -> "DesignCaller":
        """The same libc view (addresses, states) in a forked child."""
        c = copy.copy(self)
        c.m = machine
        c.thread_states = list(self.thread_states)
        c.states = list(self.states)
        c.state_pages = list(self.state_pages)
        c.alloc_failures = Counter()
        c._free_slots = list(self._free_slots)
        return c

    def state_page_set(self) -> set[int]:
        return set(self.state_pages)
