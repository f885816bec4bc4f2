"""The emulator against the running kernel, run by run: `faultpath sweep
--native`.

For one sweep configuration the emulator sweeps the host image (its workers,
every run with its calls' summaries) and the native twin runs the same
(boundary, event) pairs on the host's real __vdso_getrandom; the sweep's
oracle judges both (judge.py).  Each pair of runs is then compared on:

  class      the run's outcome class (ok-fast, ok-reseed, ok-fallback,
             ok-efault, livelock, violation)
  calls      the same calls on both sides (parent, fork child, handler,
             further calls), and for each: how it ended, its return value,
             the system calls it made (getrandom(state.key, 32) = 32, ...),
             its verdict and the invariants it broke, where a livelock spun
             (user or kernel mode)

Random bytes never enter the comparison: they differ between any two
correct runs.  A native run that is not the run that was asked for is run again, up to
RETRIES times, and kept with a note otherwise (disturbed()): the kernel's
generation moved by itself (the crng reseeds on its own schedule), reclaim
left the state page in place (MADV_PAGEOUT skips a folio it cannot isolate
on a loaded machine), or an oom:K run saw more than K failed charges (the
limit was lifted late).
"""
from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field

from emulator.sweep.config import SweepConfig
from emulator.sweep.oracle import OUTCOMES
from emulator.sweep.records import BaselineRecord, RunRecord
from emulator.sweep.report import native_repro_command, recheck_command
from emulator.sweep.summary import CallSummary
from emulator.twin.engine import Twin, parse_event
from emulator.twin.judge import NativeJudge, NativeVerdict
from emulator.twin.process import TwinConfig
from emulator.twin.records import NativeRun

RETRIES = 3                       # native re-runs of a run the crng's own reseed disturbed
CLASSES = tuple(o for o in OUTCOMES if o != "crash")


def twin_config(cfg: SweepConfig) -> TwinConfig:
    """The native twin of a sweep configuration (the same process set-up)."""
    return TwinConfig(cfg.size, placement=cfg.placement, calls_before=cfg.calls_before, flags=cfg.flags,
                      after=cfg.after, warm_size=cfg.warm_size, nested_size=cfg.nested_size,
                      after_size=cfg.after_size)


@dataclass
class Pair:
    """One (boundary, event): the emulated run, the native run, what differs."""
    i: int
    event: str
    emulated: RunRecord
    native: NativeVerdict | None
    differences: list[str] = field(default_factory=list)
    note: str = ""                # e.g. the kernel's generation moved by itself in every attempt

    @property
    def skipped(self) -> str:
        return self.native.skipped if self.native is not None else "not run natively"

    @property
    def agrees(self) -> bool:
        return not self.skipped and not self.differences


def compare_calls(emu: list[CallSummary], nat: list[CallSummary]) -> list[str]:
    """What differs between the two sides' calls, matched by label."""
    out = []
    e = {c.label: c for c in emu}
    n = {c.label: c for c in nat}
    for label in list(e) + [x for x in n if x not in e]:
        a, b = e.get(label), n.get(label)
        if a is None or b is None:
            out.append(f"{label}: only {'in the emulator' if b is None else 'on the kernel'}")
            continue
        for what, x, y in (("outcome", a.outcome, b.outcome), ("ret", a.ret, b.ret),
                           ("syscalls", list(a.syscalls), list(b.syscalls)), ("verdict", a.verdict, b.verdict),
                           ("invariants", list(a.invariants), list(b.invariants)),
                           ("livelock in", a.livelock, b.livelock)):
            if x != y:
                out.append(f"{label}: {what} {x} (emulator) vs {y} (kernel)")
    return out


def compare_pair(emu: RunRecord, nat: NativeVerdict | None) -> list[str]:
    if nat is None or nat.skipped:
        return []
    out = []
    if emu.outcome != nat.record.outcome:
        out.append(f"class {emu.outcome} (emulator) vs {nat.record.outcome} (kernel)")
    return out + compare_calls(emu.calls or [], nat.calls)


@dataclass
class ConfigComparison:
    """Every compared run of one configuration."""
    config: SweepConfig
    image_spec: str
    events: list[str]
    emulated_baseline: BaselineRecord
    native_n: int
    native_baseline: CallSummary | None
    pairs: list[Pair] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)        # event -> why it has no native run here
    warm_violations: list[str] = field(default_factory=list)     # the native warm calls' (first walker)
    native_seconds: float = 0.0
    reruns: Counter = field(default_factory=Counter)             # why native runs were run again -> how often

    # ---- views -------------------------------------------------------------------------
    def baseline_differences(self) -> list[str]:
        out = []
        e = self.emulated_baseline
        if e.n != self.native_n:
            out.append(f"n {e.n} (emulator) vs {self.native_n} (kernel)")
        nb = self.native_baseline
        if nb is not None:
            out += compare_calls(e.calls or [], [nb])
        return out

    def table(self) -> dict[str, dict[str, tuple[int, int]]]:
        """event -> class -> (emulated runs, native runs), over the runs both sides made."""
        out: dict[str, dict[str, list[int]]] = {}
        for p in self.pairs:
            if p.skipped:
                continue
            row = out.setdefault(p.event, {c: [0, 0] for c in CLASSES})
            row[p.emulated.outcome][0] += 1
            row[p.native.record.outcome][1] += 1
        return {ev: {c: (v[0], v[1]) for c, v in row.items()} for ev, row in out.items()}

    def agreement(self) -> dict[str, tuple[int, int]]:
        """event -> (runs that agree in everything compared, runs compared)."""
        c: Counter = Counter()
        n: Counter = Counter()
        for p in self.pairs:
            if p.skipped:
                continue
            n[p.event] += 1
            c[p.event] += p.agrees
        return {ev: (c[ev], n[ev]) for ev in n}

    def zero_output(self, event: str) -> dict[str, dict[str, int]]:
        """For a handler's reentry (reenter, drop+reenter): on each side, the
        boundaries where the interrupted call handed out 8-byte zero words and
        how many words, and compare's metric, boundaries where any call's output
        holds a run of >= 16 zero bytes; "both": boundaries where both sides'
        interrupted calls did."""
        out = {side: {"interrupted_boundaries": 0, "interrupted_words": 0, "any_zero_run_boundaries": 0}
               for side in ("emulator", "kernel")}
        both = 0
        for p in self.pairs:
            if p.event != event or p.skipped:
                continue
            hit = []
            for side, calls in (("emulator", p.emulated.calls or []), ("kernel", p.native.calls)):
                outer = next((c for c in calls if c.role == "swept"), None)
                words = outer.zero_words if outer is not None else 0
                out[side]["interrupted_boundaries"] += words > 0
                out[side]["interrupted_words"] += words
                out[side]["any_zero_run_boundaries"] += any(c.zero_run_bytes for c in calls)
                hit.append(words > 0)
            both += all(hit)
        out["both"] = {"interrupted_boundaries": both}
        return out

    @property
    def disagreements(self) -> list[Pair]:
        return [p for p in self.pairs if not p.skipped and p.differences]

    @property
    def violations(self) -> list[Pair]:
        """Runs either side judged a violation (or a crash)."""
        return [p for p in self.pairs if p.emulated.outcome in ("violation", "crash")
                or (p.native is not None and p.native.record.outcome == "violation")]

    def emulated_command(self, p: Pair) -> str:
        return recheck_command(self.image_spec, self.config, p.event, p.i)

    def native_command(self, p: Pair) -> str:
        return native_repro_command(self.config, p.event, p.i)

    def as_dict(self) -> dict:
        cfg = self.config
        return {
            "config": {"size": cfg.size, "placement": cfg.placement, "calls_before": cfg.calls_before,
                       "after": cfg.after, "warm_size": cfg.warm_size, "nested_size": cfg.nested_size,
                       "after_size": cfg.after_size, "droppable_oom": cfg.droppable_oom, "flags": cfg.flags},
            "n": {"emulator": self.emulated_baseline.n, "kernel": self.native_n},
            "baseline_differences": self.baseline_differences(),
            "table": {ev: {c: {"emulator": a, "kernel": b} for c, (a, b) in row.items() if a or b}
                      for ev, row in self.table().items()},
            "agreement": {ev: {"agree": a, "runs": n} for ev, (a, n) in self.agreement().items()},
            "zero_output": {ev: self.zero_output(ev) for ev in self.events if "reenter" in ev and ev not in self.skipped},
            "skipped": self.skipped,
            "native_seconds": round(self.native_seconds, 2),
            "native_reruns": dict(self.reruns),
            "native_warm_violations": self.warm_violations,
            "disagreements": [self.pair_dict(p) for p in self.disagreements],
            "violations": [self.pair_dict(p) for p in self.violations],
        }

    def pair_dict(self, p: Pair) -> dict:
        return {"boundary": p.i, "event": p.event, "differences": p.differences, "note": p.note,
                "emulator": {"class": p.emulated.outcome, "violations": p.emulated.violations,
                             "calls": [c.line() for c in p.emulated.calls or []]},
                "kernel": None if p.native is None else {
                    "class": p.native.record.outcome, "violations": p.native.record.violations,
                    "calls": [c.line() for c in p.native.calls]},
                "reproduce_emulator": self.emulated_command(p), "reproduce_kernel": self.native_command(p)}


def native_side(cfg: SweepConfig, events: list[str], boundaries: list[tuple[int, int]] | None, emit,
                skip: dict[str, str], memory: bool = True) -> tuple[int, CallSummary, list[str], float, Counter]:
    """Run the configuration's native twin and hand every judged run to
    emit(i, event, NativeVerdict, note).  Events in `skip` are not run (the
    caller knows why).  Returns (n, the judged baseline call, the first
    walker's warm-call violations, seconds, why runs were run again)."""
    t0 = time.monotonic()
    run_events = [e for e in events if e not in skip]
    reruns: Counter = Counter()
    with Twin(twin_config(cfg), memory=memory) as tw:
        base = tw.baseline()
        nj = NativeJudge(tw)
        _, bsum = nj.baseline()
        warm = [f"[{v.invariant}] {v.call}: {v.detail}" for v in nj.warm_violations]
        spans = [(0, base.n)] if boundaries is None else [(lo, min(hi, base.n)) for lo, hi in boundaries
                                                          if lo <= base.n]

        def one(run: NativeRun) -> None:
            note = ""
            for attempt in range(RETRIES + 1):
                kind, why = ("", "") if run.skipped else disturbed(run)
                if not kind:
                    break
                reruns[kind] += 1
                if attempt == RETRIES:
                    note = f"in each of {RETRIES + 1} attempts: {why}"
                    break
                run = tw.run_at(run.i, run.event)
            emit(run.i, run.event, nj.run(run), note)

        if run_events:
            for lo, hi in spans:
                tw.sweep(run_events, lo, hi + 1, emit=one)
    return base.n, bsum, warm, time.monotonic() - t0, reruns


def disturbed(run: NativeRun) -> tuple[str, str]:
    """(kind, detail) of why a native run is not the run that was asked for;
    ("", "") if it is."""
    parts = parse_event(run.event)
    want = sum(1 for p in parts if p == "reseed")
    if run.generation_after - run.generation_before != want:
        return ("the kernel's generation moved by itself",
                f"the kernel's generation moved by itself ({run.generation_before} -> {run.generation_after})")
    for e in run.events:
        if not e.applied:
            return f"{e.name} not applied", f"{e.name} not applied: {e.detail}"
    k = next((int(p[4:]) for p in parts if p.startswith("oom:")), None)
    if k is not None and run.failed_charges is not None and run.failed_charges > k:
        return ("oom:K limit lifted late",
                f"{run.failed_charges} page charges failed under oom:{k} (the limit was lifted late)")
    return "", ""


def compare_config(cfg: SweepConfig, image_spec: str, events: list[str], emulated: BaselineRecord,
                   records: list[RunRecord], boundaries: list[tuple[int, int]] | None,
                   skip: dict[str, str], progress=None) -> ConfigComparison:
    """Pair the emulator's records of one configuration with its native runs."""
    by_key = {(r.i, r.event): r for r in records}
    got: dict[tuple[int, str], tuple[NativeVerdict, str]] = {}

    def emit(i: int, event: str, v: NativeVerdict, note: str) -> None:
        got[(i, event)] = (v, note)
        if progress is not None:
            progress(v.record.outcome == "violation")

    n, bsum, warm, secs, reruns = native_side(cfg, events, boundaries, emit, skip)
    cc = ConfigComparison(cfg, image_spec, events, emulated, n, bsum, skipped=dict(skip), warm_violations=warm,
                          native_seconds=secs, reruns=reruns)
    for (i, event), rec in sorted(by_key.items(), key=lambda kv: (kv[0][0], events.index(kv[0][1]))):
        if event in skip:
            cc.pairs.append(Pair(i, event, rec, NativeVerdict(rec, [], skip[event])))
            continue
        nat, note = got.get((i, event), (None, ""))
        p = Pair(i, event, rec, nat, note=note)
        if nat is None:
            p.differences = [f"boundary {i} has no native run (the kernel's call has {n} instructions)"]
        else:
            p.differences = compare_pair(rec, nat)
        cc.pairs.append(p)
    return cc
