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
limit once memory.failcnt reaches K (charge failures; each refault is one).
"""
from __future__ import annotations

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

    def poll(self) -> None:
        """Called while the tracee runs: oom:K lifts the limit after K failures."""
        if not self.lifted and self.k is not None and self.failcnt() >= self.k:
            self.lift()

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
        os.kill(t.pid, signal.SIGSTOP)
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
