"""Injection in process mode: `faultpath exec --inject KIND@WHERE`.

KIND is what `faultpath run` injects (drop, oom, oom-off, oom:K, fork,
reseed, not-ready, ready) plus signal:SIGNAME, a signal delivered to the
program's own handler (so a re-entry is glibc's real one).  WHERE says when:

  getrandom#K:N     instruction N of the K-th call of __vdso_getrandom
                    (N = 0: at its first instruction); getrandom:N, every call
  syscall:NAME#K    as the K-th NAME syscall enters the kernel; without #K, every one
  sym:NAME[+OFF]#K  the K-th time execution reaches NAME (+OFF bytes) in the
                    program, its loader, a library it mapped or the vDSO;
                    without #K, every time
  N                 instruction N of the program (its first process)

Occurrences are counted over the whole run, every process together (the
scheduler is deterministic, so the K-th is always the same one).  A fork
injected here is asynchronous: the child is a copy of the process at that
instruction, continuing from it (it does not see fork() return); both run
on.  fork and signal at a syscall happen as the syscall returns to user
mode; the other kinds before the syscall runs.
"""
from __future__ import annotations

import re
import weakref
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from emulator import inject
from emulator.errors import UsageError
from emulator.exec.symbols import SymbolTables
from emulator.records import Injection
from emulator.signal import SI_KERNEL, parse_signal, signame
from emulator.syscall_names import NUMBERS

if TYPE_CHECKING:
    from emulator.process import Process
    from emulator.records import SyscallRecord

_KIND = re.compile(r"^(drop|oom|oom-off|oom:\d+|fork|reseed|not-ready|ready|signal:[A-Za-z0-9_]+)$")
_GETRANDOM = re.compile(r"^getrandom(?:#(\d+))?(?::(\d+))?$")
_SYSCALL = re.compile(r"^syscall:(\w+)(?:#(\d+))?$")
_SYM = re.compile(r"^sym:([A-Za-z_.$@][\w.$@]*)(?:\+(0x[0-9a-fA-F]+|\d+))?(?:#(\d+))?$")
VDSO_ENTRY = "__vdso_getrandom"
MAX_N = 1 << 40


@dataclass
class Trigger:
    spec: str
    kind: str
    where: str                  # getrandom | syscall | sym | index
    name: str = ""              # syscall or symbol name
    offset: int = 0             # sym: bytes past the symbol
    occurrence: int | None = None   # K (1-based); None: every one
    at: int = 0                 # getrandom: instruction within the call; index: the absolute index
    seen: int = 0
    fired: list[dict] = field(default_factory=list)

    def due(self) -> bool:
        """Count one more occurrence; is this one ours?"""
        self.seen += 1
        return self.occurrence is None or self.seen == self.occurrence


def parse_trigger(spec: str) -> Trigger:
    kind, sep, where = spec.rpartition("@")
    if not sep or not kind:
        raise UsageError(f"--inject {spec!r}: expected KIND@WHERE (e.g. drop@getrandom#3:120)")
    kind = kind.strip()
    if not _KIND.match(kind):
        raise UsageError(f"--inject {spec!r}: unknown kind {kind!r} (drop, oom, oom-off, oom:K, fork, reseed, "
                         f"not-ready, ready, signal:NAME)")
    if kind.startswith("oom:"):
        inject.parse_kind(kind)
    if kind.startswith("signal:") and parse_signal(kind[7:]) is None:
        raise UsageError(f"--inject {spec!r}: unknown signal {kind[7:]!r}")
    where = where.strip()
    m = _GETRANDOM.match(where)
    if m:
        return Trigger(spec, kind, "getrandom", VDSO_ENTRY, occurrence=_k(spec, m[1]), at=_n(spec, m[2] or "0"))
    m = _SYSCALL.match(where)
    if m:
        if m[1] not in NUMBERS:
            raise UsageError(f"--inject {spec!r}: no x86-64 syscall named {m[1]!r}")
        return Trigger(spec, kind, "syscall", m[1], occurrence=_k(spec, m[2]))
    m = _SYM.match(where)
    if m:
        return Trigger(spec, kind, "sym", m[1], offset=int(m[2] or "0", 0), occurrence=_k(spec, m[3]))
    if re.fullmatch(r"\d+|0x[0-9a-fA-F]+", where):
        return Trigger(spec, kind, "index", at=_n(spec, where), occurrence=1)
    raise UsageError(f"--inject {spec!r}: WHERE must be getrandom#K:N, syscall:NAME#K, sym:NAME#K or N")


def _k(spec: str, s: str | None) -> int | None:
    if s is None:
        return None
    k = int(s)
    if k < 1:
        raise UsageError(f"--inject {spec!r}: occurrences are counted from 1")
    return k


def _n(spec: str, s: str) -> int:
    n = int(s, 0)
    if n > MAX_N:
        raise UsageError(f"--inject {spec!r}: instruction index out of range")
    return n


@dataclass
class VdsoCall:
    """One call of __vdso_getrandom as it entered: who, when, its arguments."""
    pid: int
    index: int
    args: tuple[int, ...]       # rdi, rsi, rdx, rcx, r8: buffer, len, flags, state, state size


class Injector:
    """Puts triggers on every process of a run and carries them out."""

    def __init__(self, triggers: list[Trigger], watch_vdso: bool = False):
        self.triggers = triggers
        self.watch_vdso = watch_vdso or any(t.where == "getrandom" for t in triggers)
        self.vdso_calls: list[VdsoCall] = []
        self._symbols = SymbolTables()
        # (symbol, address) watched in each process: Unicorn hooks, which no
        # snapshot restores, so kept per Process object and not saved.
        self._placed: "weakref.WeakKeyDictionary[Process, set[tuple[str, int]]]" = weakref.WeakKeyDictionary()

    # ---------------------------------------------------------------- attaching
    def attach(self, p: "Process", first: bool = True) -> None:
        p.observers.append(self)
        if self.watch_vdso:
            p.watch(p.kernel.image.symbol(VDSO_ENTRY), self._on_vdso_entry)
        if any(t.where == "syscall" for t in self.triggers):
            p.syscall_hooks.append(self._on_syscall_entry)
        if first:
            for t in self.triggers:
                if t.where == "index":
                    p.at_index(t.at, lambda q, t=t: self._fire(q, t, "index"))
        self._place_symbols(p)

    # Observer protocol (emulator/process.py).
    def on_syscall(self, p: "Process", rec: "SyscallRecord") -> None:
        if rec.name == "mmap" and isinstance(rec.ret, int) and rec.ret >= 0:
            self._place_symbols(p)

    def on_fork(self, parent: "Process", child: "Process") -> None:
        child.observers.remove(self)
        self.attach(child, first=False)

    def on_signal(self, p, k, what) -> None:
        pass

    def on_exit(self, p) -> None:
        pass

    def on_refusal(self, p, rec, why) -> None:
        pass

    # System.snapshot/restore: the counters come back with the machine.
    def save_state(self) -> tuple:
        return [(t.seen, len(t.fired)) for t in self.triggers], len(self.vdso_calls)

    def restore_state(self, st: tuple) -> None:
        counts, ncalls = st
        for t, (seen, nfired) in zip(self.triggers, counts):
            t.seen = seen
            del t.fired[nfired:]
        del self.vdso_calls[ncalls:]

    # ---------------------------------------------------------------- occurrences
    def _on_vdso_entry(self, p: "Process") -> None:
        regs = tuple(p.reg(r) for r in ("RDI", "RSI", "RDX", "RCX", "R8"))
        self.vdso_calls.append(VdsoCall(p.pid, p.ctx.index, regs))
        for t in self.triggers:
            if t.where == "getrandom" and t.due():
                call = len(self.vdso_calls)
                p.at_index(p.ctx.index + t.at, lambda q, t=t, c=call: self._fire(q, t, f"getrandom call {c}"))

    def _on_syscall_entry(self, p: "Process", rec: "SyscallRecord") -> None:
        for t in self.triggers:
            if t.where == "syscall" and t.name == rec.name and t.due():
                where = f"syscall {rec.name} #{t.seen}"
                if t.kind == "fork" or t.kind.startswith("signal:"):
                    # Carried out as the syscall returns to user mode.
                    p.at_index(p.ctx.index, lambda q, t=t, w=where: self._fire(q, t, w))
                    p.ctx.stop_requested = True
                else:
                    self._fire(p, t, where)

    def _place_symbols(self, p: "Process") -> None:
        placed = self._placed.setdefault(p, set())
        for t in self.triggers:
            if t.where != "sym":
                continue
            for addr in self._resolve(p, t.name):
                key = (t.name, addr + t.offset)
                if key in placed:
                    continue
                placed.add(key)
                p.watch(addr + t.offset, lambda q, t=t: self._on_symbol(q, t))

    def _on_symbol(self, p: "Process", t: Trigger) -> None:
        if t.due():
            self._fire(p, t, f"{t.name}{'+' + hex(t.offset) if t.offset else ''} #{t.seen}")

    def _resolve(self, p: "Process", name: str) -> list[int]:
        """Where NAME is in p now: the vDSO, and every file mapped at offset 0
        (its load base) whose symbol tables name it."""
        return [addr for _, addr in self._symbols.resolve(p, name)]

    # ---------------------------------------------------------------- carrying out
    def _fire(self, p: "Process", t: Trigger, where: str) -> None:
        ctx = p.ctx
        if ctx.done:
            return
        rec = {"spec": t.spec, "kind": t.kind, "where": where, "pid": p.pid, "index": ctx.index,
               "rip": hex(ctx.rip)}
        rec.update(carry_out(p, t.kind))
        t.fired.append(rec)


def carry_out(p: "Process", kind: str) -> dict:
    """Do KIND (a kind of --inject) to p now, at its current instruction
    boundary; returns what to record of it (the child's pid, the signal).
    A signal is delivered at once, to the program's handler when it has one."""
    ctx = p.ctx
    if kind == "fork":
        child = p.copy_process(ctx)
        p.charge(ctx, "inject", ctx.rip, {"event": "fork", "child": child.pid},
                 cycles=p.kernel.profile.event_cost("fork"))
        return {"child": child.pid}
    if kind.startswith("signal:"):
        signo = parse_signal(kind[7:])
        p.send(signo, SI_KERNEL, None)
        p.charge(ctx, "inject", ctx.rip, {"event": kind}, cycles=0)
        p.exit_to_user_mode(ctx)
        return {"signal": signame(signo)}
    inject.apply(p, ctx, Injection(ctx.index, kind))
    return {}
