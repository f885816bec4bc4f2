"""The stepping engine: one stepped process and the ways to move it.

A Session is one process set up exactly like `faultpath run` (new_process,
calls 1..K-1 made normally) and stopped at instruction 0 of its last call.
It moves the call forward (stepi / next / continue / until / finish, with
breakpoints, watchpoints and fault stops) and backward (reverse-stepi,
reverse-nexti, reverse-continue), and changes it (registers, memory,
injections, policy, memory budget).  What a stop looks like is
emulator/debug/views.py's business, the command language
emulator/debug/commands.py's; the stepper REPL (emulator/cli/step.py) and
the GDB stub (emulator/debug/gdbstub.py) drive this same engine.

Fault stops.  The stepped call runs with ctx.stop_on_fault: the run loop
hands a user fault back *before* do_user_addr_fault runs.  The next `stepi`
carries the handling out and retires the instruction (a skip retires it as
a no-op; a mapped or retried fault re-executes it, which may fault again);
`fstep` carries it out once and reveals its trace events one stage at a
time.  A fault the kernel takes on a user address (copy_to_user in a
syscall) happens inside the syscall; with faultstop on, the call stops right
after a syscall in which the kernel faulted.

Code stops are ranged UC_HOOK_CODE hooks at the breakpoint addresses (and,
while a watchpoint is set or faultstop is on, at the image's `syscall`
instructions); watchpoints are ranged memory hooks (emulator/debug/watch.py).
No per-instruction hook is ever installed.

Going back (emulator/debug/timeline.py): snapshots every N instructions and
deterministic re-execution; reverse-continue re-runs each interval between
snapshots, newest first, collecting the events it would have stopped at,
and lands on the last one.
"""
from __future__ import annotations

import signal
import threading
import time
from dataclasses import dataclass, field

from emulator.debug.symbols import REG_ALIAS, Symbols
from emulator.debug.timeline import DEFAULT_EVERY, Pos, Timeline
from emulator.debug.watch import WatchHit, WatchSet
from emulator.errors import UsageError
from emulator.fault import predict, snapshot_cow
from emulator.inject import apply as inject_apply
from emulator.inject import parse_kind
from emulator.records import Injection, SyscallRecord
from emulator.run import MAX_PAGES, RunConfig, new_process, plan_calls
from emulator.trace import TraceEvent
from mm.flags import PAGE_SIZE
from vdso.insn import MAX_INSN_LEN, decode_one, reachable_insns

POLL_CHUNK = 1 << 16          # instructions between interrupt polls while running
INF = 1 << 62


@dataclass
class Stop:
    """Why a resume ended, and what happened on the way: the trace events of
    the resume in the order they happened (handled faults, syscalls with the
    kernel's own faults inside them, injections) and the syscall records
    they belong to."""
    reason: str                       # step | breakpoint | fault | watch | kernel-fault | done | interrupt
                                      # | history-begin
    events: list[TraceEvent] = field(default_factory=list)
    syscalls: list[SyscallRecord] = field(default_factory=list)
    breakpoint: int | None = None     # breakpoint number (user breakpoints only)
    watch: WatchHit | None = None
    reverse: bool = False


@dataclass
class _Event:
    """Something a forward run would have stopped at, found while re-running."""
    pos: Pos
    kind: str                         # breakpoint | fault | watch | temp
    hit: WatchHit | None = None
    addr: int = 0
    rsp: int = 0


class Session:
    """One stepped process."""

    def __init__(self, cfg: RunConfig, snapshot_every: int = DEFAULT_EVERY):
        cfg.validate()
        if snapshot_every < 1:
            raise UsageError(f"--snapshot-every {snapshot_every}: must be positive")
        self.cfg = cfg
        scen, calls = plan_calls(cfg)
        self.scenario = scen
        self.kernel, self.m, self.caller = new_process(cfg)
        self.previous = [self.caller.getrandom(c.size, cfg.flags, injections=c.injections, budget=cfg.budget)
                         for c in calls[:-1]]
        self.call_no = len(calls)
        self.size = calls[-1].size
        self.func = self.caller.func
        self.ctx = self.m.prepare_call(self.func, self.caller.args(self.size, cfg.flags), size=self.size,
                                       injections=calls[-1].injections, budget=cfg.budget)
        self.ctx.stop_on_fault = True     # always: faultstop off is handled by the session
        self.m.trace.begin_call(self.ctx)
        self._faultstop = True
        self.symbols = Symbols(self.kernel.image, self.caller, self.func)
        self.breakpoints: dict[int, int] = {}    # number -> address
        self._next_bp = 1
        self._hooks: dict[int, int] = {}         # address -> unicorn hook handle (breakpoints, temp, syscalls)
        self._syscall_insns = self._find_syscalls()
        self._resume_rip = -1
        self._left_resume = False
        self._quiet = False                      # re-executing: code hooks do not stop
        self.hit: int | None = None              # address of the code hook that stopped the last run
        self._interrupt = False
        self.walk: dict | None = None            # fstep walk in progress
        self.last_fault: dict | None = None      # the last fault handled in this call
        self.watches = WatchSet(self.m)
        self.watches.on_hit = self._on_watch_hit
        self._update_syscall_hooks()              # faultstop on: stop after kernel-mode faults
        self.displays: list[str] = []
        self._fault_seq = 0                      # fault stops at the current index since arrival
        self._seq_index = 0
        self.start_events = self._settle()
        self.timeline = Timeline(self.m, snapshot_every)
        self.timeline.take(self.position(), self.ctx)

    def close(self) -> None:
        """Release the process (Unicorn, the mm's frames, snapshots)."""
        self.timeline.snaps = []
        self.timeline.origin = None
        for child in self.m.children:
            child.close()
        self.m.close()

    # ================================================================= naming
    def where(self, addr: int) -> str:
        return self.symbols.where(addr)

    def eval_addr(self, expr: str) -> int:
        return self.symbols.eval_addr(expr, self.m.reg)

    def position(self) -> Pos:
        return Pos(self.ctx.index, self._fault_seq if self.pending() is not None else 0)

    # ================================================================= registers / memory
    def set_register(self, name: str, value: int) -> None:
        """A register write from the user (gdb P/G): rip also moves the call."""
        name = REG_ALIAS.get(name.lower(), name.lower())
        if self.m.reg(name) == value:
            return
        self.m.set_reg(name, value)
        if name == "rip":
            if value != self.ctx.rip:
                self.ctx.pending_fault = None     # the faulting instruction is abandoned
                self.end_walk()
            self.ctx.rip = value
        self._changed_by_hand(f"{name} was set by hand")

    def readable(self, addr: int) -> bool:
        return self.m.mm.find_vma(addr) is not None or self.m.special_at(addr) is not None

    def read_memory(self, addr: int, n: int) -> bytes:
        """Bytes at addr without faulting; stops at the first address outside any
        mapping (empty if addr itself is unmapped)."""
        out = bytearray()
        while n > 0:
            if not self.readable(addr):
                break
            chunk = min(n, PAGE_SIZE - (addr & (PAGE_SIZE - 1)))
            out += self.m.read(addr, chunk)
            addr += chunk
            n -= chunk
        return bytes(out)

    def write_memory(self, addr: int, data: bytes) -> int:
        """A debugger's write: ptrace POKEDATA semantics (FOLL_FORCE, faults pages
        in, breaks COW).  The vDSO, vvar and sentinel pages are read-only."""
        if self.read_memory(addr, len(data)) == data:
            return len(data)              # gdb rewrites what it read (e.g. around breakpoints)
        done = 0
        while done < len(data):
            a = addr + done
            if self.m.special_at(a) is not None:
                break
            n = min(len(data) - done, PAGE_SIZE - (a & (PAGE_SIZE - 1)))
            w = self.m.mm.poke(a, data[done:done + n])
            self.m.sync()
            done += w
            if w < n:
                break
        if done:
            self._changed_by_hand(f"memory at {addr:#x} was written by hand")
        return done

    def insn_at(self, addr: int):
        return decode_one(self.read_memory(addr, MAX_INSN_LEN), addr)

    def _changed_by_hand(self, what: str) -> None:
        """History before a change by hand cannot be replayed (timeline.py)."""
        self.timeline.barrier(self.position(), self.ctx, what)

    # ================================================================= mm knobs
    def set_memory(self, pages: int) -> None:
        if not 1 <= pages <= MAX_PAGES:
            raise UsageError(f"memory {pages}: out of range (1..{MAX_PAGES} pages)")
        self.kernel.phys.memory_pages = pages
        self._changed_by_hand(f"the memory budget was set to {pages} pages")

    def set_policy(self, policy: str) -> None:
        if policy not in ("skip", "retry"):
            raise UsageError(f"policy {policy!r}: expected skip or retry")
        self.m.mm.droppable_oom = policy
        self._changed_by_hand(f"the policy was set to {policy}")

    def inject(self, arg: str) -> list:
        """Apply an injection now; returns its trace events."""
        kind = parse_kind(arg)
        ctx = self.ctx
        if ctx.done:
            raise UsageError("the call has ended")
        mark = len(self.m.trace.events)
        inject_apply(self.m, ctx, Injection(ctx.index, kind))
        self._changed_by_hand(f"`inject {kind}` was applied by hand")
        return [ev for ev in self.m.trace.events[mark:] if ev.kind == "inject"]

    # ================================================================= faults
    def pending(self):
        """(PendingFault, rip) when stopped at a fault not handled yet."""
        return self.ctx.pending_fault

    def prediction(self) -> str:
        pf = self.pending()
        return predict(self.m, pf[0].address, pf[0].access) if pf else ""

    def handle_pending(self) -> dict:
        """Carry out the pending fault; returns what happened (record, events)."""
        ctx = self.ctx
        pf, rip = ctx.pending_fault
        trace = self.m.trace
        mark = len(trace.events)
        nfaults = len(ctx.result.faults)
        repeats = ctx.result.faults[-1].repeats if ctx.result.faults else 0
        self.m.handle_pending_fault(ctx)
        self._sync_rip()
        events = list(trace.events[mark:])
        rec = ctx.result.faults[-1]
        folded = len(ctx.result.faults) == nfaults and rec.repeats > repeats
        info = {"rec": rec, "events": events, "pf": pf, "rip": rip, "folded": folded,
                "cycles": sum(e.cycles for e in events), "index": rec.index,
                "decision": rec.decision, "skip_len": rec.skip_len, "new_rip": rec.new_rip}
        self.last_fault = info
        return info

    def start_walk(self) -> dict:
        """fstep: handle the pending fault now, reveal its stages one by one."""
        if self.pending() is None:
            raise UsageError("no fault pending (stepi or continue until a fault stops the call)")
        info = self.handle_pending()
        info["pos"] = 0
        self.walk = info
        return info

    def end_walk(self) -> None:
        if self.walk is not None:
            self.walk["pos"] = len(self.walk["events"])
            self.walk = None

    # ================================================================= breakpoints
    def add_breakpoint(self, arg: str) -> tuple[int, int]:
        addr = self.eval_addr(arg)
        for num, a in self.breakpoints.items():
            if a == addr:
                return num, addr
        num = self._next_bp
        self._next_bp += 1
        self.breakpoints[num] = addr
        self._hook(addr)
        return num, addr

    def remove_breakpoint_at(self, addr: int) -> bool:
        for num, a in list(self.breakpoints.items()):
            if a == addr:
                del self.breakpoints[num]
                self._unhook(addr)
                return True
        return False

    def delete_breakpoint(self, num: int) -> None:
        if num not in self.breakpoints:
            raise UsageError(f"no breakpoint number {num}")
        self.remove_breakpoint_at(self.breakpoints[num])

    def bp_number(self, addr: int | None) -> int | None:
        for num, a in self.breakpoints.items():
            if a == addr:
                return num
        return None

    def _hook(self, addr: int) -> None:
        """A code stop at addr (Task.hook_code: the core keeps the lazy flags right)."""
        if addr not in self._hooks:
            self._hooks[addr] = self.m.hook_code(addr, self._on_code)

    def _unhook(self, addr: int) -> None:
        if addr in self.breakpoints.values() or (addr in self._syscall_insns and self._want_syscall_stops()):
            return
        h = self._hooks.pop(addr, None)
        if h is not None:
            self.m.unhook_code(h)

    def _on_code(self, task, address) -> None:
        if self._quiet:
            return
        if not self._left_resume and address == self._resume_rip:
            self._left_resume = True     # resuming from this address: let it run
            return
        if self.ctx.pending_fault is None:
            self.ctx.stop_requested = True
            self.hit = address
            task.uc.emu_stop()

    # ================================================================= watchpoints
    def _on_watch_hit(self, hit) -> bool:
        """From inside the memory hook: make the run loop return (it restarts
        the CPU otherwise)."""
        self.ctx.stop_requested = True
        return True

    def add_watch(self, addr: int, length: int, kind: str = "write", origin: str = "user", expr: str = ""):
        if not 1 <= length <= 4096:
            raise UsageError(f"watch: length {length} out of range (1..4096)")
        if kind not in ("write", "read", "access"):
            raise UsageError(f"watch: kind {kind!r} (write, read or access)")
        w = self.watches.find(addr, length, kind)
        if w is None:
            w = self.watches.add(self._next_bp, addr, length, kind, origin, expr)
            self._next_bp += 1
            self._update_syscall_hooks()
        return w

    def remove_watch_at(self, addr: int, length: int, kind: str) -> bool:
        w = self.watches.find(addr, length, kind)
        if w is None:
            return False
        self.watches.remove(w)
        self._update_syscall_hooks()
        return True

    def delete_watch(self, num: int) -> None:
        w = self.watches.watches.get(num)
        if w is None:
            raise UsageError(f"no watchpoint number {num}")
        self.watches.remove(w)
        self._update_syscall_hooks()

    def forget_debugger_points(self) -> None:
        """gdb went away: its breakpoints and watchpoints go with it."""
        for a in list(self.breakpoints.values()):
            self.remove_breakpoint_at(a)
        for w in list(self.watches.watches.values()):
            if w.origin == "gdb":
                self.watches.remove(w)
        self._update_syscall_hooks()

    @property
    def faultstop(self) -> bool:
        """Stop at faults: a user fault before it is handled, and right after a
        syscall in which the kernel faulted on a user address."""
        return self._faultstop

    @faultstop.setter
    def faultstop(self, on: bool) -> None:
        self._faultstop = on
        if hasattr(self, "watches"):
            self._update_syscall_hooks()

    def _want_syscall_stops(self) -> bool:
        return bool(self.watches.watches) or self._faultstop

    def _find_syscalls(self) -> set[int]:
        img = self.kernel.image
        try:
            insns = reachable_insns(img.text, img.base, [self.func])
        except Exception:
            return set()
        return {a for a, i in insns.items() if i.mnemonic == "syscall"}

    def _update_syscall_hooks(self) -> None:
        """Code hooks at the image's `syscall` instructions while something needs
        a stop right after the kernel ran (its writes happen outside the CPU)."""
        want = self._want_syscall_stops()
        for a in self._syscall_insns:
            if want:
                self._hook(a)
            else:
                self._unhook(a)

    # ================================================================= running: one step of the engine
    def _run_once(self, stop_at: int) -> str:
        """Run the CPU once (Machine.run up to index stop_at); returns what
        stopped it: fault | code | watch | target | done.  Snapshot
        write-protection faults are resolved here, silently."""
        ctx = self.ctx
        m = self.m
        while True:
            self.watches.hit = None
            m.run(ctx, stop_at=stop_at)
            if ctx.pending_fault is not None:
                pf, _rip = ctx.pending_fault
                ctx.stop_requested = False        # a hook that saw the faulting access
                self.watches.hit = None
                self.watches.undo_journal()
                if pf.access == "write" and snapshot_cow(m, pf.address):
                    m.handle_pending_fault(ctx)    # a snapshot artifact, not the process's fault
                    continue
                if ctx.index != self._seq_index:
                    self._seq_index = ctx.index
                    self._fault_seq = 0
                self._fault_seq += 1
                return "fault"
            if ctx.stop_requested:
                ctx.stop_requested = False
                if self.watches.hit is not None:
                    self.watches.undo_journal()
                    return "watch"
                return "code"
            if ctx.done:
                return "done"
            return "target"

    def _handle_quietly(self) -> dict:
        info = self.handle_pending()
        if self.ctx.index != self._seq_index:
            self._seq_index = self.ctx.index
            self._fault_seq = 0
        return info

    def _step_over(self) -> str:
        """Execute the instruction at rip with code and memory hooks muted."""
        self.watches.muted = True
        quiet = self._quiet
        self._quiet = True
        try:
            return self._run_once(self.ctx.index + 1)
        finally:
            self.watches.muted = False
            self._quiet = quiet

    def _changes(self, before: dict, why: str, index: int, rip: int, detail: str = "") -> WatchHit | None:
        for w, kind, old, new in self.watches.changes(before):
            reason = "dropped" if kind == "dropped" else why
            if reason == "kernel-write" and old == new:
                continue
            w.hits += 1
            return WatchHit(w, reason, old, new, index, rip, detail)
        return None

    def _fault_watch(self) -> WatchHit | None:
        pf, rip = self.pending()
        if pf.access != "write":
            return None
        w = self.watches.covering(pf.address, pf.size, ("write", "access"))
        if w is None:
            return None
        w.hits += 1
        cur = self.m.read(w.addr, w.length)
        return WatchHit(w, "store-faulted", cur, cur, self.ctx.index, rip, f"mm will: {self.prediction()}")

    def _after_fault(self, info: dict, before: dict) -> WatchHit | None:
        rec, pf = info["rec"], info["pf"]
        if rec.decision == "skip" and pf.access == "write":
            w = self.watches.covering(pf.address, pf.size, ("write", "access"))
            if w is not None:
                w.hits += 1
                cur = self.m.read(w.addr, w.length)
                return WatchHit(w, "store-skipped", cur, cur, self.ctx.index, info["rip"],
                                f"{rec.insn}, {rec.skip_len} bytes")
        return self._changes(before, "changed", self.ctx.index, info["rip"],
                             f"while handling the fault at #{info['index']}")

    def _after_syscall(self, before: dict, sys_rip: int, nsys: int, ntrace: int) -> tuple[WatchHit | None, bool]:
        """After stepping over a syscall: a watched change, and whether the kernel
        faulted on a user address in it."""
        recs = self.ctx.result.syscalls[nsys:]
        name = recs[-1].name if recs else "syscall"
        kfault = any(ev.kind == "fault_entry" and ev.detail.get("mode") == "kernel"
                     for ev in self.m.trace.events[ntrace:])
        hit = self._changes(before, "kernel-write", self.ctx.index, sys_rip, f"{name}: copy_to_user")
        return hit, kfault

    def _step_over_access(self) -> tuple[str, WatchHit | None]:
        """Stopped at an instruction about to touch watched memory (memory as it
        was before it): run it, then say what it did."""
        h = self.watches.hit
        w = h.watch
        old = self.m.read(w.addr, w.length)
        why = self._step_over()
        if why == "fault":
            hit = self._fault_watch()
            return ("watch", hit) if hit is not None else ("fault", None)
        new = self.m.read(w.addr, w.length)
        w.hits += 1
        return "watch", WatchHit(w, h.access, old, new, self.ctx.index, h.rip)

    # ================================================================= forward
    def interrupt(self) -> None:
        """Ask a running resume to stop at the next poll (Ctrl-C)."""
        self._interrupt = True

    def resume(self, mode: str = "step", count: int = 1, temp: tuple[int, ...] = (), poll=None) -> Stop:
        """mode 'step': retire `count` instructions; 'cont': run until a
        breakpoint, a watchpoint, a fault (faultstop on), the end of the call or
        an interrupt.  `temp`: one-shot breakpoint addresses (next, until,
        finish).  `poll()`: returns True to interrupt; called between chunks."""
        ctx = self.ctx
        stop = Stop("done")
        if ctx.done:
            return stop
        self._interrupt = False
        mark = len(self.m.trace.events)
        nsys = len(ctx.result.syscalls)
        remaining = count if mode == "step" else None
        if self.walk is not None:
            self.end_walk()              # handled already; the rest of the walk is skipped
        elif self.pending() is not None:
            before = ctx.index
            fault_rip = ctx.rip
            shadow = self.watches.state()
            info = self._handle_quietly()
            hit = self._after_fault(info, shadow)
            if remaining is not None and ctx.index > before:
                remaining -= 1           # a skip retires the faulting instruction
            if hit is not None:
                stop.reason, stop.watch = "watch", hit
                return self._finish_stop(stop, mark, nsys)
            if ctx.done or remaining == 0:
                stop.reason = "done" if ctx.done else "step"
                return self._finish_stop(stop, mark, nsys)
            if ctx.rip != fault_rip and (ctx.rip in temp or ctx.rip in self.breakpoints.values()):
                stop.reason = "breakpoint"     # the skip landed on a breakpoint: it has not run yet
                self.hit = ctx.rip
                stop.breakpoint = self.bp_number(ctx.rip)
                return self._finish_stop(stop, mark, nsys)
        added = [a for a in temp if a not in self._hooks]
        for a in added:
            self._hooks[a] = self.m.hook_code(a, self._on_code)
        prev_handler = None
        if poll is None and threading.current_thread() is threading.main_thread():
            try:
                prev_handler = signal.signal(signal.SIGINT, lambda *_: self.interrupt())
            except ValueError:
                prev_handler = None
        try:
            stop.reason, stop.watch = self._forward(remaining, set(temp), poll)
        finally:
            if prev_handler is not None:
                signal.signal(signal.SIGINT, prev_handler)
            for a in added:
                self._unhook(a)
        if stop.reason == "breakpoint":
            stop.breakpoint = self.bp_number(self.hit)
        return self._finish_stop(stop, mark, nsys)

    def _forward(self, remaining: int | None, temp: set[int], poll) -> tuple[str, WatchHit | None]:
        ctx = self.ctx
        target = INF if remaining is None else ctx.index + remaining
        self._resume_rip = ctx.rip
        self._left_resume = False
        shadow = self.watches.state() if self.watches.watches else {}
        last_poll = time.monotonic()
        while True:
            stop_at = min(ctx.index + POLL_CHUNK, self.timeline.due(ctx.index), target)
            if shadow and ctx.injections:
                stop_at = min(stop_at, max(ctx.injections[0].at, ctx.index + 1))
            why = self._run_once(stop_at)
            if why == "fault":
                if shadow:
                    hit = self._fault_watch()
                    if hit is not None:
                        return "watch", hit
                if self.faultstop:
                    return "fault", None
                fault_rip = ctx.rip
                info = self._handle_quietly()
                if shadow:
                    hit = self._after_fault(info, shadow)
                    if hit is not None:
                        return "watch", hit
                    shadow = self.watches.state()
                if ctx.rip != fault_rip and not ctx.done and (ctx.rip in self.breakpoints.values() or ctx.rip in temp):
                    self.hit = ctx.rip          # a skip landed on a breakpoint
                    return "breakpoint", None
                self._resume_rip = ctx.rip
                self._left_resume = False
            elif why == "watch":
                return self._step_over_access()
            elif why == "code":
                addr = self.hit
                if addr in self._syscall_insns and addr not in self.breakpoints.values() and addr not in temp:
                    nsys, ntrace = len(ctx.result.syscalls), len(self.m.trace.events)
                    before = self.watches.state() if shadow else {}
                    self._step_over()
                    hit, kfault = self._after_syscall(before, addr, nsys, ntrace)
                    if hit is not None:
                        return "watch", hit
                    if kfault and self.faultstop:
                        return "kernel-fault", None
                    shadow = self.watches.state() if shadow else {}
                    self._resume_rip = ctx.rip
                    self._left_resume = False
                    continue
                return "breakpoint", None
            if ctx.done:
                return "done", None
            if why == "target" and shadow:
                hit = self._changes(shadow, "changed", ctx.index, ctx.rip, self._recent_injection())
                if hit is not None:
                    return "watch", hit
            if ctx.index % self.timeline.every == 0 and ctx.pending_fault is None:
                self.timeline.take(Pos(ctx.index), ctx)
            if ctx.index >= target:
                return "step", None
            if self._interrupt:
                return "interrupt", None
            now = time.monotonic()
            if poll is not None and now - last_poll > 0.05:
                last_poll = now
                if poll():
                    return "interrupt", None

    def _recent_injection(self) -> str:
        for ev in reversed(self.m.trace.events[-8:]):
            if ev.kind == "inject" and ev.index == self.ctx.index:
                return f"inject {ev.detail.get('event', '?')} at #{ev.index}"
        return ""

    def _sync_rip(self) -> None:
        """The architectural rip is ctx.rip: a skip (rip += length) and a syscall
        return move ctx.rip without writing Unicorn's RIP, which is what gdb
        and `regs` read."""
        ctx = self.ctx
        if not ctx.done and self.m.reg("rip") != ctx.rip:
            self.m.set_reg("rip", ctx.rip)

    def _finish_stop(self, stop: Stop, mark: int, nsys: int) -> Stop:
        ctx = self.ctx
        self._sync_rip()
        self._settle()
        stop.events = list(self.m.trace.events[mark:])
        stop.syscalls = list(ctx.result.syscalls[nsys:])
        if ctx.done:
            stop.reason = "done"
            self.caller.fill_output(self.m, ctx.result)
        return stop

    def _settle(self) -> list[TraceEvent]:
        """Apply the injections due at the current instruction now, so that the
        views at this stop already show them; returns their events."""
        ctx = self.ctx
        if ctx.done or ctx.pending_fault is not None:
            return []
        trace = self.m.trace
        mark = len(trace.events)
        self.m.run(ctx, stop_at=ctx.index)
        return [ev for ev in trace.events[mark:] if ev.kind == "inject"]

    def settle(self) -> list[TraceEvent]:
        return self._settle()

    # ================================================================= backward
    def restart(self) -> Stop:
        """Back to instruction 0 of the call, as the session started (changes
        made by hand since are gone)."""
        self.ctx = self.timeline.reset_to_origin()
        self._after_restore(self.timeline.origin.pos)
        return Stop("step", reverse=True)

    def _after_restore(self, pos: Pos) -> None:
        self.ctx.stop_on_fault = True
        self.m.trace.attach(self.ctx)
        self._seq_index = pos.index
        self._fault_seq = pos.fault
        self.walk = None
        self.last_fault = None
        self.hit = None
        self.watches.hit = None
        self.watches.journal.clear()
        self._sync_rip()

    def goto(self, pos: Pos) -> Pos:
        """Re-execute to `pos` (an earlier position) from the latest snapshot at or
        before it; returns where it got (the history's start if `pos` is before it)."""
        pos = max(pos, self.timeline.start)
        snap = self.timeline.before(pos)
        self.ctx = self.timeline.restore(snap)
        self._after_restore(snap.pos)
        self._quiet = True
        self.watches.muted = True
        try:
            while self.position() < pos and not self.ctx.done:
                if self.ctx.index < pos.index:
                    why = self._run_once(pos.index)
                else:
                    why = self._run_once(pos.index + 1)      # run on to the k-th fault there
                if why == "fault" and self.position() < pos:
                    self._handle_quietly()
                elif why == "target" and self.ctx.index > pos.index:
                    break                                  # no such fault: stay at the arrival after
        finally:
            self._quiet = False
            self.watches.muted = False
        self._sync_rip()
        return self.position()

    def reverse(self, mode: str = "step", count: int = 1, poll=None) -> Stop:
        """mode 'step': back `count` instructions; 'next': back one, over a call;
        'cont': back to the last breakpoint, watchpoint trigger or (faultstop on)
        fault before here."""
        if mode == "cont":
            return self._reverse_continue(poll)
        cur = self.position()
        start = self.timeline.start
        if cur <= start:
            return Stop("history-begin", reverse=True)
        want = Pos(cur.index - count)
        clamped = want < start
        rsp_now = self.m.reg("rsp")
        rip_now = self.ctx.rip
        got = self.goto(max(want, start))
        if mode == "next" and not clamped:
            ins = self.insn_at(self.ctx.rip)
            if ins is not None and ins.mnemonic == "ret":
                # we came back out of a callee: go on back to its call
                call = self._call_before(rip_now)
                if call is not None:
                    ev = self._last_event(got, extra={call},
                                          want=lambda e: e.kind == "temp" and e.rsp == rsp_now)
                    self.goto(ev.pos if ev is not None else got)
        return Stop("history-begin" if clamped else "step", reverse=True)

    def _call_before(self, ret_addr: int) -> int | None:
        for n in (5, 2, 3, 6, 7):
            ins = self.insn_at(ret_addr - n)
            if ins is not None and ins.mnemonic == "call" and ins.size == n:
                return ret_addr - n
        return None

    def _reverse_continue(self, poll) -> Stop:
        cur = self.position()
        ev = self._last_event(cur, want=lambda e: True, poll=poll)
        if ev is None:
            self.goto(self.timeline.start)
            return Stop("history-begin", reverse=True)
        self.goto(ev.pos)
        if ev.hit is not None:
            ev.hit.index = ev.pos.index        # where it happens: the store has not run yet
        stop = Stop(ev.kind if ev.kind != "temp" else "step", reverse=True, watch=ev.hit)
        if ev.kind == "breakpoint":
            self.hit = ev.addr
            stop.breakpoint = self.bp_number(ev.addr)
        return stop

    def _last_event(self, until: Pos, extra: set[int] = frozenset(), want=lambda e: True, poll=None):
        """The last event strictly before `until`, found by re-running the
        intervals between snapshots newest first.  Leaves the process wherever
        the last re-run ended (callers goto() the answer)."""
        snap = self.timeline.before(until)
        upper = until
        while snap is not None:
            events = [e for e in self._scan(snap, upper, extra) if e.pos < until and want(e)]
            if events:
                return events[-1]
            if poll is not None and poll():
                return None
            upper = snap.pos
            snap = self.timeline.earlier(snap)
        return None

    def _scan(self, snap, until: Pos, extra: set[int]) -> list[_Event]:
        """Re-run from `snap` up to `until`, collecting what a forward run with
        the current breakpoints, watchpoints and faultstop would have stopped at."""
        self.ctx = self.timeline.restore(snap)
        self._after_restore(snap.pos)
        ctx = self.ctx
        out: list[_Event] = []
        added = [a for a in extra if a not in self._hooks]
        for a in added:
            self._hooks[a] = self.m.hook_code(a, self._on_code)
        self._resume_rip = -1
        self._left_resume = True
        shadow = self.watches.state()
        try:
            while self.position() < until and not ctx.done:
                stop_at = until.index if self.ctx.index < until.index else until.index + 1
                if ctx.injections:
                    stop_at = min(stop_at, max(ctx.injections[0].at, ctx.index + 1))
                why = self._run_once(stop_at)
                ctx = self.ctx
                if why == "fault":
                    pos = self.position()
                    hit = self._fault_watch()
                    if hit is not None:
                        out.append(_Event(pos, "watch", hit))
                    elif self.faultstop:
                        out.append(_Event(pos, "fault"))
                    if pos >= until:
                        break
                    info = self._handle_quietly()
                    hit = self._after_fault(info, shadow)
                    if hit is not None:
                        out.append(_Event(pos, "watch", hit))
                    shadow = self.watches.state()
                    self._resume_rip, self._left_resume = ctx.rip, False
                elif why == "watch":
                    pos = self.position()
                    _, hit = self._step_over_access()
                    if hit is not None:
                        out.append(_Event(pos, "watch", hit))
                    shadow = self.watches.state()
                    self._resume_rip, self._left_resume = ctx.rip, False
                elif why == "code":
                    pos = self.position()
                    addr = self.hit
                    if addr in extra:
                        out.append(_Event(pos, "temp", addr=addr, rsp=self.m.reg("rsp")))
                    if addr in self.breakpoints.values():
                        out.append(_Event(pos, "breakpoint", addr=addr))
                    if addr in self._syscall_insns and self._want_syscall_stops():
                        nsys, ntrace = len(ctx.result.syscalls), len(self.m.trace.events)
                        self._step_over()
                        hit, kfault = self._after_syscall(shadow, addr, nsys, ntrace)
                        if hit is not None:
                            out.append(_Event(pos, "watch", hit))
                        if kfault and self.faultstop:
                            out.append(_Event(self.position(), "kernel-fault"))
                        shadow = self.watches.state()
                    self._resume_rip, self._left_resume = ctx.rip, False
                elif why == "target":
                    hit = self._changes(shadow, "changed", ctx.index, ctx.rip, self._recent_injection())
                    if hit is not None:
                        out.append(_Event(self.position(), "watch", hit))
                    shadow = self.watches.state()
                    if ctx.index > until.index:
                        break
        finally:
            for a in added:
                self._unhook(a)
        return out
