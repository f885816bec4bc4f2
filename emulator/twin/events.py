"""The events, applied natively to a tracee stopped at an instruction boundary.

  drop       process_madvise(pidfd, the state's pages, MADV_PAGEOUT): reclaim
             discards droppable folios even when dirty (never swapped); the
             page then reads as zeros and a write faults in a zeroed page.
             Verified: not present in /proc/PID/pagemap, reads back zeros.
  reseed     ioctl(/dev/random, RNDRESEEDCRNG) (CAP_SYS_ADMIN): crng_reseed()
             bumps base_crng.generation and the vDSO's copy,
             vdso_rng_data.generation.  Verified by a load in the tracee.
             It is global: every process sees it (the engine orders walks so
             that the walker never does).
  fork       a fork() syscall injected at the boundary (Tracee.fork): parent
             and child continue from the same point; VM_WIPEONFORK gives the
             child an empty state mapping.
  reenter    a signal handler's nested call, made the way the kernel builds a
             handler's frame: below the red zone and room for a signal frame,
             same state, its own buffer; the interrupted registers (and FPU
             state, which a real sigreturn restores) come back afterwards.
  not-ready  no native form: vdso_rng_data.is_ready is written only by the
             kernel, once, when the crng becomes ready; user space cannot
             clear it (the vvar page is read-only to it).
  oom, oom:K see oom.py.
"""
from __future__ import annotations

import fcntl
import os

import emulator.twin.ptrace as pt
from emulator.twin.errors import TwinError, TwinUnavailable
from emulator.twin.process import Caller, Layout
from emulator.twin.records import EventRecord, NativeCall
from emulator.twin.tracee import Tracee
from vdso.abi import STATE_SIZE
from vdso.image import PAGE_SIZE

RNDRESEEDCRNG = 0x5207            # _IO('R', 0x07)
RED_ZONE = 128                    # x86-64 SysV: below rsp, owned by the interrupted code
SIGFRAME = 1024                   # room for a signal frame below the red zone (as the emulator's sweep)
NOT_READY_REASON = ("no native form: vdso_rng_data.is_ready is kernel-owned (set once when the crng "
                    "becomes ready; the vvar page is read-only to user space)")


PAGEOUT_ATTEMPTS = 5


def drop(t: Tracee, layout: Layout, read_back: bool = False) -> EventRecord:
    """Reclaim the state's pages from outside the process.  Verified by
    pagemap (no PTE left); read_back also reads the state through
    process_vm_readv, which maps the shared zero page there (a real read
    would too, but the run then no longer starts from a reclaimed page)."""
    pidfd = pt.pidfd_open(t.pid)
    try:
        # MADV_PAGEOUT skips a folio it cannot isolate from the LRU.  A page the
        # tracee faulted in lately may still sit in its CPU's lru_add batch, and
        # madvise drains only the batch of the CPU it runs on (mm/madvise.c:
        # lru_add_drain()): so from the second attempt on the tracer asks from
        # the CPU the tracee last ran on.  Measured on a loaded 2-CPU host: 185
        # of 200 drops failed from any CPU, 0 of 200 from the tracee's.
        mine = None                       # this thread's CPUs, once it has moved
        try:
            for attempt in range(PAGEOUT_ATTEMPTS):
                left = [p for p in layout.state_pages() if t.page_present(p)]
                if not left:
                    break
                if attempt and mine is None:
                    mine = os.sched_getaffinity(0)
                    _move_to_cpu_of(t.pid, mine)
                for page in left:
                    pt.process_madvise(pidfd, page, PAGE_SIZE, pt.MADV_PAGEOUT)
        finally:
            if mine is not None:
                os.sched_setaffinity(0, mine)
    finally:
        os.close(pidfd)
    present = [hex(p) for p in layout.state_pages() if t.page_present(p)]
    data = t.read(layout.state, STATE_SIZE) if read_back else bytes(STATE_SIZE)
    if present or any(data):
        # MADV_PAGEOUT skips folios it cannot isolate or that are mapped
        # elsewhere; say so rather than run a run that is not a drop.
        return EventRecord("drop", False, f"page(s) still present after MADV_PAGEOUT: {', '.join(present)}; "
                                          f"state reads {'zeros' if not any(data) else 'non-zero'}", data)
    return EventRecord("drop", True, "state page(s) not present after MADV_PAGEOUT" +
                       ("; the state reads zeros" if read_back else ""), data)


def _move_to_cpu_of(pid: int, allowed: set[int]) -> None:
    """Run this thread on the CPU `pid` last ran on (field 39 of its stat)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            cpu = int(f.read().rsplit(")", 1)[1].split()[36])
    except (OSError, ValueError, IndexError):
        return
    if cpu in allowed:
        os.sched_setaffinity(0, {cpu})


def can_drop() -> str:
    """'' if process_madvise(MADV_PAGEOUT) can reach a tracee here, else why not."""
    if os.geteuid() != 0:
        return ("drop needs CAP_SYS_NICE (process_madvise MADV_PAGEOUT on another process); not root")
    return ""


def can_reseed() -> str:
    """'' if RNDRESEEDCRNG can be issued here, else why not."""
    if os.geteuid() != 0:
        return "reseed needs CAP_SYS_ADMIN (RNDRESEEDCRNG); not root"
    if not os.access("/dev/random", os.R_OK):
        return "reseed: /dev/random is not readable"
    return ""


def reseed(t: Tracee, layout: Layout) -> EventRecord:
    why = can_reseed()
    if why:
        raise TwinUnavailable(why)
    before = t.load64(layout.rng_data)
    with open("/dev/random", "rb", buffering=0) as f:
        fcntl.ioctl(f.fileno(), RNDRESEEDCRNG)
    after = t.load64(layout.rng_data)
    if after == before:
        return EventRecord("reseed", False, f"RNDRESEEDCRNG left vdso_rng_data.generation at {before}")
    return EventRecord("reseed", True, f"vdso_rng_data.generation {before} -> {after}")


def reenter(t: Tracee, caller: Caller, label: str, seconds: float) -> NativeCall:
    """A complete nested call with the same state, as a signal handler would
    make it, then the interrupted registers and FPU state restored."""
    L = caller.layout
    saved = t.regs()
    fp = pt.get_fpregs(t.pid)
    nrsp = ((saved.rsp - RED_ZONE - SIGFRAME) & ~0xF) - 8      # (rsp + 8) % 16 == 0 at entry
    t.write(nrsp, caller.image.nested_ret.to_bytes(8, "little"))
    state_before = caller.state_bytes(t)
    present = all(t.page_state(p) == "backed" for p in L.state_pages())
    r = saved.copy()
    size = caller.cfg.size if caller.cfg.nested_size is None else caller.cfg.nested_size
    for name, v in zip(("rdi", "rsi", "rdx", "rcx", "r8"), caller.args(L.hbuffer, size)):
        setattr(r, name, v)
    r.rsp = nrsp
    r.rip = L.func
    t.set_regs(r)
    stop = t.run_to_trap(seconds)
    c = NativeCall(label, "nested", size, "returned", buffer=L.hbuffer, state=L.state,
                   state_before=state_before, syscalls=stop.syscalls)
    c.state_backed = present
    c = caller.conclude(t, c, stop, after_addr=caller.image.nested_ret)
    if c.outcome == "returned":
        t.set_regs(saved)
        pt.set_fpregs(t.pid, fp)
    return c


def copy_state_pages(src: Tracee, dst: Tracee, layout: Layout) -> None:
    """Give a fork child the parent's state pages back (the kernel wiped them:
    VM_WIPEONFORK), so the child is the parent at this boundary.  A page not
    present in the parent stays absent in the child."""
    for page in layout.state_pages():
        if src.page_present(page):
            dst.write(page, src.read(page, PAGE_SIZE))
        elif dst.page_present(page):
            raise TwinError(f"fork child {dst.pid}: state page {page:#x} present after a wipe-on-fork")
