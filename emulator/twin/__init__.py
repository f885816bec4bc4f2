"""The native twin: a getrandom call on the running kernel, stopped at any
instruction boundary by ptrace, an event applied, and everything it then did
recorded -- the native counterpart of the emulator's boundary sweep.

Modules (one job each):

  ptrace.py        ctypes layer: ptrace requests, user_regs_struct,
                   process_vm_readv/writev, pidfd_open, process_madvise
  tracee_image.py  the tracee: keystone-assembled call server in a minimal
                   static ELF (memfd), no libc
  tracee.py        one traced process: step, run to int3 recording syscalls,
                   injected syscall / load / fork, kill and reap
  process.py       TwinConfig; the parked parent (vDSO resolved in the
                   tracee, params queried, MAP_DROPPABLE state); calls
  walk.py          architectural single-stepping (rep iterations folded)
  events.py        drop, reseed, reenter, state copy into a fork child
  oom.py           a memory cgroup (v1) around one tracee: oom, oom:K
  engine.py        Twin: baseline, sweep over boundaries x events, run_at
  reentrancy.py    the twin of compare's drop+reenter finding
  measure.py       boundaries, time per boundary, paths (python -m ...)
  records.py       NativeCall, NativeRun, EventRecord, Baseline
  memory.py        the tracee's watched pages (the oracle's Memory discipline)
  judge.py         the sweep's oracle on native runs (ledger from the kernel's bytes)
  agreement.py     emulator vs kernel, run by run (faultpath sweep --native)
  native_report.py the agreement tables, disagreements and reproductions as text

Design choices (measured on this host, 2 vCPUs, Linux 6.18, as root):

* ptrace through our own ~150-line ctypes layer rather than python-ptrace
  0.9.9 (PyPI, last release 2024-03): the stop/resume cost is the kernel's
  (PTRACE_SINGLESTEP+waitpid+GETREGS in C: 54k/s pinned, 22k/s unpinned;
  ours 44k/s pinned, python-ptrace's binding 44k/s), and python-ptrace has
  no process_vm_readv/writev, pidfd_open or process_madvise wrappers nor
  PTRACE_O_EXITKILL, which the twin needs; its debugger layer's event model
  would sit between us and the fork/SIGCHLD stops we must handle exactly.
* Instruction counting is architectural: see walk.py (a rep string op traps
  once per iteration; measured: `rep stosb` with rcx=5 traps 5 times).
* Reaching boundary i: one walker single-steps the call once; at each
  boundary a fork is injected and the child (state pages copied back over
  the VM_WIPEONFORK wipe) is the process at i.  Cost per (boundary, event)
  0.7-2.3 ms (fork, event, run to the end, one further call, kill; the range
  is this shared machine's load) against 20-50 us per single step:
  re-stepping a prefix costs more than a fork beyond i ~ 30-100, and the
  whole sweep is O(n) steps instead of O(n^2).
* Pinning (Twin(cpu=...)) puts tracer and tracees on one CPU: on an idle
  machine fork+kill 150 vs 560 us, steps 54k/s vs 22k/s (C); on this shared,
  loaded machine unpinned was faster (1.0 vs 1.7 ms per run), so the default
  is unpinned.
"""
from emulator.twin.engine import EVENTS, Twin, parse_event, why_not
from emulator.twin.errors import TraceeTimeout, TwinError, TwinUnavailable
from emulator.twin.process import PLACEMENTS, TwinConfig, check_ptrace
from emulator.twin.records import Baseline, EventRecord, NativeCall, NativeRun
from emulator.twin.tracee import SyscallObs

__all__ = ["EVENTS", "PLACEMENTS", "Baseline", "EventRecord", "NativeCall", "NativeRun", "SyscallObs",
           "TraceeTimeout", "Twin", "TwinConfig", "TwinError", "TwinUnavailable", "check_ptrace", "parse_event",
           "why_not"]
