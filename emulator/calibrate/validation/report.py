"""The validation table: per case predicted, measured and error; the held-out
part printed apart from the development part, each with its median and max
|error|; which profile produced which figures.  Also as JSON (finite numbers
only: a case without a figure is null, never NaN)."""
from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field

from emulator.calibrate.validation.bodies import Case

# Issue 13's targets for the held-out part (a benchmark, checked by `make bench`).
HELD_OUT_MEDIAN = 10.0
HELD_OUT_MAX = 25.0


@dataclass
class Row:
    case: Case
    predicted: float
    measured: float

    @property
    def error(self) -> float:
        return 100.0 * (self.predicted - self.measured) / self.measured


@dataclass
class ProfileResult:
    profile: str            # the profile's name
    path: str               # the file it came from
    rows: list[Row] = field(default_factory=list)

    def part(self, held_out: bool) -> list[Row]:
        return [r for r in self.rows if r.case.held_out == held_out]

    def summary(self, held_out: bool) -> dict | None:
        e = [abs(r.error) for r in self.part(held_out)]
        if not e:
            return None
        return {"cases": len(e), "median_abs_error_pct": statistics.median(e), "max_abs_error_pct": max(e)}

    def targets_met(self) -> bool | None:
        s = self.summary(True)
        if s is None:
            return None
        return s["median_abs_error_pct"] <= HELD_OUT_MEDIAN and s["max_abs_error_pct"] <= HELD_OUT_MAX


@dataclass
class Validation:
    host: str
    kernel: str
    compiler: str           # "gcc 12.2.0", or why the C bodies are missing
    rounds: int
    placements: int = 1     # fresh mappings each case was measured in (the median over them is the figure)
    results: list[ProfileResult] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def _table(rows: list[Row]) -> list[str]:
    out = [f"    {'body':36} {'size':>14} {'predicted':>10} {'measured':>10} {'error':>8}"]
    for r in rows:
        size = f"{r.case.size} {r.case.body.unit}"
        out.append(f"    {r.case.name:36} {size:>14} {r.predicted:10.0f} {r.measured:10.0f} {r.error:+7.1f}%")
    return out


def _line(name: str, s: dict | None) -> str:
    if s is None:
        return f"  {name}: no cases"
    return (f"  {name}: median |error| {s['median_abs_error_pct']:.1f}%, max {s['max_abs_error_pct']:.1f}% "
            f"over {s['cases']} cases")


def format_text(v: Validation) -> str:
    out = [f"faultpath bench --validate: measured natively on {v.host} (Linux {v.kernel}), {v.compiler}; "
           f"TSC ticks per call, harness loop included; min over {v.rounds} interleaved trials of the mean, "
           f"median over {v.placements} placements; "
           f"error = (predicted - measured) / measured"]
    out += [f"  note: {n}" for n in v.notes]
    for res in v.results:
        out.append("")
        out.append(f"profile {res.profile} ({res.path}): every predicted figure below")
        out.append("  development part (model changes were checked against it):")
        out += _table(res.part(False))
        out.append("  held-out part (fixed in emulator/calibrate/validation/bodies.py; never used to choose or "
                   "fit anything):")
        out += _table(res.part(True))
        out.append(_line("development", res.summary(False)))
        out.append(_line("held-out", res.summary(True)))
    out.append("")
    out.append(format_targets(v))
    return "\n".join(out)


def format_targets(v: Validation) -> str:
    out = [f"targets (issue 13, held-out part): median |error| <= {HELD_OUT_MEDIAN:.0f}%, "
           f"max <= {HELD_OUT_MAX:.0f}%"]
    for res in v.results:
        s = res.summary(True)
        if s is None:
            out.append(f"  {res.profile}: no held-out cases")
            continue
        ok = res.targets_met()
        out.append(f"  {res.profile}: median {s['median_abs_error_pct']:.1f}%, max {s['max_abs_error_pct']:.1f}% "
                   f"-> {'met' if ok else 'MISSED'}")
    return "\n".join(out)


def _finite(x: float) -> float | None:
    return x if isinstance(x, (int, float)) and math.isfinite(x) else None


def as_json(v: Validation) -> dict:
    return {
        "measured_on": {"host": v.host, "kernel": v.kernel, "compiler": v.compiler, "rounds": v.rounds,
                        "placements": v.placements},
        "notes": v.notes,
        "targets": {"held_out_median_abs_error_pct": HELD_OUT_MEDIAN, "held_out_max_abs_error_pct": HELD_OUT_MAX},
        "profiles": [{
            "profile": r.profile, "path": r.path,
            "summary": {"development": r.summary(False), "held_out": r.summary(True)},
            "targets_met": r.targets_met(),
            "rows": [{"image": x.case.image, "body": x.case.body.name, "size": x.case.size,
                      "unit": x.case.body.unit, "held_out": x.case.held_out,
                      "predicted": _finite(x.predicted), "measured": _finite(x.measured),
                      "error_pct": _finite(x.error)} for x in r.rows],
        } for r in v.results],
    }
