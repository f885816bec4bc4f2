"""One emulated Linux process running a real program (task_struct with its
mm, files, signal handlers, credentials and exit state).

A Process is a Machine (its own Unicorn CPU, mm and trace) whose code is a
whole program loaded by emulator/binfmt_elf.py, and whose syscalls go to
the process table (emulator/syscall_64.py) instead of the vDSO-call
harness's.  It runs as one long "call" of the run loop (emulator/entry.py):
from the loader's entry point until exit_group, a fatal signal or the
instruction budget.  emulator/sched.py runs the processes of one System in
turn; a process gives the CPU up only when it sleeps (a read of an empty
pipe, wait4) or ends.

Tools look inside through a small API, the one `sweep --exec` uses:
  watch(addr, fn)       fn(process) each time execution reaches addr, at an
                        exact instruction boundary (before addr runs); an
                        instruction that faults and runs again is one arrival;
  at_index(n, fn)       fn(process) when instruction n has retired;
  arrive()              report a watched arrival at the current instruction
                        now (after an at_index stop there, or a restore);
  syscall_hooks         fn(process, rec) at each syscall's entry;
  observers             see syscalls, signals and exits as they happen;
  snapshot()/restore()  come back to a boundary any number of times (the
                        whole machine: System.snapshot/restore in sched.py).
A callback may stop the process (state = sched.STOPPED): it then runs no
more until the tool makes it RUNNING again.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Callable

from unicorn import x86_const as X

from emulator import entry
from emulator.cpuid import TSC_AT_EXEC, CpuHooks, emulated_model
from emulator.errors import EmulationError
from emulator.fdtable import FdTable
from emulator.machine import Machine
from emulator.records import CallContext, CallResult
from emulator.sigframe import FxState, Siginfo
from emulator.signal import (SI_KERNEL, SIGCHLD, SIGPIPE, CLD_EXITED, CLD_KILLED, KSignal, SignalState,
                             deliver_signals, force_sig as queue_forced, send_signal, sigframe_size, signame)
from emulator.syscall_abi import EINTR, WaitQueue
from emulator.sched import DEAD, RUNNING, SLEEPING, ZOMBIE
from emulator.task import Task, TaskSnapshot
from emulator.usercopy import copy_from_user, copy_to_user
from emulator.vfs import ReadPolicy

if TYPE_CHECKING:
    from emulator.fdtable import FilesSnapshot
    from emulator.kernel import Kernel
    from emulator.records import SyscallRecord
    from emulator.sched import System
    from emulator.syscall_abi import SyscallTable
    from emulator.traps import SignalInfo
    from mm.mm_struct import MM

MAX_PROCESSES = 64
# pt_regs order of the general registers we save and restore.
_GPR = {"r8": X.UC_X86_REG_R8, "r9": X.UC_X86_REG_R9, "r10": X.UC_X86_REG_R10, "r11": X.UC_X86_REG_R11,
        "r12": X.UC_X86_REG_R12, "r13": X.UC_X86_REG_R13, "r14": X.UC_X86_REG_R14, "r15": X.UC_X86_REG_R15,
        "rdi": X.UC_X86_REG_RDI, "rsi": X.UC_X86_REG_RSI, "rbp": X.UC_X86_REG_RBP, "rbx": X.UC_X86_REG_RBX,
        "rdx": X.UC_X86_REG_RDX, "rax": X.UC_X86_REG_RAX, "rcx": X.UC_X86_REG_RCX, "rsp": X.UC_X86_REG_RSP}
_FP_REGS = [getattr(X, f"UC_X86_REG_FP{i}") for i in range(8)]
_XMM = [getattr(X, f"UC_X86_REG_XMM{i}") for i in range(16)]


@dataclass
class Cred:
    uid: int = field(default_factory=os.getuid)
    gid: int = field(default_factory=os.getgid)


@dataclass
class Heap:
    """mm->start_brk and mm->brk."""
    start_brk: int = 0
    brk: int = 0


@dataclass
class RseqArea:
    addr: int = 0
    length: int = 0
    sig: int = 0


@dataclass
class ExitState:
    """How the process ended, as wait4 reports it."""
    code: int | None = None       # exit_group(code)
    signal: int | None = None     # killed by this signal
    outcome: str = ""             # exit | signal | killed | budget | livelock | deadlock
    detail: str = ""

    @property
    def wstatus(self) -> int:
        if self.signal is not None:
            return self.signal & 0x7F
        return ((self.code or 0) & 0xFF) << 8


# Plain attributes a snapshot keeps as they are (immutable values, or objects
# only replaced, never changed in place).
_SNAPSHOT_VALUES = ("cwd", "cred", "clear_child_tid", "robust_list", "exe", "argv", "arg_start", "arg_end",
                    "state", "sleep_reason", "exit_signal", "last_forced", "interrupted_syscall", "final_maps",
                    "final_smaps", "_timed_seq", "_hit", "_last_arrival", "killed")


@dataclass
class ProcessSnapshot:
    """Process.snapshot(): what a process needs to come back (task is None
    when it had already exited: nothing of it runs again)."""
    task: TaskSnapshot | None
    ctx: CallContext
    files: "FilesSnapshot"
    sig: SignalState
    heap: Heap
    rseq: RseqArea
    exit: ExitState
    parent: "Process | None"
    children_procs: list
    wait_sleepers: list
    rlimits: dict
    refusals: list
    unimplemented: dict
    timed: list
    values: dict


class Process(Machine):
    """One emulated process (see the module's doc)."""

    def __init__(self, kernel: "Kernel", system: "System", sys_call_table: "SyscallTable",
                 mm: "MM | None" = None, *, pid: int, name: str, droppable_oom: str = "skip",
                 livelock_limit: int | None = None, budget: int = 0):
        kw = {} if livelock_limit is None else {"livelock_limit": livelock_limit}
        super().__init__(kernel, mm, droppable_oom=droppable_oom, name=name, _stack=False, **kw)
        self.sys_call_table = sys_call_table        # emulator/syscall_64.py's, from execve
        self.system = system
        self.pid = pid
        self.parent: Process | None = None
        self.children_procs: list[Process] = []
        self.files = FdTable()
        self.cwd = os.getcwd()
        self.read_policy = ReadPolicy()
        self.cred = Cred()
        self.heap = Heap()
        self.sig = SignalState()
        self.clear_child_tid = 0
        self.robust_list = (0, 0)
        self.rseq = RseqArea()
        self.exe = ""
        self.argv: list[bytes] = []
        self.arg_start = self.arg_end = 0
        self.state = RUNNING
        self.sleep_reason = ""
        self.exit = ExitState()
        self.exit_signal = SIGCHLD               # what the parent gets when this process ends
        self.rlimits: dict[int, tuple[int, int]] = {}
        self.refusals: list[tuple[str, str, int]] = []      # (syscall, why, errno) of refused requests
        self.unimplemented: dict[str, int] = {}             # syscall -> calls answered -ENOSYS
        self.image = None                                   # binfmt_elf.ExecImage of the program
        self.last_forced: tuple | None = None
        self.interrupted_syscall = False    # slept in a syscall: a signal may interrupt it
        self.wait_chldexit = WaitQueue("wait_chldexit")
        self.final_maps: list[dict] = []
        self.final_smaps = ""
        self.cpu_model = emulated_model()
        self.cpu_hooks = CpuHooks(self, self.cpu_model, self._tsc)
        self.budget = budget
        self.ctx = CallContext(result=CallResult(size=0, process=name), rip=0, budget=budget)
        # Tool API (see the module's doc).
        self.observers: list = []
        self.syscall_hooks: list[Callable[["Process", "SyscallRecord"], None]] = []
        self._watches: dict[int, list[Callable[["Process"], None]]] = {}
        self._watch_handles: dict[int, int] = {}
        self._timed: list[tuple[int, int, Callable[["Process"], None]]] = []
        self._timed_seq = 0
        self._hit: int | None = None
        self._last_arrival: tuple[int, int] | None = None   # (address, index) of the last watch reported
        self._resume_rip: int | None = None       # where the run loop last resumed
        self._arrived_here = False                # ... and whether that was reported as an arrival
        self._block_costs: dict[int, float] = {}
        self._resume_fpu_init()

    # ------------------------------------------------------------------ identity
    @property
    def tid(self) -> int:
        return self.pid

    @property
    def ppid(self) -> int:
        return self.parent.pid if self.parent is not None else self.system.reaper_pid

    def __repr__(self) -> str:
        return f"<Process {self.pid} {self.exe or self.name} {self.state}>"

    # ------------------------------------------------------------------ CPU state
    def _resume_fpu_init(self) -> None:
        """The FPU as exec (fpu__clear_user_states) leaves it: x87 control word
        0x37f, all registers empty, MXCSR 0x1f80 (Unicorn starts with 0s)."""
        self.load_fpu_state(FxState())

    def _tsc(self) -> int:
        """The time-stamp counter an rdtsc reads: the emulated cycles so far
        (this process's, plus the blocks of the current run)."""
        extra = 0.0
        costs = self._block_costs
        for e in self.recorder.entries():
            c = costs.get(e)
            if c is None:
                c = costs[e] = self.blocks.get(e).prefix_cost[-1]
            extra += c
        return TSC_AT_EXEC + int(self.ctx.cycles + extra)

    def minsigstksz(self) -> int:
        return sigframe_size()

    def user_regs(self, ctx: CallContext) -> dict[str, int]:
        """The interrupted user context, as a signal frame saves it."""
        regs = {n: self.uc.reg_read(r) for n, r in _GPR.items()}
        regs["rip"] = ctx.rip
        regs["eflags"] = self.uc.reg_read(X.UC_X86_REG_RFLAGS)
        return regs

    def load_user_regs(self, ctx: CallContext, regs: dict[str, int]) -> None:
        for n, r in _GPR.items():
            self.uc.reg_write(r, regs[n] & 0xFFFF_FFFF_FFFF_FFFF)
        self.uc.reg_write(X.UC_X86_REG_RFLAGS, regs["eflags"] | 0x2)
        self.uc.reg_write(X.UC_X86_REG_RIP, regs["rip"])
        ctx.rip = regs["rip"]

    def fpu_state(self) -> FxState:
        """FXSAVE's view of the x87/SSE state."""
        uc = self.uc
        fsw = uc.reg_read(X.UC_X86_REG_FPSW)
        top = (fsw >> 11) & 7
        ftw_full = uc.reg_read(X.UC_X86_REG_FPTAG)
        ftw = 0
        for i in range(8):
            if (ftw_full >> (2 * i)) & 3 != 3:
                ftw |= 1 << i
        st = []
        for i in range(8):
            mant, exp = uc.reg_read(_FP_REGS[(top + i) & 7])
            st.append(mant.to_bytes(8, "little") + (exp & 0xFFFF).to_bytes(2, "little"))
        return FxState(fcw=uc.reg_read(X.UC_X86_REG_FPCW), fsw=fsw, ftw=ftw, fop=uc.reg_read(X.UC_X86_REG_FOP),
                       fip=uc.reg_read(X.UC_X86_REG_FIP), fdp=uc.reg_read(X.UC_X86_REG_FDP),
                       mxcsr=uc.reg_read(X.UC_X86_REG_MXCSR), st=st, xmm=[uc.reg_read(r) for r in _XMM])

    def load_fpu_state(self, fx: FxState) -> None:
        uc = self.uc
        uc.reg_write(X.UC_X86_REG_FPCW, fx.fcw)
        uc.reg_write(X.UC_X86_REG_FPSW, fx.fsw)
        top = (fx.fsw >> 11) & 7
        full = 0
        for i in range(8):
            full |= (0 if fx.ftw >> i & 1 else 3) << (2 * i)
        uc.reg_write(X.UC_X86_REG_FPTAG, full)
        for i, raw in enumerate(fx.st):
            uc.reg_write(_FP_REGS[(top + i) & 7], (int.from_bytes(raw[:8], "little"),
                                                   int.from_bytes(raw[8:10], "little")))
        uc.reg_write(X.UC_X86_REG_MXCSR, fx.mxcsr & 0xFFFF)
        for r, v in zip(_XMM, fx.xmm):
            uc.reg_write(r, v)

    # ------------------------------------------------------------------ user memory for the kernel side
    def put_user_bytes(self, ctx: CallContext, addr: int, data: bytes, what: str) -> bool:
        return copy_to_user(self, ctx, addr, data, ctx.rip, what).copied == len(data)

    def get_user_bytes(self, addr: int, n: int) -> bytes | None:
        b = copy_from_user(self, addr, n)
        return b if len(b) == n else None

    # ------------------------------------------------------------------ signals
    def enter_handler(self, ctx: CallContext, handler: int, frame: int, signo: int, info: int, uc_addr: int,
                      rflags: int) -> None:
        """Registers for the handler (rdi = signo, rsi = &info, rdx = &uc,
        rax = 0, rsp = the frame) and a fresh FPU state, as the kernel
        leaves them after setup_rt_frame."""
        uc = self.uc
        uc.reg_write(X.UC_X86_REG_RDI, signo)
        uc.reg_write(X.UC_X86_REG_RSI, info)
        uc.reg_write(X.UC_X86_REG_RDX, uc_addr)
        uc.reg_write(X.UC_X86_REG_RAX, 0)
        uc.reg_write(X.UC_X86_REG_RSP, frame)
        uc.reg_write(X.UC_X86_REG_RFLAGS, rflags | 0x2)
        uc.reg_write(X.UC_X86_REG_RIP, handler)
        self.load_fpu_state(FxState())
        ctx.rip = handler

    def force_sig(self, ctx: CallContext, info: "SignalInfo", detail: str) -> None:
        """A synchronous signal from a fault or a CPU exception (the run loop
        calls this): delivered at once, to the program's handler if it has
        one, otherwise the process dies of it."""
        k = KSignal(info.signo, Siginfo(info.signo, info.si_code, addr=info.si_addr), trapno=info.trapno or 0,
                    cr2=info.si_addr if info.trapno == 14 else 0, why=detail)
        if info.trapno == 14 and ctx.result.faults:
            k.err = ctx.result.faults[-1].error_code
        self.last_forced = (info, detail)
        queue_forced(self, k)
        deliver_signals(self, ctx)

    def die_of_signal(self, k: KSignal) -> None:
        """The default action of a fatal signal: the process ends (no core file)."""
        ctx = self.ctx
        info = self.last_forced
        if info is not None and info[0].signo == k.signo:
            Machine.force_sig(self, ctx, info[0], info[1])
        else:
            self.finish(ctx, "signal", f"killed by {signame(k.signo)}" + (f" ({k.why})" if k.why else ""))
        self.exit.signal = k.signo
        self.exit.outcome = "signal"
        self.exit.detail = ctx.result.outcome_detail

    def note_signal(self, k: KSignal, what: str) -> None:
        for o in self.observers:
            o.on_signal(self, k, what)

    def signal_wake_up(self) -> None:
        if self.state == SLEEPING:
            self.wake_up(None)

    def pipe_broken(self) -> None:
        send_signal(self, KSignal(SIGPIPE, Siginfo(SIGPIPE, SI_KERNEL)))

    def send(self, signo: int, code: int, sender: "Process | None") -> None:
        """kill/tgkill: a signal with si_pid and si_uid of the sender."""
        pid = sender.pid if sender is not None else 0
        uid = sender.cred.uid if sender is not None else 0
        send_signal(self, KSignal(signo, Siginfo(signo, code, pid=pid, uid=uid)))

    def exit_to_user_mode(self, ctx: CallContext) -> None:
        """On every return to user mode (after a syscall, when scheduled in):
        deliver what is pending and unblocked.  A process a signal woke from a
        sleeping syscall is at that `syscall` again: it runs again after the
        handler (SA_RESTART, or no handler), or it returns -EINTR."""
        interrupted, self.interrupted_syscall = self.interrupted_syscall, False
        if not self.sig.deliverable() or ctx.done:
            return
        if interrupted and not self.sig.restarts(self.sig.peek()):
            rip = ctx.rip + 2
            self.uc.reg_write(X.UC_X86_REG_RAX, -EINTR & 0xFFFF_FFFF_FFFF_FFFF)
            self.uc.reg_write(X.UC_X86_REG_RCX, rip)
            self.uc.reg_write(X.UC_X86_REG_R11, self.uc.reg_read(X.UC_X86_REG_RFLAGS))
            self.uc.reg_write(X.UC_X86_REG_RIP, rip)
            ctx.rip = rip
            ctx.index += 1                  # the syscall retired after all
        deliver_signals(self, ctx)

    # ------------------------------------------------------------------ sleeping and waking
    def sleep(self, queue: WaitQueue, why: str) -> None:
        self.state = SLEEPING
        self.sleep_reason = why
        self.interrupted_syscall = True     # until it runs again

    def wake_up(self, queue: WaitQueue | None) -> None:
        if self.state == SLEEPING:
            self.state = RUNNING
            self.sleep_reason = ""
            self.system.enqueue(self)

    # ------------------------------------------------------------------ the tool API
    def watch(self, addr: int, fn: Callable[["Process"], None]) -> None:
        """Call fn(self) whenever execution reaches addr, before the
        instruction there runs, with ctx.index exact.  A ranged code hook
        (Task.hook_code: it saves RFLAGS for the lazy-flags pitfall)."""
        self._watches.setdefault(addr, []).append(fn)
        if addr not in self._watch_handles:
            self._watch_handles[addr] = self.hook_code(addr, self._on_watch)

    def unwatch(self, addr: int) -> None:
        self._watches.pop(addr, None)
        h = self._watch_handles.pop(addr, None)
        if h is not None:
            self.unhook_code(h)

    def at_index(self, n: int, fn: Callable[["Process"], None]) -> None:
        """Call fn(self) when the process has retired n instructions (now, if it has)."""
        self._timed_seq += 1
        self._timed.append((n, self._timed_seq, fn))
        self._timed.sort()

    def arrive(self) -> None:
        """Report the arrival at the current instruction now, if it is
        watched and was not reported at this index (a tool that stopped here
        by at_index, or restored a snapshot taken so, wants it before it
        acts; otherwise it is reported as the process runs on)."""
        ctx = self.ctx
        if ctx.rip in self._watches and self._last_arrival != (ctx.rip, ctx.index):
            self._last_arrival = (ctx.rip, ctx.index)
            for fn in list(self._watches.get(ctx.rip, ())):
                fn(self)

    def _on_watch(self, task, address: int) -> None:
        if address == self._resume_rip and self._arrived_here and self.recorder.count <= 1:
            # The instruction we stopped before and reported, run now (also
            # when it faults and runs again: this run has entered no other
            # block).  Not a new arrival.  (ctx.index is not current inside
            # a run: the run loop counts the blocks at the stop.)
            return
        self._hit = address
        self.ctx.stop_requested = True
        self.uc.emu_stop()

    # ------------------------------------------------------------------ running
    def run_slice(self) -> None:
        """Run until the process sleeps or ends (emulator/sched.py calls this)."""
        ctx = self.ctx
        self.exit_to_user_mode(ctx)
        while not ctx.done and self.state == RUNNING:
            self._fire_timed()
            if ctx.done or self.state != RUNNING:
                break
            stop_at = self._timed[0][0] if self._timed else None
            self._resume_rip = ctx.rip
            self._arrived_here = self._last_arrival == (ctx.rip, ctx.index)
            entry.run(self, ctx, stop_at)
            if self.cpu_hooks.error is not None:
                err, self.cpu_hooks.error = self.cpu_hooks.error, None
                raise EmulationError(f"error in the CPUID/RDTSC hook: {type(err).__name__}: {err}") from err
            if ctx.stop_requested:
                ctx.stop_requested = False
                if self._hit is not None:
                    # The run loop retired only what ran before addr (a stop
                    # inside a block is accounted as partial): ctx.index is exact.
                    addr, self._hit = self._hit, None
                    self._last_arrival = (addr, ctx.index)
                    for fn in list(self._watches.get(addr, ())):
                        fn(self)
        if ctx.done and self.state == RUNNING:
            self.system.exit_process(self)

    def _fire_timed(self) -> None:
        while self._timed and self._timed[0][0] <= self.ctx.index:
            _, _, fn = self._timed.pop(0)
            fn(self)

    # ------------------------------------------------------------------ snapshots
    def snapshot(self, ctx: CallContext | None = None) -> "ProcessSnapshot":
        """Everything needed to come back here any number of times, cheaply:
        the task (mm copy-on-write, CPU, kernel), the process's own call
        context (ctx is ignored: a process has one), its descriptors and the
        open files' state, signals, heap, rseq, family, exit state and the
        tool API's timers.  Watches, syscall hooks and observers are the
        tools' own and are left as they are; the other processes, the
        console and the page cache are System.snapshot's."""
        alive = not getattr(self.mm, "dead", False)
        return ProcessSnapshot(
            task=Task.snapshot(self, None) if alive else None, ctx=self.ctx.copy(), files=self.files.snapshot(),
            sig=self.sig.copy(), heap=replace(self.heap), rseq=replace(self.rseq), exit=replace(self.exit),
            parent=self.parent, children_procs=list(self.children_procs),
            wait_sleepers=list(self.wait_chldexit.sleepers), rlimits=dict(self.rlimits),
            refusals=list(self.refusals), unimplemented=dict(self.unimplemented), timed=list(self._timed),
            values={k: getattr(self, k) for k in _SNAPSHOT_VALUES})

    def restore(self, snap: "ProcessSnapshot") -> CallContext:
        """Back to a snapshot (any number of times); a process that exited
        since comes back to life.  Processes it forked since are forgotten by
        the System.  Returns the process's call context."""
        if snap.task is not None:
            later = self.children[snap.task.nchildren:]
            if getattr(self.mm, "dead", False):
                self._revive()
            Task.restore(self, snap.task)       # tears down the mm of every later child
            for c in later:
                if isinstance(c, Process):
                    self.system.forget(c)
        self.ctx = snap.ctx.copy()
        self.files.restore(snap.files)
        self.sig = snap.sig.copy()
        self.heap, self.rseq, self.exit = replace(snap.heap), replace(snap.rseq), replace(snap.exit)
        self.parent = snap.parent
        self.children_procs = list(snap.children_procs)
        self.wait_chldexit.sleepers = list(snap.wait_sleepers)
        self.rlimits, self.refusals = dict(snap.rlimits), list(snap.refusals)
        self.unimplemented = dict(snap.unimplemented)
        self._timed = list(snap.timed)
        for k, v in snap.values.items():
            setattr(self, k, v)
        return self.ctx

    def _revive(self) -> None:
        """Undo what exit did to the task (exit_mmap, the block hook's
        removal), so that Task.restore can map the snapshot's pages again."""
        self.mm.dead = False
        self.mm.phys.register_mm(self.mm)
        self.recorder.reopen()

    # ------------------------------------------------------------------ fork and exit
    def _spawn(self, mm: "MM", name: str) -> "Process":
        pid = self.system.alloc_pid()
        return Process(self.kernel, self.system, self.sys_call_table, mm, pid=pid, name=f"{self.exe_name}[{pid}]",
                       droppable_oom=self.mm.droppable_oom, livelock_limit=self.livelock_limit,
                       budget=self.budget)

    @property
    def exe_name(self) -> str:
        return os.path.basename(self.exe) or "process"

    def copy_process(self, ctx: CallContext) -> "Process":
        """kernel_clone()'s copy_process for a fork: dup_mm (copy-on-write;
        VM_WIPEONFORK mappings empty in the child), the CPU, a copy of the
        descriptor table, the signal handlers and mask, the credentials."""
        if len(self.system.procs) >= MAX_PROCESSES:
            raise EmulationError(f"more than {MAX_PROCESSES} processes")
        child: Process = self.fork(name="child")
        child.uc.reg_write(X.UC_X86_REG_MXCSR, self.uc.reg_read(X.UC_X86_REG_MXCSR))
        child.load_fpu_state(self.fpu_state())
        child.parent = self
        self.children_procs.append(child)
        child.files = self.files.dup_fd()
        child.sig = self.sig.fork_copy()
        child.cwd, child.read_policy, child.cred = self.cwd, self.read_policy, self.cred
        child.heap = Heap(self.heap.start_brk, self.heap.brk)
        child.exe, child.argv = self.exe, list(self.argv)
        child.arg_start, child.arg_end = self.arg_start, self.arg_end
        child.observers = list(self.observers)
        child._last_arrival = self._last_arrival    # a fork at a watch: the child's resuming there is no arrival
        child.ctx = CallContext(result=CallResult(size=0, process=child.name), rip=ctx.rip, budget=self.budget,
                                index=ctx.index, rep_open=ctx.rep_open)
        child.ctx.cycles = ctx.cycles
        child.sync()
        self.system.add(child)
        for o in list(self.observers):
            o.on_fork(self, child)
        return child

    def snapshot_maps(self) -> None:
        """What /proc/PID/maps said at the end (kept for reports: exit tears the mm down)."""
        from mm.smaps import vm_flags_str
        self.final_maps = [{"start": v.start, "end": v.end, "flags": vm_flags_str(v.vm_flags),
                            "file": v.vm_file.name if v.vm_file is not None else (v.name or "")}
                           for v in self.mm.vmas]
        self.final_smaps = self.mm.smaps()

    def release_mm(self) -> None:
        """exit_mm(): the address space goes (its frames go back to the pool)."""
        if not getattr(self.mm, "dead", False):
            self.snapshot_maps()
            self.mm.exit_mmap()

    def notify_parent(self) -> None:
        """exit_notify(): SIGCHLD to the parent, wake its wait4."""
        parent = self.parent
        if parent is None or parent.state in (ZOMBIE, DEAD):
            self.state = DEAD               # nobody will wait: reaped at once
            return
        code = CLD_KILLED if self.exit.signal is not None else CLD_EXITED
        status = self.exit.signal if self.exit.signal is not None else (self.exit.code or 0)
        send_signal(parent, KSignal(SIGCHLD, Siginfo(SIGCHLD, code, pid=self.pid, uid=self.cred.uid,
                                                     status=status)))
        parent.wait_chldexit.wake_up()
