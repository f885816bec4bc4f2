"""A sweep's result: the records, the report a user reads (text and JSON),
and the one-line reproduction of any run."""
from __future__ import annotations

import shlex
import statistics
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass, field

from emulator.cycles.profile import DEFAULT_PROFILE
from emulator.errors import UsageError
from emulator.inject import parse_kind
from emulator.sweep.config import PLACEMENTS, SWEEP_LIVELOCK, SweepConfig
from emulator.sweep.oracle import OUTCOMES
from emulator.sweep.records import BaselineRecord, RunRecord
from emulator.sweep.symbols import symbolize
from vdso.image import VdsoImage


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
    boundaries: list[tuple[int, int]] | None = None      # the spans swept (None: every boundary)

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

    def cycle_stats(self) -> dict[int, dict[str, tuple[float, float]]]:
        """size -> event -> (median, max) of the swept call's cycles under the
        profile, over the runs whose swept call ended ("none": the baselines)."""
        seen: dict[int, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
        for ci, b in self.baselines.items():
            if b.cycles is not None:
                seen[self.configs[ci].size]["none"].append(b.cycles)
        for r in self.records:
            if r.cycles is not None:
                seen[self.configs[r.ci].size][r.event].append(r.cycles)
        return {size: {ev: (statistics.median(xs), max(xs)) for ev, xs in evs.items()}
                for size, evs in seen.items()}

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
        """The run under `faultpath step`, or, for an event the stepper cannot
        make, the sweep of that one run."""
        cfg = self.configs[r.ci]
        if not steppable(r.event):
            return self.recheck(r)
        return repro_command(self.image_spec, cfg, r.event, r.i, self.baselines[r.ci].n)

    def recheck(self, r: RunRecord) -> str:
        return recheck_command(self.image_spec, self.configs[r.ci], r.event, r.i)

    def native_repro(self, r: RunRecord) -> str | None:
        """The run on the running kernel (the native twin), when the image is the host's own vDSO."""
        if self.image_spec != "host":
            return None
        return native_repro_command(self.configs[r.ci], r.event, r.i)

    def where(self, r: RunRecord) -> str:
        if r.where:
            return r.where
        if self.image_obj is None:
            return f"{r.rip:#x}"
        return symbolize(self.image_obj, r.rip)

    # ---- output -------------------------------------------------------------------
    def as_dict(self) -> dict:
        counts = {str(size): {ev: dict(c) for ev, c in evs.items()} for size, evs in sorted(self.counts().items())}
        cycles = {str(size): {ev: {"median": med, "max": top} for ev, (med, top) in evs.items()}
                  for size, evs in sorted(self.cycle_stats().items())}
        return {
            "image": self.image, "image_spec": self.image_spec, "events": self.events,
            "boundaries": self.boundaries,
            "elapsed_s": round(self.elapsed, 3), "jobs": self.jobs, "executor": self.executor,
            "runs": self.runs, "outcomes": dict(self.outcome_totals()), "counts": counts, "cycles": cycles,
            "configs": [dict(asdict(cfg), n=self.baselines[ci].n if ci in self.baselines else None,
                             baseline=self.baselines[ci].outcome if ci in self.baselines else None,
                             cycles=self.baselines[ci].cycles if ci in self.baselines else None,
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
                "instruction": self.where(r), "outcome": r.outcome, "cycles": r.cycles,
                "invariants": sorted({v["invariant"] for v in r.violations}), "violations": r.violations,
                "reproduce": self.repro(r), "recheck": self.recheck(r), "breaks": broken(r.violations),
                "native_repro": self.native_repro(r)}

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
                     f"events={','.join(self.events)} profile={cfg0.profile if cfg0 else '?'}")
        lines.append(f"  sizes {','.join(map(str, sizes))}; states at {','.join(places)}; "
                     f"calls before {','.join(map(str, cbs))}; {cfg0.after if cfg0 else 0} further call(s)"
                     + (f"; boundaries {','.join(f'{a}' if a == b else f'{a}-{b}' for a, b in self.boundaries)}"
                        if self.boundaries is not None else ""))
        lines.append(f"  {len(self.configs)} configurations, {self.runs} runs in {self.elapsed:.1f} s "
                     f"({self.executor}, {self.jobs} job(s))")
        if self.boundaries is not None and not self.records:
            lines.append("  no boundary of --boundaries lies in a swept call's 0..n (n below)")
        counts = self.counts()
        cols = [o for o in OUTCOMES if o in ("ok-fast", "ok-reseed", "ok-fallback", "livelock", "violation")
                or any(counts[s][e][o] for s in counts for e in counts[s])]
        cycles = self.cycle_stats()
        for size in sizes:
            ns = ", ".join(f"{c.placement}/cb{c.calls_before}: n={self.baselines[ci].n}"
                           for ci, c in enumerate(self.configs) if c.size == size and ci in self.baselines)
            lines.append("")
            lines.append(f"size {size} ({ns})")
            lines.append("  " + f"{'event':<10}" + "".join(f"{c:>12}" for c in cols) + f"{'cycles med/max':>20}")
            for ev in ["none"] + self.events:
                cnt = counts[size].get(ev, Counter())
                cyc = cycles.get(size, {}).get(ev)
                cyc_text = f"{cyc[0]:.0f}/{cyc[1]:.0f}" if cyc else "-"
                lines.append("  " + f"{ev:<10}" + "".join(f"{cnt[c]:>12}" for c in cols) + f"{cyc_text:>20}")
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
            more = f" (+{len(bs) - 1} more boundaries: {ranges(bs)})" if len(bs) > 1 else ""
            invs = ", ".join(sorted({v["invariant"] for v in r.violations}))
            lines.append(f"  [{invs}] event={r.event} {cfg.label()}: boundary {r.i} at {self.where(r)}{more}")
            for v in r.violations[:3]:
                lines.append(f"      {v['call']}: [{v['invariant']}] {v['detail']}")
            lines.append(f"      reproduce (breaks {broken(r.violations)}): {self.repro(r)}")
            native = self.native_repro(r)
            if native:
                lines.append(f"      on the running kernel: {native}")
        return "\n".join(lines)


def ranges(xs: list[int], limit: int = 6) -> str:
    """1,2,3,7 -> '1-3,7': the first `limit` runs of sorted integers."""
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


def broken(violations: list[dict]) -> str:
    """What a run broke, as its reproduction line restates it: each invariant
    with the calls that broke it (a crash with its cause)."""
    calls: dict[str, list[str]] = {}
    for v in violations:
        who = v["detail"] if v["invariant"] == "crash" else v["call"]
        if who not in calls.setdefault(v["invariant"], []):
            calls[v["invariant"]].append(who)
    return "; ".join(f"crash: {', '.join(w)}" if inv == "crash" else f"{inv} in {', '.join(w)}"
                     for inv, w in sorted(calls.items()))


def _process_options(cfg: SweepConfig) -> list[str]:
    """The options that set up a configuration's process, where not the default."""
    parts = []
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
    if cfg.profile != DEFAULT_PROFILE:
        parts += ["--profile", shlex.quote(cfg.profile)]
    return parts


def steppable(event: str) -> bool:
    """Can `faultpath step --inject` make this event?  (A reentry is a signal
    handler's whole nested call: only the sweep's harness makes one.)"""
    try:
        parse_kind("oom" if event.startswith("oom") else event)
    except UsageError:
        return False
    return True


def repro_command(image_spec: str, cfg: SweepConfig, event: str, i: int, n: int, tool: str = "step") -> str:
    """One line that replays run (boundary i, event) under `faultpath step`
    (or `faultpath run` with tool="run")."""
    K = cfg.calls_before + 1
    call, at = (K, i) if i < n else (K + 1, 0)
    kinds = ["drop", event] if event.startswith("oom") else [event]
    parts = ["faultpath", tool, "--image", shlex.quote(image_spec), "--size", str(cfg.size), "--calls", str(call)]
    parts += _process_options(cfg)
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


def _call_sizes(cfg: SweepConfig) -> list[str]:
    """--warm-size, --handler-size, --after-size where a configuration sets them."""
    parts = []
    for opt, v in (("--warm-size", cfg.warm_size), ("--handler-size", cfg.nested_size),
                   ("--after-size", cfg.after_size)):
        if v is not None:
            parts += [opt, str(v)]
    return parts


def recheck_command(image_spec: str, cfg: SweepConfig, event: str, i: int) -> str:
    """One line that runs (boundary i, event) again through the sweep: every
    call of the run (further calls, a fork's child, a handler's nested call)
    judged again, the verdict printed with its invariant."""
    parts = ["faultpath", "sweep", "--image", shlex.quote(image_spec), "--size", str(cfg.size), "--placements",
             cfg.placement, "--calls-before", str(cfg.calls_before), "--events", event, "--boundaries", str(i)]
    parts += _process_options(cfg) + _call_sizes(cfg)
    if cfg.after != 1:
        parts += ["--after", str(cfg.after)]
    if cfg.livelock_limit != SWEEP_LIVELOCK:
        parts += ["--livelock", str(cfg.livelock_limit)]
    return " ".join(parts + ["--jobs", "1"])


def native_repro_command(cfg: SweepConfig, event: str, i: int) -> str:
    """One line that runs (boundary i, event) on the running kernel's own
    __vdso_getrandom (the native twin) and in the emulator, and says whether
    the kernel shows what the emulator does.  The emulator side runs the
    kernel's OOM design (retry) unless the configuration says skip."""
    parts = ["faultpath", "sweep", "--native-repro", "--image", "host", "--size", str(cfg.size), "--placements",
             cfg.placement, "--calls-before", str(cfg.calls_before), "--events", event, "--boundaries", str(i)]
    if cfg.droppable_oom != "retry":
        parts += ["--droppable-oom", cfg.droppable_oom]
    if cfg.flags:
        parts += ["--flags", hex(cfg.flags)]
    parts += _call_sizes(cfg)
    if cfg.after != 1:
        parts += ["--after", str(cfg.after)]
    return " ".join(parts)
