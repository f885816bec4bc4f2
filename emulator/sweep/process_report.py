"""What `faultpath sweep --exec` prints: the table of outcomes per event,
where in the swept call the violations fall (glibc's wrapper before the
vDSO, the vDSO, the wrapper after it, after the return), how a signal
handler's getrandom() was served at each boundary, and for every violation
a `faultpath exec --inject` line that runs the same thing in the whole
program (and a sweep line that judges that one run again)."""
from __future__ import annotations

import shlex
from collections import Counter, defaultdict
from dataclasses import dataclass

from emulator.cycles.profile import DEFAULT_PROFILE
from emulator.sweep.config import SWEEP_LIVELOCK
from emulator.sweep.exec_config import DEFAULT_CALL, ExecSweepConfig
from emulator.sweep.process_harness import ExecBaselineRecord, ExecRunRecord, event_kinds
from emulator.sweep.report import SweepResult, broken, ranges

COLUMNS = ("ok-fast", "ok-reseed", "ok-fallback", "livelock", "violation", "crash")
REGIONS = ("glibc before", "vDSO", "glibc after", "after return")
NESTED = {"glibc-syscall": "glibc's syscall (the state is reserved in the TCB)",
          "vdso": "the vDSO, with the state", "vdso-fallback": "the vDSO's own fallback syscall (in_use)"}


@dataclass
class ExecSweepReport:
    result: SweepResult
    cfg: ExecSweepConfig

    @property
    def base(self) -> ExecBaselineRecord | None:
        b = self.result.baselines.get(0)
        return b if isinstance(b, ExecBaselineRecord) else None

    @property
    def records(self) -> list[ExecRunRecord]:
        return self.result.records

    @property
    def failed(self) -> bool:
        return self.result.failed

    # ---- where a boundary is -----------------------------------------------------------
    def region(self, i: int) -> str:
        b = self.base
        if i >= b.n:
            return "after return"
        if b.vdso_start is None or i < b.vdso_start:
            return "glibc before"
        if b.vdso_end is None or i < b.vdso_end:
            return "vDSO"
        return "glibc after"

    def spans(self) -> str:
        b = self.base
        if b.vdso_start is None:
            return f"0-{b.n - 1} glibc (no vDSO call), {b.n} after the return"
        end = b.vdso_end if b.vdso_end is not None else b.n
        return (f"0-{b.vdso_start - 1} glibc before the vDSO, {b.vdso_start}-{end - 1} the vDSO, "
                f"{end}-{b.n - 1} glibc after it, {b.n} after the return")

    def injection_point(self, i: int) -> str:
        """Boundary i as `faultpath exec --inject` names it: instruction N of
        the vDSO call inside the vDSO, else the absolute instruction index."""
        b = self.base
        if b.vdso_start is not None and b.vdso_end is not None and b.vdso_start <= i < b.vdso_end:
            return f"getrandom#{self.cfg.call}:{i - b.vdso_start}"
        return str(b.entry_index + i)

    # ---- reproduction ---------------------------------------------------------------------
    def _common(self) -> list[str]:
        c = self.cfg
        parts = []
        if c.image_spec != "builtin":
            parts += ["--image", shlex.quote(c.image_spec)]
        if c.seed:
            parts += ["--seed", str(c.seed)]
        if c.droppable_oom != "skip":
            parts += ["--droppable-oom", c.droppable_oom]
        if c.profile != DEFAULT_PROFILE:
            parts += ["--profile", shlex.quote(c.profile)]
        for d in c.allow_read:
            parts += ["--allow-read", shlex.quote(d)]
        for e in c.env or ():
            parts += ["--env", shlex.quote(e)]
        return parts

    def repro(self, r: ExecRunRecord) -> str:
        """The run in the whole program: `faultpath exec` with the event's
        injections at the boundary, and the world healed where the sweep
        healed it (the swept call's return in that run)."""
        c = self.cfg
        at = self.injection_point(r.i)
        parts = ["faultpath", "exec", *self._common(), "--memory", str(c.memory_pages), "--livelock",
                 str(c.livelock_limit)]
        for k in event_kinds(r.event, c.reenter_signal):
            parts += ["--inject", f"{k}@{at}"]
        if r.heal_at is not None and r.i < self.base.n:
            if r.event.startswith("oom"):
                parts += ["--inject", f"oom-off@{r.heal_at}"]
            elif r.event == "not-ready":
                parts += ["--inject", f"ready@{r.heal_at}"]
        return " ".join(parts + [shlex.quote(c.program), *map(shlex.quote, c.args)])

    def recheck(self, r: ExecRunRecord) -> str:
        """The same run judged again by the sweep (every call of it)."""
        c = self.cfg
        parts = ["faultpath", "sweep", *self._common(), "--memory", str(c.memory_pages), "--events", r.event,
                 "--boundaries", str(r.i), "--jobs", "0"]
        if c.call != DEFAULT_CALL:
            parts += ["--call", str(c.call)]
        if c.after != 1:
            parts += ["--after", str(c.after)]
        if c.livelock_limit != SWEEP_LIVELOCK:
            parts += ["--livelock", str(c.livelock_limit)]
        if c.reenter_signal != "SIGUSR1":
            parts += ["--reenter-signal", c.reenter_signal]
        return " ".join(parts + ["--exec", shlex.quote(c.program), *map(shlex.quote, c.args)])

    # ---- tables ----------------------------------------------------------------------------
    def counts(self) -> dict[str, Counter]:
        out: dict[str, Counter] = defaultdict(Counter)
        b = self.base
        if b is not None:
            out["none"][b.outcome] += 1
        for r in self.records:
            out[r.event][r.outcome] += 1
        return out

    def by_region(self) -> dict[str, dict[str, list[int]]]:
        """event -> region -> [runs with a violation or crash, runs]."""
        out: dict[str, dict[str, list[int]]] = defaultdict(lambda: {g: [0, 0] for g in REGIONS})
        for r in self.records:
            cell = out[r.event][self.region(r.i)]
            cell[1] += 1
            cell[0] += r.outcome in ("violation", "crash")
        return out

    def nested_paths(self) -> dict[str, dict[str, list[int]]]:
        """event -> how the handler's getrandom() inside the swept call was served -> boundaries."""
        out: dict[str, dict[str, list[int]]] = defaultdict(lambda: defaultdict(list))
        for r in self.records:
            if r.nested:
                out[r.event][r.nested].append(r.i)
        return out

    def zero_words(self) -> Counter:
        c: Counter = Counter()
        for r in self.records:
            c[r.event] += r.zero_words
        return c

    def format(self, max_groups: int = 30) -> str:
        res, c, b = self.result, self.cfg, self.base
        lines = [f"faultpath sweep --exec {' '.join([c.program, *c.args])}",
                 f"  image {res.image}, droppable-oom {c.droppable_oom}, seed {c.seed}, memory {c.memory_pages} "
                 f"pages, events {','.join(res.events)}"]
        if b is None:
            bl = res.baselines.get(0)
            why = bl.violations[0]["detail"] if bl is not None and bl.violations else "no baseline"
            return "\n".join(lines + [f"  BASELINE failed: {why}"])
        lines.append(f"  swept: the program's getrandom() #{b.seq} (vDSO call {c.call}), {b.length} bytes, from "
                     f"{b.entry} (instruction {b.entry_index}) to its return: n = {b.n}")
        lines.append(f"  boundaries {self.spans()}")
        lines.append(f"  {b.warm_calls} warm call(s) judged before it; {c.after} further call(s) per process; "
                     f"{res.runs} runs in {res.elapsed:.1f} s ({res.executor}, {res.jobs} job(s))"
                     + (f"; boundaries {','.join(f'{x}' if x == y else f'{x}-{y}' for x, y in res.boundaries)}"
                        if res.boundaries is not None else ""))
        counts, zeros = self.counts(), self.zero_words()
        lines += ["", "  " + f"{'event':<14}" + "".join(f"{k:>12}" for k in COLUMNS) + f"{'zero words':>12}"]
        for ev in ["none"] + res.events:
            cnt = counts.get(ev, Counter())
            lines.append("  " + f"{ev:<14}" + "".join(f"{cnt[k]:>12}" for k in COLUMNS)
                         + f"{zeros[ev] if ev != 'none' else 0:>12}")
        regions = self.by_region()
        lines += ["", "runs with a violation or crash / runs, by where the boundary lies:",
                  "  " + f"{'event':<14}" + "".join(f"{g:>15}" for g in REGIONS)]
        for ev in res.events:
            cells = regions.get(ev, {g: [0, 0] for g in REGIONS})
            lines.append("  " + f"{ev:<14}" + "".join(f"{f'{cells[g][0]}/{cells[g][1]}':>15}" for g in REGIONS))
        nested = self.nested_paths()
        if nested:
            lines += ["", "a signal handler's getrandom() inside the swept call was served by:"]
            for ev, paths in nested.items():
                for path, bs in sorted(paths.items(), key=lambda kv: kv[1][0]):
                    lines.append(f"  {ev:<14} {NESTED.get(path, path)}: {len(bs)} boundaries ({ranges(bs, 8)})")
        lines += self._livelocks() + self._violations(max_groups)
        return "\n".join(lines)

    def _livelocks(self) -> list[str]:
        sites = Counter((r.event, r.livelock) for r in self.records if r.outcome == "livelock")
        if not sites:
            return []
        out = ["", "livelocks (expected under persistent OOM; neither pass nor violation):"]
        for (ev, where), k in sorted(sites.items()):
            out.append(f"  {ev}: {k} run(s): {where}")
        return out

    def _violations(self, max_groups: int) -> list[str]:
        b = self.base
        bad = [v for v in b.warm_violations + b.violations]
        out = [""] + [f"BASELINE: [{v['invariant']}] {v['call']}: {v['detail']}" for v in bad]
        viol = self.result.violations
        if not viol:
            return out + ["violations: none"]
        groups: dict[tuple, list[ExecRunRecord]] = defaultdict(list)
        for r in viol:
            first = r.violations[0]
            groups[(r.event, self.region(r.i), first["invariant"], first["call"].split("[")[-1])].append(r)
        out.append(f"violations: {len(viol)} run(s) in {len(groups)} group(s)")
        for gi, (key, rs) in enumerate(sorted(groups.items(), key=lambda kv: kv[1][0].i)):
            if gi >= max_groups:
                out.append(f"  ... {len(groups) - max_groups} more group(s) (see --json)")
                break
            r = rs[0]
            bs = sorted({x.i for x in rs})
            more = f" (+{len(bs) - 1} more boundaries: {ranges(bs)})" if len(bs) > 1 else ""
            invs = ", ".join(sorted({v["invariant"] for v in r.violations}))
            out.append(f"  [{invs}] event={r.event} in {key[1]}: boundary {r.i} at {r.where or hex(r.rip)}{more}")
            for v in r.violations[:3]:
                out.append(f"      {v['call']}: [{v['invariant']}] {v['detail']}")
            out.append(f"      reproduce (breaks {broken(r.violations)}): {self.repro(r)}")
            out.append(f"      judge again: {self.recheck(r)}")
        return out

    def as_dict(self) -> dict:
        res, b = self.result, self.base
        return {
            "program": self.cfg.program, "args": list(self.cfg.args), "config": {
                k: getattr(self.cfg, k) for k in ("image_spec", "call", "after", "seed", "memory_pages",
                                                   "droppable_oom", "livelock_limit", "profile", "reenter_signal")},
            "image": res.image, "events": res.events, "boundaries": res.boundaries, "elapsed_s": round(res.elapsed, 3),
            "jobs": res.jobs, "executor": res.executor, "runs": res.runs,
            "swept": None if b is None else {
                "seq": b.seq, "vdso_call": self.cfg.call, "length": b.length, "entry": b.entry,
                "entry_index": b.entry_index, "n": b.n, "vdso_start": b.vdso_start, "vdso_end": b.vdso_end,
                "baseline": b.outcome, "ret": b.ret, "cycles": b.cycles, "warm_calls": b.warm_calls,
                "baseline_violations": b.warm_violations + b.violations},
            "counts": {ev: dict(cnt) for ev, cnt in self.counts().items()},
            "by_region": {ev: {g: {"bad": v[0], "runs": v[1]} for g, v in cells.items()}
                          for ev, cells in self.by_region().items()},
            "nested": {ev: {p: bs for p, bs in paths.items()} for ev, paths in self.nested_paths().items()},
            "zero_words": dict(self.zero_words()),
            "runs_detail": [{"boundary": r.i, "event": r.event, "outcome": r.outcome, "nested": r.nested,
                             "zero_words": r.zero_words} for r in self.records] if b is not None else [],
            "violations": [{"boundary": r.i, "event": r.event, "region": self.region(r.i), "where": r.where,
                            "outcome": r.outcome, "violations": r.violations, "reproduce": self.repro(r),
                            "recheck": self.recheck(r), "breaks": broken(r.violations)}
                           for r in res.violations] if b is not None else [],
            "failed": self.failed,
        }
