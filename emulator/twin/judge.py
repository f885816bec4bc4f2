"""The sweep's oracle on native runs: the same Judge, the same invariants,
the same classification, fed with what the running kernel really did.

Its ledger learns only what the kernel handed out: the bytes every getrandom
syscall wrote, read from the tracee at the syscall's exit stop (the twin
records them in SyscallObs.data), starting with the warm calls'.  Nothing
the vDSO wrote is trusted, exactly as in the emulator.  A run is judged in
the order the emulator's harness judges it (a fork child or a handler's
nested call first, then the interrupted call, then the further calls), so a
repeat is charged to the same call on both sides.

What differs from the emulated judging, and why:
* Termination has no instruction bound: a resumed native call runs at full
  speed and is not counted; a call that does not return within the twin's
  time bound (or, under a memory limit, fails LIVELOCK_CHARGES charges) is a
  timeout or a livelock instead.
* Memory discipline diffs the tracee's watched pages (memory.py) once per
  process, after its swept call: a handler's nested call is checked together
  with the call it interrupted, with both calls' ranges allowed.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from emulator.sweep.harness import FRAME_LIMIT, Harness
from emulator.sweep.keystream import StreamCache
from emulator.sweep.oracle import CallObs, Judge, Verdict, Violation, expected_ret, memory_diff
from emulator.sweep.records import RunRecord
from emulator.sweep.summary import CallSummary, summarize
from emulator.twin.engine import Twin, parse_event
from emulator.twin.events import RED_ZONE, SIGFRAME
from emulator.twin.records import NativeCall, NativeRun
from vdso.abi import STATE_IN_USE, STATE_SIZE
from vdso.image import PAGE_SIZE

POLICY = "retry"          # the running kernel's droppable-OOM design (6.11+: VM_FAULT_OOM cleared)


@dataclass
class NativeVerdict:
    """A native run judged: its RunRecord (outcome class, violations, livelock)
    and every call's summary, as an emulated run with detail has them."""
    record: RunRecord
    calls: list[CallSummary] = field(default_factory=list)
    skipped: str = ""


class NativeJudge:
    """Judges one Twin's runs.  Every walker process makes its own warm calls
    (a fresh process's history, hence a key of its own): a run's judge is
    cloned from a ledger seeded with the warm calls of the walker it forked
    from, and only with what the kernel handed out in them."""

    WALKERS_KEPT = 4              # ledgers of recent walkers (a sweep uses one or two at a time)

    def __init__(self, twin: Twin, streams: StreamCache | None = None):
        if twin.base is None:
            twin.baseline()
        self.twin = twin
        self.layout = twin.layout
        self.streams = streams or StreamCache()
        self.straddles = (self.layout.state & (PAGE_SIZE - 1)) + STATE_SIZE > PAGE_SIZE
        self.droppable = set(range(self.layout.state_map, self.layout.state_map + self.layout.state_map_len,
                                   PAGE_SIZE))
        self._judges: dict[int, tuple[list[NativeCall], Judge, list[Violation]]] = {}
        self.judge, self.warm_violations = self._seeded(twin.base.warm)

    def _seeded(self, warm: list[NativeCall]) -> tuple[Judge, list[Violation]]:
        """A judge that has judged these warm calls (cached per walker)."""
        hit = self._judges.get(id(warm))
        if hit is not None and hit[0] is warm:
            return hit[1], hit[2]
        judge = Judge(self.streams)
        bad: list[Violation] = []
        for c in warm:
            bad += judge.judge(self.observe(c)).violations
        while len(self._judges) >= self.WALKERS_KEPT:
            self._judges.pop(next(iter(self._judges)))
        self._judges[id(warm)] = (warm, judge, bad)
        return judge, bad

    # ---- one call --------------------------------------------------------------------
    def observe(self, c: NativeCall, livelock_expected: bool = False) -> CallObs:
        """A native call as the oracle's CallObs (field for field)."""
        obs = CallObs(label=c.label, role=c.role, size=c.size, expected_ret=expected_ret(c.size, self.straddles),
                      outcome=c.outcome, ret=c.ret, output=c.output, buffer=c.buffer, state=c.state,
                      syscalls=list(c.syscalls), state_before=c.state_before, state_after=c.state_after,
                      outcome_detail=c.detail, instructions=c.instructions or 0, bound=None,
                      livelock_expected=livelock_expected, policy=POLICY)
        if c.outcome == "livelock":
            obs.livelock_user = bool(c.rip)
            obs.livelock_where = c.detail
        if c.role == "nested":
            obs.must_fallback = bool(c.state_backed and c.state_before and c.state_before[STATE_IN_USE])
        return obs

    def _allowed(self, run: NativeRun, c: NativeCall, nested: NativeCall | None) -> list[tuple[int, int]]:
        """The ranges a process's swept call (and a handler's call in it) may write,
        as the harness allows them: buffer, state, the call's frame below its
        entry rsp; a handler's buffer and frame below the red zone and signal frame."""
        L = self.layout
        entry_rsp = L.rsp - 8                     # the caller's `call` pushed the return address
        out = [(L.buffer, L.buffer + c.size), (L.state, L.state + STATE_SIZE), (entry_rsp - FRAME_LIMIT, entry_rsp)]
        if nested is not None:
            nrsp = ((run.rsp_at_i - RED_ZONE - SIGFRAME) & ~0xF) - 8
            out += [(L.hbuffer, L.hbuffer + nested.size), (nrsp - FRAME_LIMIT, nrsp + 8)]
        return out

    def _memory(self, run: NativeRun, pname: str, c: NativeCall, nested: NativeCall | None,
                wiped: bool) -> list[str]:
        post = run.memory.get(pname)
        if run.pre is None or post is None:
            return []
        return memory_diff(run.pre, post, self._allowed(run, c, nested), self.droppable if wiped else set())

    # ---- the baseline and the runs ---------------------------------------------------
    def baseline(self) -> tuple[Verdict, CallSummary]:
        """The undisturbed swept call, judged."""
        judge = self.judge.clone()
        obs = self.observe(self.twin.base.call)
        v = judge.judge(obs)
        return v, summarize(obs, v)

    def run(self, run: NativeRun) -> NativeVerdict:
        if run.skipped:
            return NativeVerdict(RunRecord(0, run.i, run.event, "skipped", run.rip), [], run.skipped)
        parts = parse_event(run.event)
        persistent = "oom" in parts
        wiped = any(p == "drop" or p.startswith("oom") for p in parts)
        after_return = run.i >= self.twin.base.n
        seeded, warm_bad = self._seeded(run.warm) if run.warm else (self.judge, [])
        judge = seeded.clone()
        by_role: dict[str, list[NativeCall]] = {}
        for c in run.calls:
            by_role.setdefault(c.role, []).append(c)
        parent = next((c for c in by_role.get("swept", []) if c.outcome != "not-run"), None)
        nested = next(iter(by_role.get("nested", [])), None)
        child = next(iter(by_role.get("child", [])), None)
        swept: list[CallObs] = []
        cobs = pobs = None
        if child is not None:
            cobs = self.observe(child)
            cobs.inherited = run.buffer_at_i
            cobs.memory = self._memory(run, "child", child, None, True)
            swept.append(cobs)
        if nested is not None:
            nobs = self.observe(nested)
            nobs.pair = parent.label if parent is not None else ""
            swept.append(nobs)
        if parent is not None:
            pobs = self.observe(parent, livelock_expected=persistent)
            if nested is not None:
                pobs.pair = nested.label
            pobs.memory = self._memory(run, "parent", parent, nested, wiped)
            if cobs is not None:
                cobs.parent_output = pobs.output
            swept.append(pobs)
        for o in swept:                   # every key the kernel supplied in this run, whichever call got it
            judge.learn_syscalls(o.syscalls)
        verdicts = [(o, judge.judge(o)) for o in swept]
        # Further calls, parent's then child's, as the harness judges them.
        after = by_role.get("after", [])
        for pname in ("parent", "child"):
            for k, c in enumerate(x for x in after if x.label.endswith(f"[{pname}]")):
                o = self.observe(c, livelock_expected=persistent and after_return and k == 0 and pname == "parent")
                verdicts.append((o, judge.judge(o)))
        rec = Harness.classify(0, run.i, run.event, run.rip, verdicts, {o.label for o in swept})
        if warm_bad:                      # the walker's own warm calls broke an invariant: say so with the run
            rec.outcome = "violation"
            rec.violations = [v.as_dict() for v in warm_bad] + rec.violations
        return NativeVerdict(rec, [summarize(o, v) for o, v in verdicts])
