"""`faultpath sweep`: every instruction boundary of a getrandom call, every
event, judged by the oracle (emulator/sweep/oracle.py).

A *configuration* is one process set-up: image, request size, where the state
sits in its page (start, end, straddling two pages), how many calls warmed it
(--calls-before) and the OOM design.  For each configuration:

1. baseline: the swept call (call K+1) runs undisturbed; n = its instructions;
2. for every boundary i in [0, n] and every event, the call runs to i (from a
   snapshot taken at i: Machine.snapshot/restore, never a replayed prefix), the
   event happens, and everything runs to completion:
     drop       reclaim drops every droppable page (the state reads as zeros)
     oom        memory pressure: the droppable pages are dropped *and* every
                later allocation fails (without the drop the warm state page is
                present and no allocation would ever be attempted)
     oom:K      the same, but only the next K allocation attempts fail
     fork       a fork from a signal handler: the child (its state wiped by
                VM_WIPEONFORK) resumes mid-call at i; parent and child each
                finish the call and make further calls
     reenter    a signal handler calls getrandom with the same state: the CPU
                state is saved, a complete nested call runs on the same stack
                below the red zone, the registers are restored and the outer
                call continues
     reseed     the kernel's generation moves (crng reseed)
     not-ready  vdso_rng_data.is_ready is cleared
   At i = n the event falls after the return, before the next call.
   Every process then makes --after further calls (memory back, RNG ready);
3. the oracle judges every call of the run.

The unit of work is a Task (image, configuration, boundary range, events):
self-contained and picklable, run by worker processes (emulator/sweep/executors.py)
or on a Dask cluster.
"""
from __future__ import annotations

import copy
import dataclasses
import hashlib
import shlex
import time
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass, field

from emulator import inject as inject_mod
from emulator import machine as machine_mod
from emulator.errors import UsageError
from emulator.kernel import SENTINEL_PAGE
from emulator.machine import Machine
from emulator.records import CallContext, Injection
from emulator.sweep.oracle import (OUTCOMES, CallObs, Judge, StreamCache, Verdict, Violation, expected_ret,
                             memory_diff)
from emulator.records import CallResult
from emulator.run import RunConfig, new_process
from mm import flags as F
from vdso.abi import STATE_IN_USE, STATE_SIZE
from vdso.image import PAGE_SIZE, VdsoImage

EVENTS_ALL = ("drop", "oom", "oom:2", "fork", "reenter", "reseed", "not-ready")
EVENT_KINDS = ("drop", "oom", "oom:K", "fork", "reenter", "reseed", "not-ready")
PLACEMENTS = {"start": 0, "end": PAGE_SIZE - STATE_SIZE, "straddle": PAGE_SIZE - STATE_SIZE // 2}
RED_ZONE = 128            # x86-64 SysV: the 128 bytes below rsp belong to the interrupted code
SIGFRAME = 1024           # room a signal frame takes below the red zone before the handler runs
FRAME_LIMIT = 4096        # a call's own stack frame: at most this far below its entry rsp
SWEEP_LIVELOCK = 16       # refaults without progress before a spin is a livelock (persistent OOM
                          # never progresses; a transient oom:K needs K < this)
BOUND_FACTOR = 4          # Termination: a call ends within 4 n + BOUND_EXTRA instructions
BOUND_EXTRA = 20_000
WALK_BUDGET = 50_000_000


@dataclass(frozen=True)
class SweepConfig:
    size: int
    placement: str = "start"
    calls_before: int = 1
    droppable_oom: str = "skip"
    seed: int = 0
    memory_pages: int = 4096
    swap_pages: int = 0
    flags: int = 0
    after: int = 1
    livelock_limit: int = SWEEP_LIVELOCK

    @property
    def straddles(self) -> bool:
        off = PLACEMENTS[self.placement]
        return off + STATE_SIZE > PAGE_SIZE

    def label(self) -> str:
        return f"size {self.size}, state at {self.placement}, {self.calls_before} call(s) before"


@dataclass
class Task:
    task_id: int
    image: VdsoImage
    config: SweepConfig
    ci: int                              # configuration index (coordinator's)
    kind: str = "boundaries"             # baseline | boundaries
    start: int = 0
    stop: int = 0                        # exclusive
    events: tuple[str, ...] = ()
    n: int = 0                           # the baseline's instruction count
    skip: frozenset = frozenset()        # (i, event) pairs not to run (they crashed a worker)

    def runs(self) -> list[tuple[int, str]]:
        return [(i, ev) for i in range(self.start, self.stop) for ev in self.events if (i, ev) not in self.skip]


@dataclass
class RunRecord:
    ci: int
    i: int
    event: str
    outcome: str                                    # one of oracle.OUTCOMES
    rip: int = 0
    violations: list[dict] = field(default_factory=list)
    livelock: str = ""


@dataclass
class BaselineRecord:
    ci: int
    n: int
    outcome: str
    violations: list[dict] = field(default_factory=list)
    warm_violations: list[dict] = field(default_factory=list)
    ret: int | None = None


# --------------------------------------------------------------------------
# The harness: one configuration in one worker
# --------------------------------------------------------------------------

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


class _Snap:
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


_STREAMS = StreamCache()
_HARNESSES: dict[tuple, "Harness"] = {}


_BLOCK_CACHES: dict[tuple, object] = {}


def harness_for(image: VdsoImage, cfg: SweepConfig) -> "Harness":
    ikey = (image.name, image.base, hashlib.sha1(bytes(image.text)).digest(), image.rng_data_offset, image.abi)
    key = (ikey, cfg)
    h = _HARNESSES.get(key)
    if h is None:
        while len(_HARNESSES) >= 2:
            _HARNESSES.pop(next(iter(_HARNESSES))).close()
        h = _HARNESSES[key] = Harness(image, cfg)
        # Every configuration of an image runs the same code: one per-block
        # analysis (decode + cycle model) serves them all.  (Requested upstream.)
        shared = _BLOCK_CACHES.setdefault(ikey, h.m.blocks)
        h.m.blocks = shared
    return h


def symbolize(image: VdsoImage, rip: int) -> str:
    """`sym+off (file:line) [insn]` for an address in the image."""
    if rip == SENTINEL_PAGE:
        return "(after the return)"
    off = rip - image.base
    if not 0 <= off < len(image.text):
        return f"{rip:#x}"
    best = None
    for name, o in image.symbols.items():
        if o <= off and not name.startswith("__fp_") and (best is None or o > best[1]):
            best = (name, o)
    s = f"{best[0]}+{off - best[1]:#x}" if best else f"{image.name}+{off:#x}"
    line = image.source_lines.get(off)
    if line:
        s += f" ({line})"
    from vdso.insn import decode_one
    ins = decode_one(bytes(image.text[off:off + 15]), rip)
    return f"{s} [{ins.text if ins else '?'}]"


class Harness:
    def __init__(self, image: VdsoImage, cfg: SweepConfig):
        self.image = image
        self.cfg = cfg
        size = cfg.size
        rc = RunConfig(image=image, sizes=[max(size, 1)], calls=1, seed=cfg.seed, memory_pages=cfg.memory_pages,
                       swap_pages=cfg.swap_pages, droppable_oom=cfg.droppable_oom,
                       livelock_limit=cfg.livelock_limit)
        self.kernel, self.m, self.caller = new_process(rc)
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
        hlen = max(PAGE_SIZE, (size + PAGE_SIZE - 1) // PAGE_SIZE * PAGE_SIZE)
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
        self.expected = expected_ret(size, cfg.straddles)
        self.judge = Judge(_STREAMS)
        self.n: int | None = None
        self.bound: int | None = None
        self.warm_violations: list[Violation] = []
        for k in range(cfg.calls_before):
            before = m.read(self.state, STATE_SIZE)
            ctx = m.prepare_call(caller.func, self.args(), size=size)
            rsp = m.reg("RSP")
            pre = self.mem_image(m)
            m.run(ctx)
            obs = self.observe(m, ctx.result, f"call {k + 1} [parent]", "warm")
            obs.state_before = before
            obs.memory = memory_diff(pre, self.mem_image(m), self.allowed(rsp=rsp), set())
            self.warm_violations += self.judge.judge(obs).violations
        self.ctx0 = m.prepare_call(caller.func, self.args(), size=size)
        self.entry_rsp = m.reg("RSP")
        self.pre = self.mem_image(m)
        self.S0 = _Snap(m, self.ctx0)
        self.ref_frames = self.frames(m)      # S0's frames: snapshot frames are never written
        self._memo: dict[tuple, tuple[CallObs, dict]] = {}

    def close(self) -> None:
        for ch in self.m.children:
            ch.close()
        self.m.close()

    def args(self, buffer: int | None = None) -> list[int]:
        return self.caller.args(self.cfg.size, self.cfg.flags, self.state, buffer)

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
        size = self.cfg.size
        obs = CallObs(label=label, role=role, size=size, expected_ret=self.expected, outcome=res.outcome,
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
        return BaselineRecord(0, self.n, v.cls, [x.as_dict() for x in v.violations],
                              [x.as_dict() for x in self.warm_violations], c.result.ret)

    def allowed(self, extra: list[tuple[int, int]] = (), rsp: int | None = None) -> list[tuple[int, int]]:
        size = self.cfg.size
        rsp = self.entry_rsp if rsp is None else rsp
        return [(self.caller.buffer, self.caller.buffer + size), (self.state, self.state + STATE_SIZE),
                (rsp - FRAME_LIMIT, rsp), *extra]

    # ---- the walk -----------------------------------------------------------------
    def boundaries(self, task: Task, emit, mark=None) -> None:
        if self.n is None or self.n != task.n:
            self.baseline()
        m = self.m
        c = self.S0.restore(m)
        c.budget = WALK_BUDGET
        if task.start:
            m.run(c, stop_at=task.start)
        snap = _Snap(m, c)
        i = task.start
        while True:
            rip = SENTINEL_PAGE if c.done else c.rip
            for ei, ev in enumerate(task.events):
                if (i, ev) in task.skip:
                    continue
                if mark is not None:
                    mark(i, ei)
                try:
                    rec = self.one_run(snap, i, ev, rip, task.ci)
                except Exception as e:       # a Python-level failure stays with its run
                    rec = RunRecord(task.ci, i, ev, "crash", rip, [{"invariant": "crash", "call": "harness",
                                                                   "detail": f"{type(e).__name__}: {e}"}])
                emit(rec)
            if i + 1 >= task.stop:
                break
            c = snap.restore(m)
            m.run(c, stop_at=i + 1)
            snap = _Snap(m, c)
            i += 1

    def one_run(self, snap: "_Snap", i: int, event: str, rip: int, ci: int) -> RunRecord:
        m, kernel, cfg = self.m, self.kernel, self.cfg
        c = snap.restore(m)
        c.budget = self.bound
        judge = self.judge.clone()
        K = self.K
        plabel, clabel, hlabel = f"call {K} [parent]", f"call {K} [child]", f"call {K} [handler]"
        persistent = event == "oom"
        wiped = event == "drop" or event.startswith("oom")
        injs: list[Injection] = []
        if event in ("drop", "reseed", "not-ready"):
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
            child_snap = _Snap(m, c)
            ks = kernel.save_state()
            c = snap.restore(m)
            kernel.restore_state(ks)
            c.budget = self.bound
        elif event == "reenter":
            nested, nrsp = self.reenter(c, hlabel)
            nested.pair = plabel
            swept.append(nested)
            extra_allowed = [(self.hbuf, self.hbuf + cfg.size), (nrsp - FRAME_LIMIT, nrsp + 8)]
            outer_alive = nested.outcome == "returned"
        if outer_alive:
            if not c.done:
                m.run(c)
            pobs = self.observe(m, c.result, plabel, "swept", livelock_expected=persistent)
            if event == "reenter":
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
        return self.classify(ci, i, event, rip, verdicts, {o.label for o in swept})

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
            ctx = m.prepare_call(self.caller.func, self.args(), size=self.cfg.size)
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
    def classify(ci, i, event, rip, verdicts, swept_labels) -> RunRecord:
        viol = [x.as_dict() for _, v in verdicts for x in v.violations]
        if viol:
            return RunRecord(ci, i, event, "violation", rip, viol)
        lv = [v.livelock for _, v in verdicts if v.cls == "livelock"]
        if lv:
            return RunRecord(ci, i, event, "livelock", rip, [], lv[0])
        rank = {"ok-fast": 0, "ok-efault": 1, "ok-reseed": 2, "ok-fallback": 3}
        cls = max((v.cls for o, v in verdicts if o.label in swept_labels), key=lambda x: rank.get(x, 0),
                  default="ok-fast")
        return RunRecord(ci, i, event, cls, rip)

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

        res = nested_call(m, self.caller.func, self.args(self.hbuf), cfg.size, self.bound, around)
        nrsp = box["nrsp"]
        obs = self.observe(m, res, label, "nested", buffer=self.hbuf)
        obs.state_before = state_before
        obs.must_fallback = bool(backed and state_before[STATE_IN_USE])
        obs.memory = memory_diff(box["before"], box["after"], [(self.hbuf, self.hbuf + cfg.size),
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

# --------------------------------------------------------------------------
# Tasks (what a worker runs)
# --------------------------------------------------------------------------

def execute_task(task: Task, emit=None, mark=None) -> list:
    """Run one task; records go to emit() as they are produced (and are returned
    as a list when emit is None, e.g. on a Dask worker).  mark(i, event index)
    is called before each run starts (crash attribution)."""
    out: list = []
    sink = out.append if emit is None else emit
    if mark is not None:
        mark(0, -1)
    done: set = set()

    def record(rec) -> None:
        if isinstance(rec, RunRecord):
            done.add((rec.i, rec.event))
        sink(rec)

    try:
        h = harness_for(task.image, task.config)
        if task.kind == "baseline":
            rec = h.baseline()
            rec.ci = task.ci
            sink(rec)
        else:
            h.boundaries(task, record, mark)
    except Exception as e:          # set-up or walk failed: the task's remaining runs are lost
        why = f"harness: {type(e).__name__}: {e}"
        if task.kind == "baseline":
            sink(crash_record(task, 0, "", why))
        else:
            for i, ev in task.runs():
                if (i, ev) not in done:
                    sink(crash_record(task, i, ev, why))
    return out


def crash_record(task: Task, i: int, ev: str, why: str) -> RunRecord | BaselineRecord:
    if task.kind == "baseline":
        return BaselineRecord(task.ci, 0, "crash", [{"invariant": "crash", "call": "baseline", "detail": why}])
    return RunRecord(task.ci, i, ev, "crash", 0, [{"invariant": "crash", "call": "worker", "detail": why}])


# --------------------------------------------------------------------------
# Planning, aggregation, reporting
# --------------------------------------------------------------------------

def parse_events(spec: str, livelock_limit: int) -> list[str]:
    out: list[str] = []
    for part in spec.split(","):
        ev = part.strip()
        if not ev:
            continue
        if ev == "all":
            out.extend(e for e in EVENTS_ALL if e not in out)
            continue
        if ev.startswith("oom:"):
            try:
                k = int(ev[4:])
            except ValueError:
                raise UsageError(f"--events {ev!r}: K in oom:K must be a number") from None
            if k < 1:
                raise UsageError(f"--events {ev!r}: K must be positive")
            if k >= livelock_limit:
                raise UsageError(f"--events {ev!r}: K must stay below the livelock limit ({livelock_limit}; "
                                 f"raise it with --livelock)")
            ev = f"oom:{k}"
        elif ev not in EVENT_KINDS:
            raise UsageError(f"--events {ev!r}: unknown event (one of: {', '.join(EVENT_KINDS)}, all)")
        if ev not in out:
            out.append(ev)
    if not out:
        raise UsageError("--events: no events")
    return out


def plan_tasks(image: VdsoImage, configs: list[SweepConfig], baselines: dict[int, BaselineRecord],
               events: list[str], jobs: int) -> list[Task]:
    total = sum(baselines[ci].n + 1 for ci in baselines if baselines[ci].outcome != "crash")
    chunk = max(8, min(400, total // max(1, jobs * 6) or 1))
    tasks = []
    for ci, cfg in enumerate(configs):
        b = baselines.get(ci)
        if b is None or b.outcome == "crash":
            continue
        n = b.n
        for s in range(0, n + 1, chunk):
            tasks.append(Task(1_000_000 + len(tasks), image, cfg, ci, "boundaries", s, min(n + 1, s + chunk),
                              tuple(events), n))
    # Longest configurations first keeps the workers busy to the end (and a
    # worker's chunks of one configuration reuse its harness).
    tasks.sort(key=lambda t: -t.n)
    return tasks


@dataclass
class SweepResult:
    image: str
    image_spec: str
    configs: list[SweepConfig]
    events: list[str]
    baselines: dict[int, BaselineRecord] = field(default_factory=dict)
    records: list[RunRecord] = field(default_factory=list)
    elapsed: float = 0.0
    jobs: int = 1
    executor: str = "local"
    image_obj: VdsoImage | None = None

    @property
    def runs(self) -> int:
        return len(self.records)

    def counts(self) -> dict[int, dict[str, Counter]]:
        out: dict[int, dict[str, Counter]] = defaultdict(lambda: defaultdict(Counter))
        for ci, b in self.baselines.items():
            out[self.configs[ci].size]["none"][b.outcome] += 1
        for r in self.records:
            out[self.configs[r.ci].size][r.event][r.outcome] += 1
        return out

    def outcome_totals(self) -> Counter:
        c = Counter(r.outcome for r in self.records)
        for b in self.baselines.values():
            c[b.outcome] += 1
        return c

    @property
    def violations(self) -> list[RunRecord]:
        return [r for r in self.records if r.outcome in ("violation", "crash")]

    @property
    def failed(self) -> bool:
        return bool(self.violations) or any(b.outcome in ("violation", "crash") or b.warm_violations
                                            for b in self.baselines.values())

    def kills(self) -> Counter:
        """(invariant, event) -> runs, over all violations (for mutants)."""
        c: Counter = Counter()
        for b in self.baselines.values():
            for v in b.violations + b.warm_violations:
                c[(v["invariant"], "none")] += 1
        for r in self.violations:
            for inv in {v["invariant"] for v in r.violations}:
                c[(inv, r.event)] += 1
        return c

    def repro(self, r: RunRecord) -> str:
        cfg = self.configs[r.ci]
        n = self.baselines[r.ci].n
        return repro_command(self.image_spec, cfg, r.event, r.i, n)

    def where(self, r: RunRecord) -> str:
        if self.image_obj is None:
            return f"{r.rip:#x}"
        return symbolize(self.image_obj, r.rip)

    # ---- output -------------------------------------------------------------------
    def as_dict(self) -> dict:
        counts = {str(size): {ev: dict(c) for ev, c in evs.items()} for size, evs in sorted(self.counts().items())}
        return {
            "image": self.image, "image_spec": self.image_spec, "events": self.events,
            "elapsed_s": round(self.elapsed, 3), "jobs": self.jobs, "executor": self.executor,
            "runs": self.runs, "outcomes": dict(self.outcome_totals()), "counts": counts,
            "configs": [dict(asdict(cfg), n=self.baselines[ci].n if ci in self.baselines else None,
                             baseline=self.baselines[ci].outcome if ci in self.baselines else None,
                             baseline_violations=(self.baselines[ci].violations + self.baselines[ci].warm_violations)
                             if ci in self.baselines else [])
                        for ci, cfg in enumerate(self.configs)],
            "violations": [self._viol_dict(r) for r in self.violations],
            "livelocks": [{"where": w, "event": ev, "size": size, "runs": k}
                          for (w, ev, size), k in sorted(self.livelock_sites().items())],
            "failed": self.failed,
        }

    def _viol_dict(self, r: RunRecord) -> dict:
        cfg = self.configs[r.ci]
        return {"size": cfg.size, "placement": cfg.placement, "calls_before": cfg.calls_before,
                "droppable_oom": cfg.droppable_oom, "boundary": r.i, "event": r.event, "rip": hex(r.rip),
                "instruction": self.where(r), "outcome": r.outcome,
                "invariants": sorted({v["invariant"] for v in r.violations}), "violations": r.violations,
                "reproduce": self.repro(r)}

    def livelock_sites(self) -> Counter:
        c: Counter = Counter()
        for r in self.records:
            if r.outcome == "livelock":
                c[(r.livelock, r.event, self.configs[r.ci].size)] += 1
        return c

    def format(self, max_groups: int = 30) -> str:
        lines = []
        cfg0 = self.configs[0] if self.configs else None
        sizes = sorted({c.size for c in self.configs})
        places = sorted({c.placement for c in self.configs}, key=list(PLACEMENTS).index)
        cbs = sorted({c.calls_before for c in self.configs})
        lines.append(f"faultpath sweep: image={self.image} droppable-oom={cfg0.droppable_oom if cfg0 else '?'} "
                     f"events={','.join(self.events)}")
        lines.append(f"  sizes {','.join(map(str, sizes))}; states at {','.join(places)}; "
                     f"calls before {','.join(map(str, cbs))}; {cfg0.after if cfg0 else 0} further call(s)")
        lines.append(f"  {len(self.configs)} configurations, {self.runs} runs in {self.elapsed:.1f} s "
                     f"({self.executor}, {self.jobs} job(s))")
        counts = self.counts()
        cols = [o for o in OUTCOMES if o in ("ok-fast", "ok-reseed", "ok-fallback", "livelock", "violation")
                or any(counts[s][e][o] for s in counts for e in counts[s])]
        for size in sizes:
            ns = ", ".join(f"{c.placement}/cb{c.calls_before}: n={self.baselines[ci].n}"
                           for ci, c in enumerate(self.configs) if c.size == size and ci in self.baselines)
            lines.append("")
            lines.append(f"size {size} ({ns})")
            lines.append("  " + f"{'event':<10}" + "".join(f"{c:>12}" for c in cols))
            for ev in ["none"] + self.events:
                cnt = counts[size].get(ev, Counter())
                lines.append("  " + f"{ev:<10}" + "".join(f"{cnt[c]:>12}" for c in cols))
        sites = self.livelock_sites()
        if sites:
            lines.append("")
            lines.append("livelocks (expected under persistent OOM; neither pass nor violation):")
            shown: Counter = Counter()
            hidden: Counter = Counter()
            for (w, ev, size), k in sorted(sites.items(), key=lambda kv: (kv[0][2], kv[0][1], -kv[1])):
                if shown[(size, ev)] >= 5:
                    hidden[(size, ev)] += k
                    continue
                shown[(size, ev)] += 1
                lines.append(f"  size {size} {ev}: {k} run(s): {w}")
            for (size, ev), k in sorted(hidden.items()):
                lines.append(f"  size {size} {ev}: {k} more run(s) at other sites (see --json)")
        for ci, b in sorted(self.baselines.items()):
            if b.outcome in ("violation", "crash") or b.warm_violations:
                cfg = self.configs[ci]
                for v in b.warm_violations + b.violations:
                    lines.append(f"BASELINE {cfg.label()}: [{v['invariant']}] {v['call']}: {v['detail']}")
        viol = self.violations
        lines.append("")
        if not viol:
            lines.append("violations: none")
            return "\n".join(lines)
        groups: dict[tuple, list[RunRecord]] = defaultdict(list)
        for r in viol:
            cfg = self.configs[r.ci]
            first = r.violations[0]
            groups[(cfg.size, cfg.placement, cfg.calls_before, r.event, first["invariant"],
                    first["call"].split("[")[-1])].append(r)
        lines.append(f"violations: {len(viol)} run(s) in {len(groups)} group(s)")
        for gi, (key, rs) in enumerate(sorted(groups.items(), key=lambda kv: (kv[0][0], kv[1][0].i))):
            if gi >= max_groups:
                lines.append(f"  ... {len(groups) - max_groups} more group(s) (see --json)")
                break
            r = rs[0]
            cfg = self.configs[r.ci]
            bs = sorted({x.i for x in rs})
            more = f" (+{len(bs) - 1} more boundaries: {_ranges(bs)})" if len(bs) > 1 else ""
            invs = ", ".join(sorted({v["invariant"] for v in r.violations}))
            lines.append(f"  [{invs}] event={r.event} {cfg.label()}: boundary {r.i} at {self.where(r)}{more}")
            for v in r.violations[:3]:
                lines.append(f"      {v['call']}: [{v['invariant']}] {v['detail']}")
            lines.append(f"      reproduce: {self.repro(r)}")
        return "\n".join(lines)


def _ranges(xs: list[int], limit: int = 6) -> str:
    out = []
    start = prev = xs[0]
    for x in xs[1:] + [None]:
        if x is not None and x == prev + 1:
            prev = x
            continue
        out.append(f"{start}" if start == prev else f"{start}-{prev}")
        if x is not None:
            start = prev = x
    s = ",".join(out[:limit])
    return s + (",..." if len(out) > limit else "")


def repro_command(image_spec: str, cfg: SweepConfig, event: str, i: int, n: int, tool: str = "step") -> str:
    """One line that replays run (boundary i, event) under `faultpath step`
    (or `faultpath run` with tool="run")."""
    K = cfg.calls_before + 1
    call, at = (K, i) if i < n else (K + 1, 0)
    kinds = ["drop", event] if event.startswith("oom") else [event]
    parts = ["faultpath", tool, "--image", shlex.quote(image_spec), "--size", str(cfg.size), "--calls", str(call)]
    if cfg.seed:
        parts += ["--seed", str(cfg.seed)]
    if cfg.memory_pages != 4096:
        parts += ["--memory", str(cfg.memory_pages)]
    if cfg.swap_pages:
        parts += ["--swap", str(cfg.swap_pages)]
    if cfg.droppable_oom != "skip":
        parts += ["--droppable-oom", cfg.droppable_oom]
    if cfg.flags:
        parts += ["--flags", hex(cfg.flags)]
    if event == "oom":
        parts += ["--livelock", str(cfg.livelock_limit)]
    if cfg.placement != "start":
        parts += ["--state-offset", str(PLACEMENTS[cfg.placement])]
    if cfg.calls_before == 0 and event.startswith("oom"):
        parts += ["--prefault"]           # the sweep's caller buffer is resident; a cold one would be OOM-killed
    for k in kinds:
        parts += ["--inject", f"{k}@{call}:{at}"]
    if tool == "step":
        parts += ["-c", '"faultstop off; continue"']
    return " ".join(parts)


def make_configs(sizes: list[int], placements: list[str], calls_before: list[int], policy: str, *, seed: int = 0,
                 memory_pages: int = 4096, swap_pages: int = 0, flags: int = 0, after: int = 1,
                 livelock_limit: int = SWEEP_LIVELOCK) -> list[SweepConfig]:
    for p in placements:
        if p not in PLACEMENTS:
            raise UsageError(f"--placements {p!r}: one of {', '.join(PLACEMENTS)}")
    return [SweepConfig(size, p, cb, policy, seed, memory_pages, swap_pages, flags, after, livelock_limit)
            for size in sizes for cb in calls_before for p in placements]


def sweep(image: VdsoImage, image_spec: str, configs: list[SweepConfig], events: list[str], *,
          jobs: int = 2, executor: str = "local", progress: bool | None = None) -> SweepResult:
    from emulator.sweep.executors import Progress, make_executor
    t0 = time.perf_counter()
    ex = make_executor(executor, jobs)
    res = SweepResult(image.name, image_spec, configs, list(events), jobs=jobs, executor=ex.name, image_obj=image)
    try:
        base_tasks = [Task(ci, image, cfg, ci, "baseline") for ci, cfg in enumerate(configs)]
        for _, rec in ex.run(base_tasks):
            res.baselines[rec.ci] = rec
        tasks = plan_tasks(image, configs, res.baselines, list(events), jobs)
        total = sum(len(t.runs()) for t in tasks)
        bar = Progress(total, enabled=progress)
        try:
            for _, rec in ex.run(tasks):
                res.records.append(rec)
                bar.update(1, rec.outcome == "violation")
        finally:
            bar.close()
    finally:
        ex.close()
    res.records.sort(key=lambda r: (r.ci, r.i, events.index(r.event) if r.event in events else 0))
    res.elapsed = time.perf_counter() - t0
    return res
