"""The stepping engine: one stepped process and the ways to move it.

A Session is one process set up exactly like `faultpath run` (new_process,
calls 1..K-1 made normally) and stopped at instruction 0 of its last call.
It moves the call (stepi / next / continue / until, breakpoints, fault
stops) and changes it (registers, memory, injections, policy, memory
budget); what a stop looks like is emulator/debug/views.py's business, and
the command language is emulator/debug/commands.py's.  The stepper REPL
(emulator/cli/step.py) and the GDB stub (emulator/debug/gdbstub.py) drive
this same engine.

Fault stops.  The stepped call runs with ctx.stop_on_fault: the run loop
hands a fault back *before* do_user_addr_fault runs.  The next `stepi`
carries the handling out and retires the instruction (a skip retires it as
a no-op; a mapped or retried fault re-executes it, which may fault again);
`fstep` carries it out once and then reveals its trace events one stage per
command.

Breakpoints are ranged UC_HOOK_CODE hooks that stop Unicorn before the
instruction executes; no per-instruction Python hook is ever installed.
"""
from __future__ import annotations

import signal
import threading
import time
from dataclasses import dataclass, field

from unicorn import UC_HOOK_CODE

from emulator.debug.symbols import REG_ALIAS, Symbols
from emulator.errors import UsageError
from emulator.inject import apply as inject_apply
from emulator.inject import parse_kind
from emulator.records import Injection, SyscallRecord
from emulator.trace import TraceEvent
from emulator.run import MAX_PAGES, RunConfig, new_process, plan_calls
from mm.flags import PAGE_SIZE
from vdso.insn import MAX_INSN_LEN, decode_one

POLL_CHUNK = 1 << 16          # instructions between interrupt polls while running


@dataclass
class Stop:
    """Why a resume ended, and what happened on the way: the trace events of
    the resume in the order they happened (handled faults, syscalls with the
    kernel's own faults inside them, injections) and the syscall records
    they belong to."""
    reason: str                       # step | breakpoint | fault | done | interrupt
    events: list[TraceEvent] = field(default_factory=list)
    syscalls: list[SyscallRecord] = field(default_factory=list)
    breakpoint: int | None = None     # breakpoint number (user breakpoints only)


class Session:
    """One stepped process."""

    def __init__(self, cfg: RunConfig):
        cfg.validate()
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
        self.faultstop = True
        self.symbols = Symbols(self.kernel.image, self.caller, self.func)
        self.breakpoints: dict[int, int] = {}    # number -> address
        self._next_bp = 1
        self._hooks: dict[int, int] = {}         # address -> unicorn hook handle
        self._resume_rip = -1
        self._left_resume = False
        self.hit: int | None = None              # address of the code hook that stopped the last resume
        self._interrupt = False
        self.walk: dict | None = None            # fstep walk in progress
        self.last_fault: dict | None = None      # the last fault handled in this call
        self.start_events = self._settle()

    # ================================================================= naming
    def where(self, addr: int) -> str:
        return self.symbols.where(addr)

    def eval_addr(self, expr: str) -> int:
        return self.symbols.eval_addr(expr, self.m.reg)

    # ================================================================= registers / memory
    def set_register(self, name: str, value: int) -> None:
        """A register write from the user (gdb P/G): rip also moves the call."""
        name = REG_ALIAS.get(name.lower(), name.lower())
        self.m.set_reg(name, value)
        if name == "rip":
            if value != self.ctx.rip:
                self.ctx.pending_fault = None     # the faulting instruction is abandoned
                self.end_walk()
            self.ctx.rip = value

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
        return done

    def insn_at(self, addr: int):
        return decode_one(self.read_memory(addr, MAX_INSN_LEN), addr)

    # ================================================================= mm knobs
    def set_memory(self, pages: int) -> None:
        if not 1 <= pages <= MAX_PAGES:
            raise UsageError(f"memory {pages}: out of range (1..{MAX_PAGES} pages)")
        self.kernel.phys.memory_pages = pages

    def set_policy(self, policy: str) -> None:
        if policy not in ("skip", "retry"):
            raise UsageError(f"policy {policy!r}: expected skip or retry")
        self.m.mm.droppable_oom = policy

    def inject(self, arg: str) -> list:
        """Apply an injection now; returns its trace events."""
        kind = parse_kind(arg)
        ctx = self.ctx
        if ctx.done:
            raise UsageError("the call has ended")
        mark = len(self.m.trace.events)
        inject_apply(self.m, ctx, Injection(ctx.index, kind))
        return [ev for ev in self.m.trace.events[mark:] if ev.kind == "inject"]

    # ================================================================= faults
    def pending(self):
        """(PendingFault, rip) when stopped at a fault not handled yet."""
        return self.ctx.pending_fault

    def handle_pending(self) -> dict:
        """Carry out the pending fault; returns what happened (record, events)."""
        ctx = self.ctx
        pf, rip = ctx.pending_fault
        trace = self.m.trace
        mark = len(trace.events)
        self.m.handle_pending_fault(ctx)
        self._sync_rip()
        events = list(trace.events[mark:])
        rec = ctx.result.faults[-1]
        info = {"rec": rec, "events": events, "pf": pf, "rip": rip,
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
        if addr in self._hooks:
            return
        self._hooks[addr] = self.m.uc.hook_add(UC_HOOK_CODE, self._on_code, None, addr, addr)
        self.m.uc.ctl_flush_tb()      # blocks translated before the hook would not call it

    def _unhook(self, addr: int) -> None:
        if addr in self.breakpoints.values():
            return
        h = self._hooks.pop(addr, None)
        if h is not None:
            self.m.uc.hook_del(h)
            self.m.uc.ctl_flush_tb()

    def _on_code(self, uc, address, size, user_data) -> None:
        try:
            if not self._left_resume and address == self._resume_rip:
                self._left_resume = True     # resuming from this breakpoint: let it run
                return
            if self.ctx.pending_fault is None:
                self.ctx.stop_requested = True
                self.hit = address
                uc.emu_stop()
        except BaseException:     # never let an exception vanish inside Unicorn
            uc.emu_stop()

    # ================================================================= the engine
    def interrupt(self) -> None:
        """Ask a running resume to stop at the next poll (Ctrl-C)."""
        self._interrupt = True

    def resume(self, mode: str = "step", count: int = 1, temp: tuple[int, ...] = (), poll=None) -> Stop:
        """mode 'step': retire `count` instructions; 'cont': run until a breakpoint,
        a fault (faultstop on), the end of the call or an interrupt.  `temp`:
        one-shot breakpoint addresses (next, until).  `poll()`: returns True to
        interrupt; called between chunks."""
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
            self.handle_pending()
            if remaining is not None and ctx.index > before:
                remaining -= 1           # a skip retires the faulting instruction
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
            self._hooks[a] = self.m.uc.hook_add(UC_HOOK_CODE, self._on_code, None, a, a)
        if added:
            self.m.uc.ctl_flush_tb()
        prev_handler = None
        if poll is None and threading.current_thread() is threading.main_thread():
            try:
                prev_handler = signal.signal(signal.SIGINT, lambda *_: self.interrupt())
            except ValueError:
                prev_handler = None
        try:
            stop.reason = self._loop(remaining, poll)
        finally:
            if prev_handler is not None:
                signal.signal(signal.SIGINT, prev_handler)
            for a in added:
                h = self._hooks.pop(a, None)
                if h is not None and a not in self.breakpoints.values():
                    self.m.uc.hook_del(h)
                elif h is not None:
                    self._hooks[a] = h
            if added:
                self.m.uc.ctl_flush_tb()
        if stop.reason == "breakpoint":
            stop.breakpoint = self.bp_number(self.hit)
        return self._finish_stop(stop, mark, nsys)

    def _loop(self, remaining: int | None, poll) -> str:
        ctx = self.ctx
        m = self.m
        target = None if remaining is None else ctx.index + remaining
        self._resume_rip = ctx.rip
        self._left_resume = False
        last_poll = time.monotonic()
        while True:
            stop_at = ctx.index + POLL_CHUNK
            if target is not None:
                stop_at = min(stop_at, target)
            m.run(ctx, stop_at=stop_at)
            if ctx.stop_requested:
                ctx.stop_requested = False
                return "breakpoint"
            if ctx.pending_fault is not None:
                if self.faultstop:
                    return "fault"
                fault_rip = ctx.rip
                self.handle_pending()
                if ctx.rip != fault_rip and not ctx.done and ctx.rip in self._hooks:
                    self.hit = ctx.rip          # a skip landed on a breakpoint
                    return "breakpoint"
                self._resume_rip = ctx.rip
                self._left_resume = False
            if ctx.done:
                return "done"
            if target is not None and ctx.index >= target:
                return "step"
            now = time.monotonic()
            if self._interrupt:
                return "interrupt"
            if poll is not None and now - last_poll > 0.05:
                last_poll = now
                if poll():
                    return "interrupt"

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
