"""The native sweep: every instruction boundary of one getrandom call on the
running kernel, every event, each run recorded.

How a boundary is reached (measured choice, see the package docstring):
one *walker* process single-steps the swept call once, boundary by boundary;
at boundary i it forks (an injected fork()) and the fork child, given the
walker's state pages back (VM_WIPEONFORK emptied them), is the process at i.
The event is applied to the child, which then runs on at full speed under
PTRACE_SYSCALL.  A whole sweep thus costs n single steps plus one fork per
(boundary, event), instead of re-stepping a prefix for every boundary.

What keeps the walker honest:
* its path is the baseline's: rip at every boundary is checked against the
  baseline's single-stepped trace;
* the kernel's generation is global.  A walker whose warm state no longer
  matches vdso_rng_data.generation (a reseed event, or the crng's own
  periodic reseed) would take the reseed path at its next generation check,
  so it is replaced by a fresh one (fork of the parked parent, warm calls,
  stepped to i).  Reseed runs are therefore parked (children stopped at
  their boundary, up to PARK_LIMIT at a time) and run after the walker has
  moved on; each parked child read everything it read before its boundary
  in the old world, exactly as if the reseed happened at its boundary.
"""
from __future__ import annotations

import contextlib
import os
import time
from dataclasses import dataclass, field

import emulator.twin.events as ev
import emulator.twin.memory as memory_mod
import emulator.twin.oom as oom_mod
from emulator.twin.errors import TwinError, TwinUnavailable
from emulator.twin.process import Parked, TwinConfig, host_generation_reader
from emulator.twin.records import Baseline, EventRecord, NativeCall, NativeRun
from emulator.twin.tracee import SyscallObs, Tracee
from emulator.twin.walk import Stepper
from vdso.abi import STATE_GENERATION, STATE_SIZE

EVENTS = ("none", "drop", "reseed", "fork", "reenter", "drop+reenter", "oom", "oom:K", "not-ready")
PARK_LIMIT = 512                  # reseed runs parked at once (each a stopped tiny process)
WALKER_RETRIES = 5                # fresh walkers in a row before a moving generation is an error


def parse_event(name: str) -> list[str]:
    """'drop+reenter' -> ['drop', 'reenter'], validated."""
    parts = name.split("+")
    for p in parts:
        if p not in ("none", "drop", "reseed", "fork", "reenter", "oom", "not-ready") and not (
                p.startswith("oom:") and p[4:].isdigit() and int(p[4:]) > 0):
            raise TwinError(f"event {name!r}: unknown part {p!r} (known: {', '.join(EVENTS)})")
    return parts


def why_not(event: str) -> str:
    """'' if the event can be made natively here, else the one-line reason."""
    for p in parse_event(event):
        if p == "not-ready":
            return ev.NOT_READY_REASON
        why = {"drop": ev.can_drop, "reseed": ev.can_reseed}.get(p, lambda: "")()
        if not why and p.startswith("oom"):
            why = oom_mod.unavailable()
        if why:
            return why
    return ""


@dataclass
class _Walker:
    t: Tracee
    stepper: Stepper
    gen: int                      # the kernel's generation when it was made
    regs: object = None
    i: int = 0                    # boundary it stands at
    prefix: list[SyscallObs] = field(default_factory=list)   # syscalls of the swept call before i
    pre: dict | None = None       # its watched pages at boundary 0 (Twin(memory=True))
    warm: list[NativeCall] = field(default_factory=list)    # its warm calls


@contextlib.contextmanager
def pinned(cpu: int | None):
    """Pin the calling thread (and so every tracee forked while pinned) to one
    CPU.  A ptrace stop/resume across CPUs costs an IPI and a wake-up on the
    other side: measured here 22k steps/s unpinned vs 54k/s pinned (C), fork
    560 vs 150 us."""
    if cpu is None:
        yield
        return
    old = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {cpu})
    try:
        yield
    finally:
        os.sched_setaffinity(0, old)


class Twin:
    """One configuration on the running kernel.  Use as a context manager;
    every process it made is killed and reaped on exit."""

    def __init__(self, cfg: TwinConfig, cpu: int | None = None, oom_killer: bool = False, memory: bool = False):
        """cpu: None (unpinned), -1 (the lowest CPU we may use) or a CPU number.
        oom_killer: leave the memcg OOM killer on for oom events (the kernel's
        default: the tracee is OOM-killed) instead of the emulator's model.
        memory: record the watched pages (memory.py) at each walker's entry and
        after each run's swept call, for the oracle's Memory discipline."""
        self.cfg = cfg
        self.oom_killer = oom_killer
        self.memory = memory
        self.cpu = min(os.sched_getaffinity(0)) if cpu == -1 else cpu
        self._pin = pinned(self.cpu)
        self._pin.__enter__()
        try:
            self.parked = Parked(cfg)
            self.generation = host_generation_reader()
        except BaseException:
            self._pin.__exit__(None, None, None)
            raise
        self.layout = self.parked.layout
        self.caller = self.parked.caller
        self.watched = memory_mod.watched_pages(self.layout)
        self.cache: dict[int, int] = {}
        self.base: Baseline | None = None
        self.K = cfg.calls_before + 1
        self._oom = None

    def __enter__(self) -> "Twin":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        try:
            if self._oom is not None:
                self._oom.close()
            self.parked.close()
        finally:
            self._pin.__exit__(None, None, None)

    # ---- walkers -------------------------------------------------------------------
    def _new_walker(self) -> tuple[_Walker, list[NativeCall]]:
        """A walker at boundary 0.  Its generation is the kernel's when it was
        made; a warm state holding another one (the crng reseeded between the
        warm call and now) would send the swept call down the reseed path, so
        such a walker is refused and made again."""
        for _ in range(WALKER_RETRIES):
            t, warm = self.parked.walker()
            gen = self.generation()
            state = self.caller.state_bytes(t)
            sgen = int.from_bytes(state[STATE_GENERATION:STATE_GENERATION + 8], "little")
            if sgen not in (0, gen):
                t.kill()
                continue
            w = _Walker(t, Stepper(t, self.cache), gen, warm=warm)
            t.step()                              # the caller's `call`: not part of the call's count
            w.regs = t.regs()
            if self.memory:
                w.pre = memory_mod.image(t, self.layout, self.watched)
            if w.regs.rip != self.layout.func:
                t.kill()
                raise TwinError(f"walker {t.pid}: after the call, rip {w.regs.rip:#x} is not __vdso_getrandom")
            return w, warm
        raise TwinError("the kernel's generation kept moving: no stable walker")

    def _advance(self, w: _Walker) -> None:
        w.regs, sc = w.stepper.step(w.regs)
        if sc is not None:
            sc.step = w.i
            w.prefix.append(sc)
        w.i += 1
        b = self.base
        if b is not None:
            want = b.rips[w.i] if w.i < b.n else self.parked.image.after_call
            if w.regs.rip != want:
                raise TwinError(f"walker {w.t.pid} left the baseline's path at boundary {w.i}: rip "
                                f"{w.regs.rip:#x}, baseline {want:#x} (generation {self.generation()}, "
                                f"walker's {w.gen})")

    def _stale(self, w: _Walker) -> bool:
        return w.i < self.base.n and self.generation() != w.gen

    def _walker_at(self, w: _Walker | None, i: int) -> _Walker:
        for _ in range(WALKER_RETRIES):
            if w is not None and (w.i > i or self._stale(w)):
                w.t.kill()
                w = None
            if w is None:
                w, _ = self._new_walker()
            while w.i < i:
                self._advance(w)
            if not self._stale(w):
                return w
        w.t.kill()
        raise TwinError(f"the kernel's generation kept moving: no stable walker to boundary {i}")

    # ---- baseline ------------------------------------------------------------------
    def baseline(self) -> Baseline:
        """The swept call undisturbed, single-stepped whole: n, the rip of every
        boundary, its syscalls.  Redone if the generation moved meanwhile."""
        for _ in range(WALKER_RETRIES):
            w, warm = self._new_walker()
            try:
                state_before = self.caller.state_bytes(w.t)
                rips = []
                after = self.parked.image.after_call
                while w.regs.rip != after:
                    if w.i >= self.cfg.step_limit:
                        raise TwinError(f"baseline: no return within {self.cfg.step_limit} instructions")
                    rips.append(w.regs.rip)
                    self._advance(w)
                if self.generation() != w.gen:
                    continue
                call = self._returned(w.t, f"call {self.K} [parent]", "swept", w.prefix, state_before)
                call.instructions = w.i
                self.base = Baseline(w.i, w.stepper.raw_steps, rips, call, warm, w.gen)
                return self.base
            finally:
                w.t.kill()
        raise TwinError("baseline: the kernel's generation kept moving")

    def _returned(self, t: Tracee, label: str, role: str, syscalls: list, state_before: bytes | None) -> NativeCall:
        """Record a call whose `ret` has just executed (rip at after_call)."""
        r = t.regs()
        ret = r.rax - (1 << 64) if r.rax >> 63 else r.rax
        L = self.layout
        c = NativeCall(label, role, self.cfg.size, "returned", ret, buffer=L.buffer, state=L.state,
                       state_before=state_before, syscalls=list(syscalls))
        if ret > 0:
            c.output = t.read(L.buffer, min(ret, self.cfg.size))
        c.state_after = self.caller.state_bytes(t)
        return c

    # ---- sweeping ------------------------------------------------------------------
    def sweep(self, events: list[str], start: int = 0, stop: int | None = None, emit=None,
              every: int = 1) -> list[NativeRun]:
        """Runs for every `every`-th boundary in [start, stop) (default: 0..n
        inclusive, n meaning after the return) and every event.  emit(run) is
        called as each run completes; the runs are also returned (unless emit
        is given)."""
        for e in events:
            parse_event(e)
        if self.base is None:
            self.baseline()
        n = self.base.n
        stop = n + 1 if stop is None else min(stop, n + 1)
        out: list[NativeRun] = []
        sink = emit or out.append
        local = [e for e in events if "reseed" not in parse_event(e)]
        glob = [e for e in events if "reseed" in parse_event(e)]
        points = range(start, stop, max(1, every))
        if local:
            self._walk(local, points, sink, park=False)
        if glob:
            self._walk(glob, points, sink, park=True)
        return out

    def run_at(self, i: int, event: str) -> NativeRun:
        """One (boundary, event) run, alone: a reproduction."""
        out: list[NativeRun] = []
        self.sweep([event], i, i + 1, out.append)
        return out[0]

    def _walk(self, events: list[str], points: range, sink, park: bool) -> None:
        w: _Walker | None = None
        held: list[tuple[NativeRun, Tracee, list[SyscallObs]]] = []
        try:
            for i in points:
                w = self._walker_at(w, i)
                for e in events:
                    parts = parse_event(e)
                    run = NativeRun(i, e, w.regs.rip if i < self.base.n else 0, rsp_at_i=w.regs.rsp, pre=w.pre,
                                    warm=w.warm)
                    why = self._unavailable(parts)
                    if why:
                        run.skipped = why
                        sink(run)
                        continue
                    c = w.t.fork(self.cfg.seconds)
                    try:
                        ev.copy_state_pages(w.t, c, self.layout)
                        run.state_at_i = self.caller.state_bytes(c)
                        run.buffer_at_i = c.read(self.layout.buffer, self.cfg.size)
                    except BaseException:
                        c.kill()
                        raise
                    if park:
                        held.append((run, c, list(w.prefix)))
                    else:
                        # The copy's state was made under the walker's generation.  Forking
                        # it can itself set off the crng's periodic reseed (fork draws a
                        # stack canary), so the run is measured from w.gen, not from now.
                        run.generation_before = w.gen
                        sink(self._finish(run, c, list(w.prefix)))
                if len(held) >= PARK_LIMIT:
                    self._flush(held, sink)
            self._flush(held, sink)
        finally:
            for _, c, _ in held:
                c.kill()
            if w is not None:
                w.t.kill()

    def _flush(self, held, sink) -> None:
        while held:
            run, c, prefix = held.pop(0)
            sink(self._finish(run, c, prefix))

    def _unavailable(self, parts: list[str]) -> str:
        return why_not("+".join(parts))

    # ---- one run -------------------------------------------------------------------
    def _bounded(self, t: Tracee, limiter, make_call) -> NativeCall:
        """Run a call; under an active memory limit, a call that hits the time
        bound is a livelock: say where it spins, then lift the limit and kill."""
        if limiter is None or limiter.lifted:
            return make_call()
        with oom_mod.paced(t.pid, enabled=limiter.pace is not None):
            call = make_call(on_poll=limiter.poll, kill_on_timeout=False, pace=limiter.pace)
        if call.outcome == "timeout":
            call.outcome = "livelock"
            call.detail, call.rip = limiter.diagnose(t, self.layout)
            limiter.lift()
            t.kill()
        return call

    def _finish(self, run: NativeRun, c: Tracee, prefix: list[SyscallObs]) -> NativeRun:
        """Apply the run's event to c (at boundary run.i) and run every process
        to the end of its further calls; c and its children are killed after."""
        t0 = time.monotonic()
        procs: list[tuple[str, Tracee]] = [("parent", c)]
        n, K, cfg = self.base.n, self.K, self.cfg
        returned_already = run.i >= n
        try:
            # A parked (reseed) run is measured from when it is finished: the runs
            # finished before it moved the generation on purpose.
            run.generation_before = run.generation_before or self.generation()
            nested_ok = True
            limiter = None
            for p in parse_event(run.event):
                if p == "drop":
                    run.events.append(ev.drop(c, self.layout))
                elif p == "reseed":
                    run.events.append(ev.reseed(c, self.layout))
                elif p == "fork":
                    child = c.fork(cfg.seconds)
                    procs.append(("child", child))
                    cstate = self.caller.state_bytes(child)
                    run.events.append(EventRecord("fork", True, f"child {child.pid}: state "
                                                  f"{'reads zeros' if not any(cstate) else 'NOT wiped'}", cstate))
                elif p == "reenter":
                    nested = ev.reenter(c, self.caller, f"call {K} [handler]", cfg.seconds)
                    run.calls.append(nested)
                    run.events.append(EventRecord("reenter", True, f"nested call {nested.outcome}"))
                    nested_ok = nested.outcome == "returned"
                elif p.startswith("oom"):
                    if self._oom is None:
                        self._oom = oom_mod.MemoryLimit(self.oom_killer)
                    limiter = self._oom
                    run.events.append(limiter.apply(c, self.layout, p))
                elif p == "none":
                    run.events.append(EventRecord("none", True))
            swept_before = self.base.call.state_before
            for pname, t in procs:
                label = f"call {K} [{pname}]"
                role = "swept" if pname == "parent" else "child"
                if not nested_ok and pname == "parent":
                    run.calls.append(NativeCall(label, role, cfg.size, "not-run", detail="the nested call did not return"))
                    continue
                if returned_already:
                    if pname == "parent":
                        run.calls.append(self._returned(t, label, role, prefix, swept_before))
                    continue
                # A fork child's call began in the parent: the prefix's syscalls are its history too.
                run.calls.append(self._bounded(t, limiter, lambda **kw: self.caller.finish(
                    t, label, role, state_before=swept_before, prior=prefix, **kw)))
            if limiter is not None and not returned_already:
                limiter.release(c)                 # further calls in a healthy world again
            if self.memory and (limiter is None or limiter.lifted):
                for pname, t in procs:
                    if t.alive:
                        run.memory[pname] = memory_mod.image(t, self.layout, self.watched)
            if all(x.outcome == "returned" for x in run.calls):
                for pname, t in procs:
                    for k in range(cfg.after):
                        if k == 1 and limiter is not None:
                            limiter.release(c)
                        label = f"call {K + 1 + k} [{pname}]"
                        run.calls.append(self._bounded(t, limiter, lambda **kw: self.caller.call(
                            t, label, "after", size=cfg.after_size, **kw)))
                        if run.calls[-1].outcome != "returned":
                            break
            run.generation_after = self.generation()
        finally:
            for _, t in reversed(procs):
                t.kill()
            if limiter is not None:
                limiter.end_run()
                run.failed_charges = limiter.failed_charges(limiter.last_failcnt)
            run.seconds = time.monotonic() - t0
        return run
