"""oom natively: a memory cgroup holding only the tracee, with a limit no new
page can be charged under.

What this host offers (cgroup v1 memory hierarchy at /sys/fs/cgroup/memory,
the v2 hierarchy has no memory controller enabled) and what it shows,
measured on 6.18 at boundary 0 of a 64-byte call after a drop:

* memory.limit_in_bytes = 0 on a child cgroup of ours, the tracee moved in
  (v1 leaves its earlier charges behind, so usage starts at 0) and everything
  the call writes besides the state made resident first (COW broken);
* with the memcg OOM killer enabled (oom_kill_disable 0), the droppable
  state's write fault ends in an OOM kill of the tracee: the kill happens in
  the memcg charge, before handle_mm_fault's VM_DROPPABLE clearing of
  VM_FAULT_OOM could matter (memory.failcnt 36, oom_kill 1);
* with oom_kill_disable 1 the fault returns VM_FAULT_OOM, the droppable VMA
  clears it, nothing sleeps (memcg1's OOM wait runs from
  pagefault_out_of_memory, which is then never called) and the instruction
  refaults forever: 6.11's `retry` livelock, natively (failcnt ~25-50k/s);
* the kernel's own copy is different: with the limit applied at the
  `syscall` of a first call's reseed (state dropped after in_use and the
  generation were written), getrandom(state->key, 32) returns -EFAULT at
  once instead of refaulting in copy_to_user; the vDSO then stores
  generation = 0 into the state and that user-mode store refaults forever
  (__vdso_getrandom+0x395 here).  Under oom:5 the same run completes:
  reseed -EFAULT, then the fallback getrandom(buffer, 64) succeeds.

The events use oom_kill_disable 1, the emulator's model (allocation fails,
no OOM killer); `oom_killer=True` gives the kernel's default.  oom:K lifts the
limit once K page charges have failed (memory.failcnt reaches K times
FAILCNT_PER_CHARGE).  A refaulting tracee fails a charge every few dozen
microseconds, faster than a polling tracer on a loaded machine can see it
(measured: oom:1 runs saw 2 to 24 failed charges): while such a limit is on,
paced() puts tracer and tracee on one CPU with the tracer real-time
(SCHED_FIFO) and polling every POLL_QUANTUM, so the tracee runs only while
the tracer sleeps and the limit is lifted within one quantum of the K-th
failure; the next charge then succeeds on one of its own retries.
MemoryLimit.failed_charges says afterwards how many failed (whole attempts):
more than K means the lift still came late, and the comparison runs the run
again.
"""
from __future__ import annotations

import contextlib
import os
import signal
import time

import emulator.twin.events as ev
from emulator.twin.errors import TwinError, TwinUnavailable
from emulator.twin.process import STACK_RESIDENT, Layout
from emulator.twin.records import EventRecord
from emulator.twin.tracee import Tracee
from emulator.twin.tracee_image import DATA_BASE, TEXT_BASE
from vdso.image import PAGE_SIZE

V1_ROOT = "/sys/fs/cgroup/memory"
STOP_WAIT = 1.0                   # seconds to wait for a SIGSTOP stop when diagnosing a spin
# One failed page charge is 19 memory.failcnt increments on this kernel (the
# batch and single-page attempts, one after draining the stock, then
# MAX_RECLAIM_RETRIES = 16 reclaim retries; measured: 1155 user-mode refaults
# in 0.5 s raised failcnt by 21,926).  A charge gives up only after a last
# margin check that counts nothing: lifted at failcnt 19, getrandom's copy
# still succeeded (measured).  So the K-th failure is certain only once the
# next attempt has begun: oom:K lifts at K * 19 + 1.  Under a persistent
# limit a call that has failed LIVELOCK_CHARGES charges without a ptrace stop
# is spinning: nothing in getrandom writes that many fresh pages.
FAILCNT_PER_CHARGE = 19
LIVELOCK_CHARGES = 64
POLL_QUANTUM = 20e-6              # seconds the tracee may run between two polls of an oom:K limit
RT_PRIORITY = 1                   # the lowest SCHED_FIFO priority: above every normal task, below the kernel's


def _our_v1_memcg() -> str:
    with open("/proc/self/cgroup") as f:
        for line in f:
            _, controllers, path = line.rstrip("\n").split(":", 2)
            if "memory" in controllers.split(","):
                return os.path.join(V1_ROOT, path.lstrip("/"))
    return ""


def unavailable() -> str:
    """'' if a v1 memory cgroup can be made here, else why not (one line)."""
    if os.geteuid() != 0:
        return "oom needs root to make a memory cgroup"
    d = _our_v1_memcg()
    if not d or not os.path.exists(os.path.join(d, "memory.limit_in_bytes")):
        return ("oom needs a cgroup v1 memory controller (not mounted here; cgroup v2's memory.max has "
                "no oom_kill_disable and is not supported in phase 1)")
    if not os.access(d, os.W_OK):
        return f"oom: the memory cgroup {d} is not writable"
    return ""


@contextlib.contextmanager
def paced(pid: int, enabled: bool = True):
    """Tracer and tracee `pid` (ours) on the tracer's current CPU, the tracer
    SCHED_FIFO: the tracee then runs only while the tracer sleeps.  Both are
    restored on exit (the tracee is killed by then; its affinity goes with it)."""
    if not enabled:
        yield
        return
    old_aff = os.sched_getaffinity(0)
    old_pol, old_prio = os.sched_getscheduler(0), os.sched_getparam(0).sched_priority
    cpu = min(old_aff)
    try:
        os.sched_setaffinity(0, {cpu})
        os.sched_setaffinity(pid, {cpu})
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(RT_PRIORITY))
        yield
    finally:
        os.sched_setscheduler(0, old_pol, os.sched_param(old_prio))
        os.sched_setaffinity(0, old_aff)


def _kernel_where(pid: int) -> str:
    """The tracee's kernel stack (root reads /proc/PID/stack), innermost frames
    last, or its wchan."""
    user = ""
    try:
        with open(f"/proc/{pid}/syscall") as f:      # "-1 sp pc" outside a syscall, "nr args... sp pc" in one
            fields = f.read().split()
        if len(fields) >= 3:
            user = f", user pc {fields[-1]}" + (" in syscall " + fields[0] if fields[0] != "-1" else "")
    except OSError:
        pass
    try:
        with open(f"/proc/{pid}/stack") as f:
            frames = [ln.split()[1].split("+")[0] for ln in f if ln.strip()]
        if frames:
            return "kernel stack " + " <- ".join(frames[:8]) + user
    except (OSError, IndexError):
        pass
    try:
        with open(f"/proc/{pid}/wchan") as f:
            return f"wchan {f.read().strip() or '?'}"
    except OSError:
        return "kernel stack unreadable"


class MemoryLimit:
    """Child memory cgroups of ours, one per run (a cgroup that has held a
    run's tracee keeps some charges for a while after it is reaped, and a v1
    limit below usage is refused with EBUSY); every one removed by end_run()
    or close()."""

    def __init__(self, oom_killer: bool = False):
        why = unavailable()
        if why:
            raise TwinUnavailable(why)
        self.parent = _our_v1_memcg()
        self.oom_killer = oom_killer
        self.k: int | None = None
        self.lifted = True
        self.dir = ""
        self.serial = 0
        self.leftover: list[str] = []
        self.last_failcnt = 0       # the last run's memory.failcnt when it ended

    def _w(self, name: str, value) -> None:
        with open(os.path.join(self.dir, name), "w") as f:
            f.write(str(value))

    def _r(self, name: str) -> str:
        with open(os.path.join(self.dir, name)) as f:
            return f.read().strip()

    def failcnt(self) -> int:
        return int(self._r("memory.failcnt"))

    def apply(self, t: Tracee, layout: Layout, name: str) -> EventRecord:
        """Make t's next page charge fail: persistently ("oom") or for the next
        K charge attempts ("oom:K").  The state's pages are dropped first (the
        warm state is present: without a drop no charge would be attempted)."""
        self.k = None if name == "oom" else int(name.split(":", 1)[1])
        # Everything the call writes besides the state: its own COW copy now.
        span = layout.hbuffer - layout.buffer
        for addr, n in ((layout.buffer, span), (layout.hbuffer, span), (layout.rsp - STACK_RESIDENT, STACK_RESIDENT)):
            t.write(addr, t.read(addr, n))
        # Everything it reads or executes mapped now, page tables included: fork
        # copies no PTEs of file-backed or special mappings (our text, the vDSO,
        # the vvar), so a fork child refaults them, and under the limit the page
        # table allocation fails with VM_FAULT_OOM on a non-droppable VMA: a
        # memcg OOM wait in pagefault_out_of_memory, not the event under test
        # (measured: the int3 after the return hung there).
        t.read(TEXT_BASE, PAGE_SIZE)
        t.read(DATA_BASE, PAGE_SIZE)
        t.read(layout.vdso_base, layout.vdso_size)
        t.load64(layout.rng_data)               # VM_PFNMAP: only the tracee's own access maps it
        d = ev.drop(t, layout)
        self.end_run()
        self.serial += 1
        self.dir = os.path.join(self.parent, f"faultpath-twin-{os.getpid()}-{self.serial}")
        os.mkdir(self.dir)
        self._w("memory.oom_control", 0 if self.oom_killer else 1)
        self._w("cgroup.procs", t.pid)
        try:
            self._w("memory.limit_in_bytes", 0)
        except OSError as e:
            return EventRecord(name, False, f"memcg limit 0 refused ({e.strerror}; usage "
                               f"{self._r('memory.usage_in_bytes')})", d.state)
        self.lifted = False
        return EventRecord(name, d.applied, f"{d.detail}; memcg limit 0 "
                           f"({'OOM killer on' if self.oom_killer else 'oom_kill_disable'}"
                           f"{'' if self.k is None else f', lifted after {self.k} failed charges'})", d.state)

    @property
    def pace(self) -> float | None:
        """The tracer's poll interval while an oom:K limit is on (None: the default)."""
        return POLL_QUANTUM if not self.lifted and self.k is not None else None

    def poll(self) -> bool:
        """Called while the tracee runs: oom:K lifts the limit after K failed
        charges; under a persistent limit, True (stop waiting: a livelock) once
        LIVELOCK_CHARGES charges failed."""
        if self.lifted:
            return False
        if self.k is not None:
            if self.failcnt() > self.k * FAILCNT_PER_CHARGE:
                self.lift()
            return False
        return self.failcnt() >= LIVELOCK_CHARGES * FAILCNT_PER_CHARGE

    def failed_charges(self, failcnt: int) -> int:
        """Page charges that failed, from memory.failcnt: whole attempts (one the
        lift interrupted succeeded on its last margin check; a call that ended
        did so with every attempt before it finished)."""
        return failcnt // FAILCNT_PER_CHARGE

    def lift(self) -> None:
        """Memory is back (the run's further calls, a livelock's way out)."""
        if not self.lifted:
            self._w("memory.limit_in_bytes", -1)
            self.lifted = True

    def release(self, t: Tracee | None) -> None:
        self.lift()

    def end_run(self) -> None:
        """Remove the run's cgroup (its tracees are dead and reaped by now)."""
        self.lift()
        if self.dir:
            self.last_failcnt = self.failcnt()
            self.leftover.append(self.dir)
            self.dir = ""
        still = []
        for d in self.leftover:
            try:
                os.rmdir(d)
            except OSError:
                still.append(d)
        self.leftover = still

    def diagnose(self, t: Tracee, layout: Layout) -> tuple[str, int]:
        """Where a tracee that made no stop is spinning.  SIGSTOP is delivered on
        the way back to user mode, so a stop shows the refaulting instruction;
        no stop means the spin is inside the kernel (a syscall's copy).
        Returns (what, user rip or 0)."""
        fc = self.failcnt()
        os.kill(t.pid, signal.SIGSTOP)          # the tracee: ours, by pid (a fork of our parked parent)
        deadline = time.monotonic() + STOP_WAIT
        try:
            status = t._wait(deadline)
        except TwinError:
            return (f"no stop within {STOP_WAIT}s of SIGSTOP: in the kernel (memory.failcnt {fc}; "
                    f"{_kernel_where(t.pid)})"), 0
        if not os.WIFSTOPPED(status):
            return f"ended while diagnosed (status {status:#x})", 0
        rip = t.regs().rip
        where = f"__vdso_getrandom+{rip - layout.func:#x}" if layout.vdso_base <= rip < layout.func + 0x1000 \
            else f"{rip:#x}"
        return f"user-mode refault at {where} (memory.failcnt {fc} after the time bound)", rip

    def close(self) -> None:
        self.end_run()
        for _ in range(50):
            if not self.leftover:
                return
            time.sleep(0.02)
            self.end_run()
