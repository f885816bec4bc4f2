"""The sweep's harness: one configuration's process, walked boundary by
boundary, each boundary's event run to completion and judged.

For a configuration:

1. baseline: the swept call (call K+1) runs undisturbed; n = its instructions;
2. for every boundary i in [0, n] and every event, the call runs to i (from a
   snapshot taken at i: Machine.snapshot/restore, never a replayed prefix), the
   event happens (config.py lists them), and everything runs to completion.
   A fork's child resumes mid-call at i on this Machine (its droppable VMAs
   wiped); a reentry runs a complete nested call the way a signal handler
   would (nested_call).  At i = n the event falls after the return, before
   the next call.  Every process then makes --after further calls (memory
   back, RNG ready);
3. the oracle judges every call of the run (oracle.py).
"""
from __future__ import annotations

import copy
import dataclasses

from emulator import inject as inject_mod
from emulator import machine as machine_mod
from emulator.errors import UsageError
from emulator.kernel import SENTINEL_PAGE
from emulator.machine import Machine
from emulator.records import CallContext, CallResult, Injection
from emulator.run import RunConfig, new_process
from emulator.sweep.config import PLACEMENTS, SweepConfig
from emulator.sweep.keystream import StreamCache
from emulator.sweep.oracle import CallObs, Judge, Verdict, Violation, expected_ret, memory_diff
from emulator.sweep.records import BaselineRecord, RunRecord, SweepTask
from emulator.sweep.summary import summarize
from emulator.sweep.symbols import symbolize
from mm import flags as F
from vdso.abi import STATE_IN_USE, STATE_SIZE
from vdso.image import PAGE_SIZE, VdsoImage

RED_ZONE = 128            # x86-64 SysV: the 128 bytes below rsp belong to the interrupted code
SIGFRAME = 1024           # room a signal frame takes below the red zone before the handler runs
FRAME_LIMIT = 4096        # a call's own stack frame: at most this far below its entry rsp
BOUND_FACTOR = 4          # Termination: a call ends within 4 n + BOUND_EXTRA instructions
BOUND_EXTRA = 20_000
WALK_BUDGET = 50_000_000


def _ctx_copy(ctx: CallContext) -> CallContext:
    """A copy of a call context that shares nothing mutable with it (cheaper
    than the deepcopy Machine.restore makes: records already written are
    immutable, except the last fault record, which a refault may fold into)."""
    r = ctx.result
    faults = list(r.faults)
    if faults:
        faults[-1] = copy.copy(faults[-1])
    res = dataclasses.replace(r, faults=faults, syscalls=list(r.syscalls), children=list(r.children),
                              injections=list(r.injections))
    return dataclasses.replace(ctx, result=res, injections=list(ctx.injections))


class CallSnapshot:
    """Machine snapshot (mm, CPU, kernel) plus our own copy of the call context."""
    __slots__ = ("machine_snap", "ctx")

    def __init__(self, m: Machine, ctx: CallContext):
        self.machine_snap = m.snapshot(None)
        self.ctx = _ctx_copy(ctx)

    def restore(self, m: Machine) -> CallContext:
        m.restore(self.machine_snap)
        return _ctx_copy(self.ctx)


def _kernel_key(kernel) -> tuple:
    st = kernel.save_state()
    return (st["generation"], st["is_ready"], repr(st["fail"]), hash(st["entropy"]))


class Harness:
    """One configuration's process: warmed by calls_before calls, snapshotted
    at the swept call's entry (S0), then walked by boundaries()."""

    def __init__(self, image: VdsoImage, cfg: SweepConfig, streams: StreamCache | None = None):
        self.image = image
        self.cfg = cfg
        size = cfg.size
        rc = RunConfig(image=image, sizes=[max(cfg.max_size, 1)], calls=1, seed=cfg.seed, memory_pages=cfg.memory_pages,
                       swap_pages=cfg.swap_pages, droppable_oom=cfg.droppable_oom,
                       livelock_limit=cfg.livelock_limit, profile=cfg.profile)
        self.kernel, self.m, self.caller = new_process(rc)
        self.image = self.kernel.image          # as placed in the process: rips symbolise against it
        m, caller = self.m, self.caller
        if cfg.placement == "start":
            self.state = caller.states[0]
        else:
            base = m.mm.mmap(0, 2 * PAGE_SIZE, F.PROT_READ | F.PROT_WRITE, F.MAP_DROPPABLE | F.MAP_ANONYMOUS, -1, 0)
            if base < 0:
                raise UsageError(f"sweep: cannot map a droppable state region (errno {-base})")
            m.sync_range(base, 2 * PAGE_SIZE)
            self.state = base + PLACEMENTS[cfg.placement]
        # The signal handler's own buffer.
        nsize = cfg.size_of("nested")
        hlen = max(PAGE_SIZE, (nsize + PAGE_SIZE - 1) // PAGE_SIZE * PAGE_SIZE)
        self.hbuf = m.mm.mmap(0, hlen, F.PROT_READ | F.PROT_WRITE, F.MAP_PRIVATE | F.MAP_ANONYMOUS, -1, 0)
        m.sync_range(self.hbuf, hlen)
        # A caller's buffers and stack are resident (a first touch under OOM would
        # OOM-kill the process in its own memory, not in the vDSO's).
        for addr, length in ((caller.buffer, caller.buffer_size), (self.hbuf, hlen),
                             (machine_mod.STACK_TOP - 2 * PAGE_SIZE, 2 * PAGE_SIZE)):
            m.user_write(addr, bytes(length))
        self.droppable_pages = {va for vma in m.mm.vmas if vma.vm_flags & F.VM_DROPPABLE
                                for va in range(vma.start, vma.end, PAGE_SIZE)}
        self.K = cfg.calls_before + 1
        self.judge = Judge(streams)
        self.n: int | None = None
        self.bound: int | None = None
        self.warm_violations: list[Violation] = []
        for k in range(cfg.calls_before):
            before = m.read(self.state, STATE_SIZE)
            wsize = cfg.size_of("warm")
            ctx = m.prepare_call(caller.func, self.args(size=wsize), size=wsize)
            rsp = m.reg("RSP")
            pre = self.mem_image(m)
            m.run(ctx)
            obs = self.observe(m, ctx.result, f"call {k + 1} [parent]", "warm")
            obs.state_before = before
            obs.memory = memory_diff(pre, self.mem_image(m), self.allowed(rsp=rsp, size=wsize), set())
            self.warm_violations += self.judge.judge(obs).violations
        self.ctx0 = m.prepare_call(caller.func, self.args(), size=size)
        self.entry_rsp = m.reg("RSP")
        self.pre = self.mem_image(m)
        self.S0 = CallSnapshot(m, self.ctx0)
        self.ref_frames = self.frames(m)      # S0's frames: snapshot frames are never written
        self._memo: dict[tuple, tuple[CallObs, dict]] = {}

    def close(self) -> None:
        for ch in self.m.children:
            ch.close()
        self.m.close()

    def args(self, buffer: int | None = None, size: int | None = None) -> list[int]:
        return self.caller.args(self.cfg.size if size is None else size, self.cfg.flags, self.state, buffer)

    # ---- observation --------------------------------------------------------------
    def mem_image(self, m: Machine) -> dict[int, bytes]:
        out = {}
        for vma in m.mm.vmas:
            for va in range(vma.start, vma.end, PAGE_SIZE):
                out[va] = m.mm.read(va, PAGE_SIZE)
        return out

    def frames(self, m: Machine) -> dict[int, object]:
        out = {}
        for vma in m.mm.vmas:
            for va in range(vma.start, vma.end, PAGE_SIZE):
                pte = m.mm.pte(va)
                out[va] = pte.frame if pte is not None else None
        return out

    def changed_pages(self, m: Machine) -> dict[int, bytes]:
        """Pages whose frame is no longer the one at the start of the call (the
        snapshot keeps that frame unwritten, so an unchanged frame means unchanged
        bytes); only those need a byte diff."""
        out = {}
        ref = self.ref_frames
        for vma in m.mm.vmas:
            for va in range(vma.start, vma.end, PAGE_SIZE):
                pte = m.mm.pte(va)
                f = pte.frame if pte is not None else None
                if va not in ref or f is not ref[va]:
                    out[va] = m.mm.read(va, PAGE_SIZE)
        return out

    def observe(self, m: Machine, res: CallResult, label: str, role: str, buffer: int | None = None,
                livelock_expected: bool = False) -> CallObs:
        buf = self.caller.buffer if buffer is None else buffer
        size = self.cfg.size_of(role)
        obs = CallObs(label=label, role=role, size=size, expected_ret=expected_ret(size, self.cfg.straddles),
                      outcome=res.outcome,
                      ret=res.ret, buffer=buf, state=self.state, syscalls=list(res.syscalls),
                      outcome_detail=res.outcome_detail, instructions=res.instructions, bound=self.bound,
                      livelock_expected=livelock_expected, policy=self.cfg.droppable_oom)
        if res.outcome == "returned":
            if res.ret is not None and res.ret > 0:
                obs.output = m.read(buf, min(res.ret, size))
            obs.state_after = m.read(self.state, STATE_SIZE)
        elif res.outcome == "livelock":
            obs.livelock_user, obs.livelock_where = self.livelock_where(res)
        return obs

    def livelock_where(self, res: CallResult) -> tuple[bool, str]:
        for s in res.syscalls:
            if s.outcome == "livelock":
                return False, (f"kernel copy_to_user of {s.name} into {self.where_data(s.data_addr + len(s.data))} "
                               f"(syscall at {symbolize(self.image, s.rip)})")
        for f in reversed(res.faults):
            if f.decision == "livelock":
                if f.user:
                    page = self.state & ~(PAGE_SIZE - 1)
                    target = ("the state's page" if page <= f.address < self.state + STATE_SIZE + PAGE_SIZE
                              else self.where_data(f.address))
                    return True, f"user write at {symbolize(self.image, f.rip)} to {target}"
                return False, f"kernel copy ({f.insn}) into {self.where_data(f.address)}"
        return False, res.outcome_detail

    def where_data(self, addr: int) -> str:
        if self.state <= addr < self.state + STATE_SIZE:
            field = {0: "batch", 96: "key", 128: "generation", 136: "pos", 137: "in_use"}
            off = addr - self.state
            name = next((f"{n}+{off - o}" if off != o else n for o, n in sorted(field.items(), reverse=True)
                         if off >= o), "")
            return f"state->{name}"
        if self.caller.buffer <= addr < self.caller.buffer + max(1, self.cfg.size):
            return f"buffer+{addr - self.caller.buffer:#x}"
        return f"{addr:#x}"

    # ---- baseline -----------------------------------------------------------------
    def baseline(self) -> BaselineRecord:
        m = self.m
        c = self.S0.restore(m)
        c.budget = WALK_BUDGET
        m.run(c)
        self.n = c.index
        self.bound = BOUND_FACTOR * self.n + BOUND_EXTRA
        judge = self.judge.clone()
        obs = self.observe(m, c.result, f"call {self.K} [parent]", "swept")
        obs.memory = memory_diff(self.pre, self.changed_pages(m), self.allowed(), set())
        v = judge.judge(obs)
        self.last_verdicts = [(obs, v)]
        return BaselineRecord(0, self.n, v.cls, [x.as_dict() for x in v.violations],
                              [x.as_dict() for x in self.warm_violations], c.result.ret, c.result.cycles)

    def allowed(self, extra: list[tuple[int, int]] = (), rsp: int | None = None,
                size: int | None = None) -> list[tuple[int, int]]:
        size = self.cfg.size if size is None else size
        rsp = self.entry_rsp if rsp is None else rsp
        return [(self.caller.buffer, self.caller.buffer + size), (self.state, self.state + STATE_SIZE),
                (rsp - FRAME_LIMIT, rsp), *extra]

    # ---- the walk -----------------------------------------------------------------
    def boundaries(self, task: SweepTask, emit, mark=None) -> None:
        if self.n is None or self.n != task.n:
            self.baseline()
        m = self.m
        for i in range(task.start, task.stop):
            # Boundary i is reached from S0 in one run, never by stepping from
            # i - 1: the cycle model charges every stop, so a path through i
            # earlier stops would price the call by how the walk was chunked.
            # One stop at i is what `faultpath run --inject EVENT@K:i` makes.
            c = self.S0.restore(m)
            c.budget = WALK_BUDGET
            if i:
                m.run(c, stop_at=i)
            snap = CallSnapshot(m, c)
            rip = SENTINEL_PAGE if c.done else c.rip
            for ei, ev in enumerate(task.events):
                if (i, ev) in task.skip:
                    continue
                if mark is not None:
                    mark(i, ei)
                try:
                    rec = self.one_run(snap, i, ev, rip, task.ci)
                    if task.detail:
                        rec.calls = self.summaries()
                except Exception as e:       # a Python-level failure stays with its run
                    rec = RunRecord(task.ci, i, ev, "crash", rip, [{"invariant": "crash", "call": "harness",
                                                                   "detail": f"{type(e).__name__}: {e}"}])
                emit(rec)

    def one_run(self, snap: "CallSnapshot", i: int, event: str, rip: int, ci: int) -> RunRecord:
        m, kernel, cfg = self.m, self.kernel, self.cfg
        c = snap.restore(m)
        c.budget = self.bound
        judge = self.judge.clone()
        K = self.K
        plabel, clabel, hlabel = f"call {K} [parent]", f"call {K} [child]", f"call {K} [handler]"
        persistent = event == "oom"
        wiped = event in ("drop", "drop+reenter") or event.startswith("oom")
        injs: list[Injection] = []
        if event == "drop+reenter":
            # Reclaim takes the state at i, before the handler runs (now, at i,
            # whether or not the call has returned).
            inject_mod.apply(m, c, Injection(i, "drop"))
        elif event in ("drop", "reseed", "not-ready"):
            injs = [Injection(i, event)]
        elif event.startswith("oom"):
            injs = [Injection(i, "drop"), Injection(i, event)]
        after_return = c.done             # i == n: the event falls after the return, before the next call
        if after_return:
            for inj in injs:
                inject_mod.apply(m, c, inj)
        else:
            c.injections = injs
        swept: list[CallObs] = []         # the swept call(s), in the order they ran
        extra_allowed: list[tuple[int, int]] = []
        child_snap = None
        outer_alive = True
        if event == "fork":
            # The child first (as inject.apply does): this process's memory with the
            # droppable VMAs wiped (VM_WIPEONFORK), resuming mid-call at i.  It runs
            # on this Machine from the snapshot at i; the kernel (entropy,
            # generation) carries over from one process's phase to the next.
            fork_buf = m.read(self.caller.buffer, cfg.size)
            m.mm.drop_droppable()
            m.sync()
            if not c.done:
                m.run(c)
                cobs = self.observe(m, c.result, clabel, "child")
                cobs.inherited = fork_buf
                cobs.memory = memory_diff(self.pre, self.changed_pages(m), self.allowed(), self.droppable_pages)
                swept.append(cobs)
            child_snap = CallSnapshot(m, c)
            ks = kernel.save_state()
            c = snap.restore(m)
            kernel.restore_state(ks)
            c.budget = self.bound
        elif event in ("reenter", "drop+reenter"):
            nested, nrsp = self.reenter(c, hlabel)
            nested.pair = plabel
            swept.append(nested)
            extra_allowed = [(self.hbuf, self.hbuf + cfg.size_of("nested")), (nrsp - FRAME_LIMIT, nrsp + 8)]
            outer_alive = nested.outcome == "returned"
        if outer_alive:
            if not c.done:
                m.run(c)
            pobs = self.observe(m, c.result, plabel, "swept", livelock_expected=persistent)
            if event in ("reenter", "drop+reenter"):
                pobs.pair = hlabel
            pobs.memory = memory_diff(self.pre, self.changed_pages(m), self.allowed(extra_allowed),
                                      self.droppable_pages if wiped else set())
            for o in swept:
                if o.role == "child":
                    o.parent_output = pobs.output
            swept.append(pobs)
        for o in swept:                   # every key the kernel supplied in this run, whichever call got it
            judge.learn_syscalls(o.syscalls)
        verdicts: list[tuple[CallObs, Verdict]] = [(o, judge.judge(o)) for o in swept]
        # Further calls, in a healthy world again (memory back, RNG ready) unless
        # the event came after the return: then the next call is the one it hits.
        if all(o.outcome == "returned" for o in swept):
            if not after_return:
                kernel.phys.fail_allocations(None)
                kernel.set_ready(True)
            verdicts += self.further(m, "parent", judge, persistent and after_return)
            if child_snap is not None:
                ks = kernel.save_state()
                child_snap.restore(m)
                kernel.restore_state(ks)
                verdicts += self.further(m, "child", judge)
        self.last_observations = [o for o, _ in verdicts]
        self.last_verdicts = verdicts
        cycles = c.result.cycles if outer_alive and c.done else None
        rec = self.classify(ci, i, event, rip, verdicts, {o.label for o in swept}, cycles)
        if rec.outcome == "violation":
            rec.where = symbolize(self.image, rip)
        return rec

    def summaries(self) -> list:
        """The last run's (or baseline's) calls, judged, as CallSummary records."""
        return [summarize(o, v) for o, v in self.last_verdicts]

    def further(self, m: Machine, pname: str, judge: Judge, oom_first: bool = False) -> list[tuple[CallObs, Verdict]]:
        """The process's further calls.  The last one is memoised: a fresh call's
        behaviour depends only on the state's bytes and pages and on the kernel
        (generation, readiness, allocation failures, entropy position), so a run
        that leaves all of those as an earlier run did gets that run's call
        again (judged afresh against this run's history) without emulating it."""
        out = []
        kernel = self.kernel
        for k in range(self.cfg.after):
            if k == 1:
                kernel.phys.fail_allocations(None)
                kernel.set_ready(True)
            label = f"call {self.K + 1 + k} [{pname}]"
            expect = oom_first and k == 0
            before = m.read(self.state, STATE_SIZE)
            key = None
            if k == self.cfg.after - 1:
                key = (before, expect, self._pages_present(m), _kernel_key(kernel))
                hit = self._memo.get(key)
                if hit is not None:
                    tmpl, kafter = hit
                    kernel.restore_state(kafter)
                    o = dataclasses.replace(tmpl, label=label, syscalls=list(tmpl.syscalls))
                    out.append((o, judge.judge(o)))
                    break
            asize = self.cfg.size_of("after")
            ctx = m.prepare_call(self.caller.func, self.args(size=asize), size=asize)
            ctx.budget = self.bound
            m.run(ctx)
            o = self.observe(m, ctx.result, label, "after", livelock_expected=expect)
            o.state_before = before
            if key is not None:
                if len(self._memo) >= 512:
                    self._memo.pop(next(iter(self._memo)))
                self._memo[key] = (dataclasses.replace(o, syscalls=list(o.syscalls)), kernel.save_state())
            out.append((o, judge.judge(o)))
            if ctx.result.outcome != "returned":
                break
        return out

    def _pages_present(self, m: Machine) -> tuple:
        out = []
        for va in range(self.state & ~(PAGE_SIZE - 1), self.state + STATE_SIZE, PAGE_SIZE):
            pte = m.mm.pte(va)
            out.append(pte is not None and pte.frame is not None)
        return tuple(out)

    @staticmethod
    def classify(ci, i, event, rip, verdicts, swept_labels, cycles: float | None = None) -> RunRecord:
        viol = [x.as_dict() for _, v in verdicts for x in v.violations]
        if viol:
            return RunRecord(ci, i, event, "violation", rip, viol, cycles=cycles)
        lv = [v.livelock for _, v in verdicts if v.cls == "livelock"]
        if lv:
            return RunRecord(ci, i, event, "livelock", rip, [], lv[0], cycles)
        rank = {"ok-fast": 0, "ok-efault": 1, "ok-reseed": 2, "ok-fallback": 3}
        cls = max((v.cls for o, v in verdicts if o.label in swept_labels), key=lambda x: rank.get(x, 0),
                  default="ok-fast")
        return RunRecord(ci, i, event, cls, rip, cycles=cycles)

    def reenter(self, c: CallContext, label: str) -> tuple[CallObs, int]:
        """A signal handler's complete getrandom call with the same state (see
        nested_call); returns its observation and the handler's entry rsp."""
        m, cfg = self.m, self.cfg
        pte = m.mm.pte(self.state)
        backed = pte is not None and pte.frame is not None and not getattr(pte.frame, "is_zero", False)
        state_before = m.read(self.state, STATE_SIZE)
        box: dict = {}

        def around(phase: str, nrsp: int) -> None:
            box[phase] = self.mem_image(m)
            box["nrsp"] = nrsp

        nsize = cfg.size_of("nested")
        res = nested_call(m, self.caller.func, self.args(self.hbuf, nsize), nsize, self.bound, around)
        nrsp = box["nrsp"]
        obs = self.observe(m, res, label, "nested", buffer=self.hbuf)
        obs.state_before = state_before
        obs.must_fallback = bool(backed and state_before[STATE_IN_USE])
        obs.memory = memory_diff(box["before"], box["after"], [(self.hbuf, self.hbuf + nsize),
                                                              (self.state, self.state + STATE_SIZE),
                                                              (nrsp - FRAME_LIMIT, nrsp)], set())
        return obs, nrsp


def nested_call(m: Machine, func: int, args: list[int], size: int, budget: int, around=None) -> CallResult:
    """What a signal handler calling getrandom does to the interrupted code: the
    CPU state is saved, a complete call runs on the same stack below the red
    zone (and below room for a signal frame), then the registers come back and
    the interrupted call can go on.  around(phase, handler_rsp) is called just
    before ("before") and after ("after") the nested call runs."""
    saved = m.uc.context_save()
    try:
        rsp = m.reg("RSP")
        nrsp = ((rsp - RED_ZONE - SIGFRAME) & ~0xF) - 8       # (rsp + 8) % 16 == 0 at entry
        m.user_write(nrsp, SENTINEL_PAGE.to_bytes(8, "little"))
        if around is not None:
            around("before", nrsp)
        for r, v in zip(["RDI", "RSI", "RDX", "RCX", "R8", "R9"], args):
            m.set_reg(r, v & 0xFFFF_FFFF_FFFF_FFFF)
        m.set_reg("RSP", nrsp)
        m.set_reg("RIP", func)
        nctx = CallContext(result=CallResult(size=size, process="handler"), rip=func, budget=budget)
        m.run(nctx)
        if around is not None:
            around("after", nrsp)
        return nctx.result
    finally:
        m.uc.context_restore(saved)
