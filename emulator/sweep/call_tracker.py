"""Every glibc getrandom() call of a running program, from its entry to its
return, and the __vdso_getrandom calls inside them: what `sweep --exec`
observes and judges.

glibc's getrandom() is found by symbol in the mapped file whose symbol
tables define it (libc.so.6; not the vDSO, whose builtin image exports a
`getrandom` alias of its own).  A call enters there with its return address
at [rsp]; it returns when execution reaches that address with rsp 8 higher
(the return address is watched from the entry on).  The vDSO call is
watched the same way at __vdso_getrandom.  Calls nest (a signal handler's
getrandom() inside the call it interrupted), so each process has a stack of
them; a fork's child inherits its parent's stack and finishes those calls in
its own memory.

An arrival at an entry whose frame is already on the stack (the same rsp)
is the same call reached again, after a signal handler returned to it.

The tracker is an observer of every process (emulator/process.py's
protocol).  save_state/restore_state let System.snapshot/restore bring its
record back with the machine.  What the harness does at each step goes
through a TrackerHooks object.
"""
from __future__ import annotations

import copy
import weakref
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

from emulator.exec.symbols import SymbolTables
from emulator.syscall_abi import signed
from vdso.abi import STATE_IN_USE, STATE_SIZE

if TYPE_CHECKING:
    from emulator.process import Process
    from emulator.records import SyscallRecord

LIBC_GETRANDOM = "getrandom"
VDSO_ENTRY = "__vdso_getrandom"
PARAMS_QUERY = (1 << 64) - 1          # opaque_len of glibc's start-up query of the parameters


@dataclass
class VdsoCall:
    """One __vdso_getrandom call, counted over the whole run from 1."""
    number: int
    pid: int
    index: int
    rsp: int
    args: tuple[int, ...]               # rdi, rsi, rdx, rcx, r8: buffer, len, flags, state, state size
    return_index: int | None = None
    ret: int | None = None

    @property
    def is_query(self) -> bool:
        return self.args[4] == PARAMS_QUERY


@dataclass
class GetrandomCall:
    """One call of glibc's getrandom() in one process."""
    pid: int
    seq: int                            # the process's n-th call (a fork child counts on from its parent's)
    depth: int                          # 0: the program's; 1: a handler's inside an interrupted call, ...
    index: int                          # ctx.index at the entry
    rsp: int                            # at the entry (it points at the return address)
    ret_addr: int
    buffer: int
    length: int
    flags: int
    syscall_start: int                  # where its syscalls begin in the process's record
    fault_start: int
    cycles_start: float
    state: int | None                   # glibc's state for this thread, when known
    state_before: bytes | None
    claimed: bool                       # the state was claimed (in_use set, page backed) at the entry
    outer: int | None = None            # seq of the call a signal handler interrupted
    fork_of: int | None = None          # a fork child's copy of a call: the parent's pid
    inherited: bytes | None = None      # ... and its buffer at the fork
    vdso: list[VdsoCall] = field(default_factory=list)
    outcome: str = ""                   # returned, abandoned (longjmp), or how the process ended
    detail: str = ""
    return_index: int | None = None
    ret: int | None = None
    output: bytes = b""
    state_after: bytes | None = None
    cycles: float | None = None
    syscall_end: int | None = None
    fault_end: int | None = None
    memory: list[str] = field(default_factory=list)     # Memory-discipline findings (the harness's)

    @property
    def instructions(self) -> int | None:
        return None if self.return_index is None else self.return_index - self.index


class TrackerHooks:
    """What the harness does as calls come and go (each a no-op here)."""

    def on_entry(self, p: "Process", call: GetrandomCall) -> None: ...
    def on_vdso(self, p: "Process", vc: VdsoCall) -> None: ...
    def on_return(self, p: "Process", call: GetrandomCall) -> None: ...
    def on_end(self, p: "Process", call: GetrandomCall) -> None: ...
    def on_fork(self, parent: "Process", child: "Process") -> None: ...
    def on_handler(self, p: "Process") -> None: ...
    def on_sigreturn(self, p: "Process") -> None: ...


class CallTracker:
    def __init__(self, hooks: TrackerHooks | None = None):
        self.hooks = hooks or TrackerHooks()
        self.symbols = SymbolTables()
        self.vdso_calls: list[VdsoCall] = []
        self.stacks: dict[int, list[GetrandomCall]] = {}
        self.vstacks: dict[int, list[VdsoCall]] = {}
        self.seqs: dict[int, int] = {}
        self.states: dict[int, int] = {}            # pid -> glibc's state, from its last vDSO call
        self.ended: list[GetrandomCall] = []        # in the order they ended
        # Watches are Unicorn hooks, which no snapshot restores: what is placed
        # where is kept per Process object, outside the saved state.
        self._placed: "weakref.WeakKeyDictionary[Process, set[int]]" = weakref.WeakKeyDictionary()

    # ---------------------------------------------------------------- state
    def save_state(self) -> tuple:
        return copy.deepcopy((self.vdso_calls, self.stacks, self.vstacks, self.seqs, self.states, self.ended))

    def restore_state(self, st: tuple) -> None:
        (self.vdso_calls, self.stacks, self.vstacks, self.seqs, self.states,
         self.ended) = copy.deepcopy(st)

    def active(self, pid: int) -> list[GetrandomCall]:
        return self.stacks.get(pid, [])

    # ---------------------------------------------------------------- watches
    def attach(self, p: "Process") -> None:
        p.observers.append(self)
        self._place(p)

    def _watch(self, p: "Process", addr: int, fn) -> None:
        placed = self._placed.setdefault(p, set())
        if addr not in placed:
            placed.add(addr)
            p.watch(addr, fn)

    def _place(self, p: "Process") -> None:
        self._watch(p, p.kernel.image.symbol(VDSO_ENTRY), self._on_vdso_entry)
        for _, addr in self.symbols.resolve(p, LIBC_GETRANDOM, vdso=False):
            self._watch(p, addr, self._on_entry)
        for c in self.active(p.pid):
            self._watch(p, c.ret_addr, self._on_return_site)
        for v in self.vstacks.get(p.pid, []):
            self._watch(p, int.from_bytes(p.read(v.rsp, 8), "little"), self._on_return_site)

    # ---------------------------------------------------------------- arrivals
    def _on_entry(self, p: "Process") -> None:
        rsp = p.reg("RSP")
        stack = self.stacks.setdefault(p.pid, [])
        if stack and stack[-1].rsp == rsp:
            return                      # the same call, reached again after a handler returned to it
        seq = self.seqs[p.pid] = self.seqs.get(p.pid, 0) + 1
        state = self.states.get(p.pid)
        before = p.read(state, STATE_SIZE) if state is not None else None
        ctx = p.ctx
        call = GetrandomCall(
            pid=p.pid, seq=seq, depth=len(stack), index=ctx.index, rsp=rsp,
            ret_addr=int.from_bytes(p.read(rsp, 8), "little"), buffer=p.reg("RDI"), length=p.reg("RSI"),
            flags=p.reg("RDX") & 0xFFFF_FFFF, syscall_start=len(ctx.result.syscalls),
            fault_start=len(ctx.result.faults), cycles_start=ctx.cycles, state=state, state_before=before,
            claimed=before is not None and bool(before[STATE_IN_USE]) and _backed(p, state),
            outer=stack[-1].seq if stack else None)
        stack.append(call)
        self._watch(p, call.ret_addr, self._on_return_site)
        self.hooks.on_entry(p, call)

    def _on_vdso_entry(self, p: "Process") -> None:
        rsp = p.reg("RSP")
        vstack = self.vstacks.setdefault(p.pid, [])
        if vstack and vstack[-1].rsp == rsp:
            return
        vc = VdsoCall(len(self.vdso_calls) + 1, p.pid, p.ctx.index, rsp,
                      tuple(p.reg(r) for r in ("RDI", "RSI", "RDX", "RCX", "R8")))
        self.vdso_calls.append(vc)
        vstack.append(vc)
        if not vc.is_query:
            self.states[p.pid] = vc.args[3]
            stack = self.active(p.pid)
            if stack:
                call = stack[-1]
                call.vdso.append(vc)
                if call.state is None:          # the first call: glibc allocated the state just now
                    call.state = vc.args[3]
                    call.state_before = p.read(call.state, STATE_SIZE)
        self._watch(p, int.from_bytes(p.read(rsp, 8), "little"), self._on_return_site)
        self.hooks.on_vdso(p, vc)

    def _on_return_site(self, p: "Process") -> None:
        rip, rsp = p.ctx.rip, p.reg("RSP")
        vstack = self.vstacks.get(p.pid, [])
        if vstack and vstack[-1].rsp + 8 == rsp and int.from_bytes(p.read(vstack[-1].rsp, 8), "little") == rip:
            vc = vstack.pop()
            vc.return_index, vc.ret = p.ctx.index, signed(p.reg("RAX"))
        stack = self.active(p.pid)
        for j in range(len(stack) - 1, -1, -1):
            c = stack[j]
            if c.ret_addr == rip and c.rsp + 8 == rsp:
                for gone in reversed(stack[j + 1:]):        # left by a longjmp out of a handler
                    self._end(p, gone, "abandoned", "its frame was left without a return")
                del stack[j:]
                self._returned(p, c)
                return

    def _returned(self, p: "Process", c: GetrandomCall) -> None:
        ctx = p.ctx
        c.outcome = "returned"
        c.return_index, c.ret = ctx.index, signed(p.reg("RAX"))
        if c.ret > 0:
            c.output = p.read(c.buffer, min(c.ret, c.length))
        if c.state is not None:
            c.state_after = p.read(c.state, STATE_SIZE)
        c.cycles = ctx.cycles - c.cycles_start
        c.syscall_end, c.fault_end = len(ctx.result.syscalls), len(ctx.result.faults)
        self.ended.append(c)
        self.hooks.on_return(p, c)

    def _end(self, p: "Process", c: GetrandomCall, outcome: str, detail: str) -> None:
        c.outcome, c.detail = outcome, detail
        c.syscall_end, c.fault_end = len(p.ctx.result.syscalls), len(p.ctx.result.faults)
        self.ended.append(c)
        self.hooks.on_end(p, c)

    # ---------------------------------------------------------------- the observer protocol
    def on_syscall(self, p: "Process", rec: "SyscallRecord") -> None:
        if rec.name == "mmap" and isinstance(rec.ret, int) and rec.ret >= 0:
            self._place(p)              # libc may have just been mapped
        elif rec.name == "rt_sigreturn":
            self.hooks.on_sigreturn(p)

    def on_signal(self, p: "Process", k, what: str) -> None:
        if what == "handler":
            self.hooks.on_handler(p)

    def on_fork(self, parent: "Process", child: "Process") -> None:
        """The child finishes its parent's calls in its own memory: copies of
        them, their records starting afresh (the child's own record is new)."""
        self.seqs[child.pid] = self.seqs.get(parent.pid, 0)
        if parent.pid in self.states:
            self.states[child.pid] = self.states[parent.pid]
        self.stacks[child.pid] = [
            replace(c, pid=child.pid, fork_of=parent.pid, inherited=child.read(c.buffer, c.length),
                         vdso=list(c.vdso), syscall_start=0, fault_start=0, memory=[])
            for c in self.active(parent.pid)]
        self.vstacks[child.pid] = [replace(v, pid=child.pid) for v in self.vstacks.get(parent.pid, [])]
        self._place(child)
        self.hooks.on_fork(parent, child)

    def on_exit(self, p: "Process") -> None:
        how = p.exit.outcome or p.ctx.result.outcome
        detail = p.exit.detail or p.ctx.result.outcome_detail
        for c in reversed(self.active(p.pid)):
            self._end(p, c, how, detail)
        self.stacks[p.pid] = []
        self.vstacks[p.pid] = []

    def on_refusal(self, p, rec, why) -> None:
        pass


def _backed(p: "Process", addr: int) -> bool:
    """Is the page at addr present with a frame of its own (not dropped, not the zero page)?"""
    pte = p.mm.pte(addr)
    return pte is not None and pte.frame is not None and not pte.frame.is_zero
