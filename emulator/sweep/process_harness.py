"""`sweep --exec`'s harness: a real program in the emulated machine, walked
boundary by boundary through one of its glibc getrandom() calls.

1. Discovery: the program runs from its entry until its --call K-th vDSO
   call enters; the glibc getrandom() call that made it is the swept call.
   As every getrandom() entered, the whole machine was snapshotted
   (System.snapshot: every mm copy-on-write); the one of the swept call is
   S0.  The calls that ended before it are judged as warm calls: the
   ledger learns the keys the kernel supplied and what was handed out.
2. Baseline: from S0 the program runs on undisturbed; n = the swept call's
   instructions from the wrapper's entry to its return, glibc's and the
   vDSO's alike.
3. Every boundary i in [0, n]: from S0 the process runs to instruction
   W0 + i in one run (as the vDSO sweep reaches its boundaries), a
   snapshot S_i is taken, and for each event: back to S_i, the arrival
   there reported (at i = n, the return: the event falls after it), the
   event (exec/triggers.py carries it out as `faultpath exec --inject`
   does), then every process runs on until it has made --after further
   getrandom() calls (it is stopped there) or ends.  The swept call then
   finishes as the program makes it: a signal runs the program's own
   handler, whose getrandom() nests inside the swept call; a fork's child
   finishes the swept call in its own memory and makes its own further
   calls.  A world healed at the swept call's return (allocations succeed,
   the RNG is ready) serves the further calls, unless the event came after
   that return: then the first further call is the one it hits.
4. The oracle judges every call that ended, in the order they ended; the
   swept call and its child's copy against the page images of S0, a
   handler's nested call against those of its own entry, for Memory
   discipline.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

from emulator.errors import UsageError
from emulator.exec.symbols import file_offset
from emulator.exec.triggers import carry_out
from emulator.execve import boot
from emulator.process import Process
from emulator.sched import RUNNING, STOPPED
from emulator.signal import SIG_DFL, SIG_IGN, parse_signal
from emulator.sweep.call_tracker import CallTracker, GetrandomCall, TrackerHooks, VdsoCall
from emulator.sweep.exec_config import DROP_REENTER, ExecSweepConfig
from emulator.sweep.harness import BOUND_EXTRA, BOUND_FACTOR, FRAME_LIMIT, WALK_BUDGET, Harness
from emulator.sweep.keystream import StreamCache
from emulator.sweep.oracle import CallObs, Judge, Verdict, memory_diff
from emulator.sweep.page_diff import changed_pages, changed_ranges
from emulator.sweep.records import BaselineRecord, RunRecord, SweepTask
from emulator.sweep.symbols import symbolize
from mm import flags as F
from mm.flags import PAGE_SIZE
from vdso.abi import MAX_RW_COUNT, STATE_SIZE
from vdso.image import VdsoImage
from vdso.insn import decode_one


@dataclass
class ExecBaselineRecord(BaselineRecord):
    """The baseline, and where the swept call is (for the report's regions
    and reproduction lines)."""
    entry_index: int = 0            # W0: the process's instruction index at the wrapper's entry
    seq: int = 0                    # the program's n-th getrandom()
    length: int = 0
    vdso_start: int | None = None   # boundaries [vdso_start, vdso_end) lie in the vDSO
    vdso_end: int | None = None
    entry: str = ""                 # the wrapper's entry, as file+offset
    state: int | None = None
    warm_calls: int = 0


@dataclass
class ExecRunRecord(RunRecord):
    heal_at: int | None = None      # the index where the swept call returned (the world healed there)
    nested: str = ""                # how a handler's getrandom() inside the swept call was served
    zero_words: int = 0             # 8-byte zero words in every output of the run (tally.h's count)


# What each event is, as `faultpath exec --inject` kinds carried out at one boundary.
def event_kinds(event: str, signal: str) -> list[str]:
    if event == "oom" or event.startswith("oom:"):
        return ["drop", event]                  # memory pressure: the state page goes, allocation fails
    if event == "reenter":
        return [f"signal:{signal}"]
    if event == DROP_REENTER:
        return ["drop", f"signal:{signal}"]
    return [event]


class ProcessHarness:
    """One configuration's machine: discovered, baselined, walked."""

    def __init__(self, image: VdsoImage, cfg: ExecSweepConfig, streams: StreamCache | None = None):
        self.image = image
        self.cfg = cfg
        self.system = boot(cfg.exec_config(image))
        self.proc: Process = self.system.first()
        self.judge0 = Judge(streams)
        self.warm_violations: list = []
        self.bound: int | None = None
        disc = _Discovery(self, cfg.call)
        self.tracker = CallTracker(disc)
        self.tracker.attach(self.proc)
        self.system.run()
        if disc.found is None:
            raise UsageError(disc.why())
        self.proc, swept, self.S0, self.judge0 = disc.found
        self.swept = swept
        self.W0 = swept.index
        self.cold = swept.state is None         # the call that allocates glibc's state
        psnap = next(ps for q, ps in self.S0.processes if q is self.proc)
        self.ref_mm = psnap.task.mm
        self.droppable = {va for v in psnap.task.mm.vmas if v.vm_flags & F.VM_DROPPABLE
                          for va in range(v.start, v.end, PAGE_SIZE)}
        self.signo = parse_signal(cfg.reenter_signal)
        self.n: int | None = None
        self.baseline_rec: ExecBaselineRecord | None = None
        self.last_observations: list[CallObs] = []

    def close(self) -> None:
        for p in self.system.order:
            p.close()

    def mutate(self, addr: int, code: bytes) -> None:
        """A mutant of the program's code (or of a library's) from S0 on, as
        `sweep --mutants` makes them of the vDSO: the bytes at addr replaced
        in this process's private copy of the page (FOLL_FORCE, as ptrace
        writes code), and S0 taken again.  Baselines are computed afresh."""
        self.system.restore(self.S0)
        p = self.proc
        if p.mm.poke(addr, code) != len(code):
            raise UsageError(f"cannot write {len(code)} bytes of code at {addr:#x}")
        p.sync()
        p.forget_code(addr, addr + len(code))
        p.uc.ctl_remove_cache(addr, addr + len(code))
        self.S0 = self.system.snapshot()
        self.ref_mm = next(ps for q, ps in self.S0.processes if q is p).task.mm
        self.n = None

    # ---- set-up checks -----------------------------------------------------------------
    def check_reenter(self) -> None:
        """reenter needs a handler of the program's for the signal (that calls getrandom())."""
        act = self.proc.sig.actions[self.signo]
        if act.handler in (SIG_DFL, SIG_IGN):
            raise UsageError(f"--events reenter: {self.cfg.program} has no handler for {self.cfg.reenter_signal} "
                             f"when vDSO call {self.cfg.call} is made (a program whose handler calls getrandom() "
                             f"is needed, e.g. tests/clients/getrandom_signal raise)")

    # ---- observation -------------------------------------------------------------------
    def is_swept(self, c: GetrandomCall) -> bool:
        return c.index == self.W0 and c.seq == self.swept.seq and c.depth == self.swept.depth

    def observe(self, c: GetrandomCall, role: str, who: str, pair: str = "", livelock_expected: bool = False,
                parent_output: bytes | None = None) -> CallObs:
        proc = self.system.procs.get(c.pid)
        res = proc.ctx.result
        syscalls = res.syscalls[c.syscall_start:c.syscall_end]
        obs = CallObs(label=f"call {c.seq} [{who}]", role=role, size=c.length,
                      expected_ret=min(c.length, MAX_RW_COUNT), outcome=c.outcome, ret=c.ret, output=c.output,
                      buffer=c.buffer, state=c.state or 0, syscalls=syscalls, state_before=c.state_before,
                      state_after=c.state_after, outcome_detail=c.detail, instructions=c.instructions or 0,
                      bound=self.bound, livelock_expected=livelock_expected, policy=self.cfg.droppable_oom,
                      must_fallback=c.claimed and role == "nested", pair=pair,
                      inherited=c.inherited if role == "child" else None, parent_output=parent_output,
                      memory=list(c.memory))
        if c.outcome == "livelock":
            obs.livelock_user, obs.livelock_where = self.livelock_where(proc, c)
        return obs

    def livelock_where(self, proc: Process, c: GetrandomCall) -> tuple[bool, str]:
        res = proc.ctx.result
        for s in res.syscalls[c.syscall_start:]:
            if s.outcome == "livelock":
                return False, f"kernel copy_to_user of {s.name} into {s.data_addr + len(s.data):#x} " \
                              f"(syscall at {self.where(proc, s.rip)})"
        for f in reversed(res.faults[c.fault_start:]):
            if f.decision == "livelock":
                what = "user write" if f.user else f"kernel copy ({f.insn})"
                return f.user, f"{what} at {self.where(proc, f.rip)} to {f.address:#x}"
        return False, c.detail

    def where(self, p: Process, rip: int) -> str:
        img = p.kernel.image
        if 0 <= rip - img.base < len(img.text):
            return symbolize(img, rip)
        ins = decode_one(p.read(rip, 15), rip)
        return f"{file_offset(p, rip)} [{ins.text if ins else '?'}]"

    def memory_findings(self, p: Process, c: GetrandomCall, ref, extra: list[tuple[int, int]],
                        wiped: set[int]) -> list[str]:
        pre, post = changed_pages(p.mm, ref)
        allowed = [(c.buffer, c.buffer + c.length), (c.rsp - FRAME_LIMIT, c.rsp), *extra]
        if c.state is not None:
            allowed.append((c.state, c.state + STATE_SIZE))
        return memory_diff(pre, post, allowed, wiped)

    # ---- baseline ----------------------------------------------------------------------
    def baseline(self) -> ExecBaselineRecord:
        self.bound = None
        ctl = self.run_from(self.S0, None, 0, WALK_BUDGET)
        swept = next((c for c in ctl.calls if self.is_swept(c) and c.fork_of is None), None)
        if swept is None or swept.outcome != "returned":
            how = f"{swept.outcome}: {swept.detail}" if swept is not None else "it never ended"
            raise UsageError(f"the swept call did not return undisturbed ({how})")
        self.n = swept.return_index - self.W0
        self.bound = BOUND_FACTOR * self.n + BOUND_EXTRA
        verdicts = self.judge_run(ctl, None)
        vc = next((v for v in swept.vdso if v.number == self.cfg.call), None)
        viol = [x.as_dict() for _, v in verdicts for x in v.violations]
        cls = Harness.classify(0, 0, "none", 0, verdicts, {f"call {swept.seq} [parent]"}).outcome
        self.baseline_rec = ExecBaselineRecord(
            0, self.n, cls, viol, [x.as_dict() for x in self.warm_violations],
            swept.ret, swept.cycles, entry_index=self.W0, seq=swept.seq, length=swept.length,
            vdso_start=vc.index - self.W0 if vc else None,
            vdso_end=vc.return_index - self.W0 if vc and vc.return_index is not None else None,
            entry=file_offset(self.proc, self.swept_entry_rip), state=swept.state,
            warm_calls=self.swept.seq - 1)
        return self.baseline_rec

    @property
    def swept_entry_rip(self) -> int:
        return next(ps for q, ps in self.S0.processes if q is self.proc).ctx.rip

    # ---- the walk ----------------------------------------------------------------------
    def boundaries(self, task: SweepTask, emit, mark=None) -> None:
        if self.n is None or self.n != task.n:
            self.baseline()
        for i in range(task.start, task.stop):
            snap = self.snapshot_at(i)
            rip = next(ps for q, ps in snap.processes if q is self.proc).ctx.rip
            for ei, ev in enumerate(task.events):
                if (i, ev) in task.skip:
                    continue
                if mark is not None:
                    mark(i, ei)
                try:
                    rec = self.one_run(snap, i, ev, rip, task.ci)
                except Exception as e:       # a Python-level failure stays with its run
                    rec = ExecRunRecord(task.ci, i, ev, "crash", rip, [{"invariant": "crash", "call": "harness",
                                                                       "detail": f"{type(e).__name__}: {e}"}])
                emit(rec)

    def snapshot_at(self, i: int):
        """S_i: from S0, one run to instruction W0 + i (nothing is reported
        at the stop: the events' runs report it first)."""
        self.system.restore(self.S0)
        self.tracker.hooks = TrackerHooks()
        box = {}

        def take(q: Process) -> None:
            box["snap"] = self.system.snapshot()
            q.state = STOPPED

        p = self.proc
        p.ctx.budget = p.budget = p.ctx.index + WALK_BUDGET
        p.at_index(self.W0 + i, take)
        self.system.run()
        if "snap" not in box:
            raise RuntimeError(f"boundary {i} was not reached from S0 ({p.exit.outcome or p.ctx.result.outcome})")
        return box["snap"]

    def one_run(self, snap, i: int, event: str, rip: int, ci: int) -> ExecRunRecord:
        ctl = self.run_from(snap, event, i, (self.cfg.after + 2) * self.bound)
        verdicts = self.judge_run(ctl, event)
        swept_labels = {o.label for o, _ in verdicts if o.role in ("swept", "child", "nested")}
        parent = next((c for c in ctl.calls if self.is_swept(c) and c.fork_of is None), None)
        cycles = parent.cycles if parent is not None and parent.outcome == "returned" else None
        rec = Harness.classify(ci, i, event, rip, verdicts, swept_labels, cycles)
        out = ExecRunRecord(**asdict(rec), heal_at=ctl.heal_at, nested=ctl.nested_path(),
                            zero_words=sum(_zero_words(o.output) for o, _ in verdicts))
        if out.outcome == "violation":
            out.where = self.where(self.proc, rip)
        return out

    def run_from(self, snap, event: str | None, i: int, budget: int) -> "_RunControl":
        """Back to snap, the event, every process on to its stop; the calls that ended."""
        self.system.restore(snap)
        ctl = _RunControl(self, event, after_return=i == self.n and event is not None)
        self.tracker.hooks = ctl
        first = len(self.tracker.ended)
        p = self.proc
        for q in self.system.order:
            if q.state == RUNNING:
                q.ctx.budget = q.budget = q.ctx.index + budget
        p.arrive()
        if event is not None and p.state == RUNNING:
            for kind in event_kinds(event, self.cfg.reenter_signal):
                if not p.ctx.done:
                    carry_out(p, kind)
        self.system.run()
        ctl.calls = self.tracker.ended[first:]
        return ctl

    def judge_run(self, ctl: "_RunControl", event: str | None) -> list[tuple[CallObs, Verdict]]:
        obs: list[CallObs] = []
        parent_out: bytes | None = None
        labels: dict[tuple[int, int], str] = {}
        for c in ctl.calls:
            who = "child" if c.fork_of is not None else "parent"
            if c.pid in ctl.handler_calls and c.index in ctl.handler_calls[c.pid]:
                who = "handler"
            swept = self.is_swept(c)
            role = ("child" if c.fork_of is not None else "swept") if swept else \
                ("nested" if c.depth > self.swept.depth and c.outer is not None else "after")
            expect = event == "oom" and (swept or (ctl.after_return and c.index == ctl.first_further.get(c.pid)))
            o = self.observe(c, role, who, livelock_expected=expect,
                             parent_output=parent_out if role == "child" else None)
            if role == "nested":
                o.pair = labels.get((c.pid, c.outer), "")
            labels[(c.pid, c.seq)] = o.label
            if role == "swept":
                parent_out = o.output
                for prev in obs:                # a child that ended first still pairs with its parent's bytes
                    if prev.role == "child":
                        prev.parent_output = parent_out
            obs.append(o)
        judge = self.judge0.clone()
        for o in obs:                           # every key the kernel supplied in this run, whichever call got it
            if o.role != "after":
                judge.learn_syscalls(o.syscalls)
        out = [(o, judge.judge(o)) for o in obs]
        self.last_observations = [o for o, _ in out]
        return out


# Per worker process: the last configuration's harness (a task's neighbours
# in the plan are chunks of the same configuration; discovery runs the
# program's start-up, seconds).
_CACHE: dict[tuple, ProcessHarness] = {}


def cached_harness(image: VdsoImage, cfg: ExecSweepConfig, streams: StreamCache | None = None) -> ProcessHarness:
    key = (image.name, bytes(image.text), cfg)
    h = _CACHE.get(key)
    if h is None:
        for old in _CACHE.values():
            old.close()
        _CACHE.clear()
        h = _CACHE[key] = ProcessHarness(image, cfg, streams)
    return h


class _Discovery(TrackerHooks):
    """Runs the program to its --call K-th vDSO call, snapshotting the
    machine at every getrandom() entry and judging the calls that end."""

    def __init__(self, h: ProcessHarness, k: int):
        self.h = h
        self.k = k
        self.snaps: dict[tuple[int, int], tuple] = {}
        self.found: tuple | None = None
        self.problem = ""

    def on_entry(self, p, call) -> None:
        self.snaps[(p.pid, call.seq)] = (self.h.system.snapshot(), self.h.judge0.clone())

    def on_return(self, p, call) -> None:
        self.snaps.pop((p.pid, call.seq), None)
        h = self.h
        o = h.observe(call, "warm", "parent")
        h.warm_violations += h.judge0.judge(o).violations

    def on_vdso(self, p, vc: VdsoCall) -> None:
        if vc.number != self.k:
            return
        active = self.h.tracker.active(p.pid)
        if vc.is_query:
            self.problem = (f"--call {self.k} is glibc's start-up query of the vDSO's parameters, made outside "
                            f"getrandom() (the program's first getrandom() makes the next vDSO call)")
        elif not active:
            self.problem = f"vDSO call {self.k} was not made by glibc's getrandom() (no libc getrandom is active)"
        else:
            swept = active[-1]
            snap, judge = self.snaps[(p.pid, swept.seq)]
            self.found = (p, swept, snap, judge)
        for q in self.h.system.order:              # enough: the rest runs from S0
            if q.state == RUNNING:
                q.state = STOPPED

    def why(self) -> str:
        if self.problem:
            return self.problem
        h = self.h
        n = len(h.tracker.vdso_calls)
        end = h.proc.exit.outcome or h.proc.ctx.result.outcome
        return (f"{h.cfg.program} made {n} __vdso_getrandom call(s) before it ended ({end}): --call {self.k} "
                f"is beyond them")


class _RunControl(TrackerHooks):
    """One run from a boundary: stops each process after its further calls,
    heals the world at the swept call's return, and takes the page images
    Memory discipline compares."""

    def __init__(self, h: ProcessHarness, event: str | None, after_return: bool):
        self.h = h
        self.event = event
        self.after_return = after_return
        self.further: dict[int, int] = {}           # pid -> further calls since its swept call returned
        self.first_further: dict[int, int] = {}     # pid -> entry index of its first further call
        self.heal_at: int | None = None
        self.handler_depth: dict[int, int] = {}
        self.handler_calls: dict[int, set[int]] = {}   # pid -> entry indices of calls made in a handler
        self.handler_snaps: dict[int, list] = {}    # pid -> mm snapshots as each handler was entered
        self.handler_writes: dict[int, list[tuple[int, int]]] = {}
        self.entry_snaps: dict[tuple[int, int], object] = {}
        self.calls: list[GetrandomCall] = []
        self.nested: list[GetrandomCall] = []

    def _in_swept(self, pid: int) -> bool:
        return any(self.h.is_swept(c) for c in self.h.tracker.active(pid))

    def _heal(self) -> None:
        k = self.h.system.kernel
        k.phys.fail_allocations(None)
        k.set_ready(True)

    def _mm_snapshot(self, p: Process):
        snap = p.mm.snapshot()
        p.sync()                    # the snapshot write-protected the pages: Unicorn must see it
        return snap

    def on_entry(self, p, call) -> None:
        if self.handler_depth.get(p.pid):
            self.handler_calls.setdefault(p.pid, set()).add(call.index)
        if call.depth > self.h.swept.depth and self._in_swept(p.pid):
            self.entry_snaps[(p.pid, call.seq)] = self._mm_snapshot(p)
        elif call.depth == 0 and p.pid in self.further and not self.handler_depth.get(p.pid):
            self.first_further.setdefault(p.pid, call.index)

    def on_return(self, p, call) -> None:
        h = self.h
        if h.is_swept(call):
            if not h.cold:
                extra = self.handler_writes.get(p.pid, [])
                wiped = h.droppable if (call.fork_of is not None or self.event in ("drop", DROP_REENTER)
                                        or (self.event or "").startswith("oom")) else set()
                call.memory = h.memory_findings(p, call, h.ref_mm, extra, wiped)
            if call.fork_of is None:
                self.heal_at = p.ctx.index
                if not self.after_return:
                    self._heal()
            self._count_further(p, 0)
            return
        ref = self.entry_snaps.pop((p.pid, call.seq), None)
        if ref is not None:
            call.memory = h.memory_findings(p, call, ref, [], set())
            ref.release()
            self.nested.append(call)
            return
        if call.depth == 0 and p.pid in self.further and call.index not in self.handler_calls.get(p.pid, ()):
            if self.further[p.pid] == 0 and self.after_return:
                self._heal()            # the event hit this first further call; the next ones run healed
            self._count_further(p, self.further[p.pid] + 1)

    def _count_further(self, p: Process, k: int) -> None:
        self.further[p.pid] = k
        if k >= self.h.cfg.after:
            p.state = STOPPED

    def on_end(self, p, call) -> None:
        ref = self.entry_snaps.pop((p.pid, call.seq), None)
        if ref is not None:
            ref.release()

    def on_fork(self, parent, child) -> None:
        if parent.pid in self.further:
            self.further[child.pid] = self.further[parent.pid]
        self.handler_depth[child.pid] = self.handler_depth.get(parent.pid, 0)

    def on_handler(self, p) -> None:
        self.handler_depth[p.pid] = self.handler_depth.get(p.pid, 0) + 1
        if self._in_swept(p.pid):
            self.handler_snaps.setdefault(p.pid, []).append(self._mm_snapshot(p))

    def on_sigreturn(self, p) -> None:
        if self.handler_depth.get(p.pid):
            self.handler_depth[p.pid] -= 1
        snaps = self.handler_snaps.get(p.pid)
        if snaps:
            ref = snaps.pop()
            pre, post = changed_pages(p.mm, ref)
            self.handler_writes.setdefault(p.pid, []).extend(changed_ranges(pre, post))
            ref.release()

    def nested_path(self) -> str:
        """How the handler's getrandom() inside the swept call got its bytes:
        glibc's fallback syscall without the vDSO, the vDSO, or the vDSO's
        own fallback."""
        if not self.nested:
            return ""
        c = self.nested[0]
        if not c.vdso:
            return "glibc-syscall"
        proc = self.h.system.procs.get(c.pid)
        sys_ = proc.ctx.result.syscalls[c.syscall_start:c.syscall_end] if proc is not None else []
        full = any(s.name == "getrandom" and s.data_addr == c.buffer and len(s.data) == c.length for s in sys_)
        return "vdso-fallback" if full else "vdso"


def _zero_words(b: bytes) -> int:
    return sum(1 for k in range(0, len(b) - 7, 8) if b[k:k + 8] == bytes(8))
