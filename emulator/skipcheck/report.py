"""skipcheck's report: the counts per status and per placement, the corpus
lines refused, the emulator issues met, the failures, and the length
cross-check; as text (`format_report`) or as JSON (`Report.as_dict`).

Counts and placements follow what was selected: a run over one placement
reports one placement.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from emulator.skipcheck.corpus import LineError
from emulator.skipcheck.execute import ISSUES, Run
from emulator.skipcheck.lengths import LengthCheck
from emulator.skipcheck.placements import PLACEMENTS

STATUSES = ("pass", "refused", "fail", "error", "n/a")


@dataclass
class Report:
    """One skipcheck: ``instructions`` x ``placements`` cases, one Run each."""
    corpus: str
    policy: str
    instructions: int = 0
    placements: tuple[str, ...] = PLACEMENTS      # the placements selected
    runs: list[Run] = field(default_factory=list)
    line_errors: list[LineError] = field(default_factory=list)
    variants_not_applicable: Counter = field(default_factory=Counter)
    lengths: list[LengthCheck] = field(default_factory=list)
    length_notes: list[str] = field(default_factory=list)
    seconds: float = 0.0
    jobs: int = 1

    @property
    def counts(self) -> Counter:
        return Counter(r.status for r in self.runs)

    def by_placement(self) -> dict[str, Counter]:
        """Status counts per selected placement."""
        out = {p: Counter() for p in self.placements}
        for r in self.runs:
            out.setdefault(r.placement, Counter())[r.status] += 1
        return out

    @property
    def divergences(self) -> list[LengthCheck]:
        return [c for c in self.lengths if c.cls != "agree"]

    @property
    def unexplained(self) -> list[LengthCheck]:
        return [c for c in self.lengths if c.cls == "unexplained"]

    @property
    def ok(self) -> bool:
        c = self.counts
        return not c.get("fail") and not c.get("error") and not self.unexplained and not self.line_errors

    def as_dict(self) -> dict:
        c = self.counts
        return {
            "corpus": self.corpus, "policy": self.policy, "instructions": self.instructions,
            "placements": list(self.placements), "runs": len(self.runs),
            "summary": {k: c.get(k, 0) for k in STATUSES},
            "by_placement": {p: dict(pc) for p, pc in self.by_placement().items()},
            "line_errors": [e.as_dict() for e in self.line_errors],
            "issues": {k: {"runs": dict(v), "explanation": ISSUES[k]}
                       for k, v in sorted(_issue_counts(self.runs).items())},
            "variants_not_applicable": dict(sorted(self.variants_not_applicable.items())),
            "lengths": {"checked": len(self.lengths),
                        "classes": dict(Counter(x.cls for x in self.lengths)),
                        "gas": dict(Counter(x.gas_class for x in self.lengths)),
                        "notes": self.length_notes},
            "divergences": [x.as_dict() for x in self.divergences],
            "gas_differences": [x.as_dict() for x in self.lengths if x.gas_class not in ("same", "n/a")],
            "failures": [r.as_dict() for r in self.runs if r.status in ("fail", "error")],
            "results": [r.as_dict() for r in self.runs],
            "seconds": round(self.seconds, 2), "jobs": self.jobs,
        }


def _issue_counts(runs: list[Run]) -> dict[str, Counter]:
    out: dict[str, Counter] = {}
    for r in runs:
        if r.issue:
            out.setdefault(r.issue, Counter())[r.status] += 1
    return out


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" + ("" if n == 1 else "s")


def format_report(report: Report, verbose: bool = False) -> str:
    """The report as text for a terminal (``verbose``: every failing run
    with its faults, and the prefix variants that did not apply)."""
    c = report.counts
    ran = len(report.runs) - c.get("n/a", 0)
    lines = [f"skipcheck: corpus {report.corpus}, --droppable-oom {report.policy}: "
             f"{_count(report.instructions, 'instruction')} x {_count(len(report.placements), 'placement')}"
             f" = {_count(len(report.runs), 'case')}, {ran} run ({report.seconds:.1f} s, "
             f"{_count(report.jobs, 'job')})"]
    lines.append("  " + ", ".join(f"{k} {c.get(k, 0)}" for k in STATUSES))
    for p, pc in report.by_placement().items():
        lines.append(f"    {p:<12} " + "  ".join(f"{k} {pc.get(k, 0):>4}" for k in STATUSES))
    if report.line_errors:
        lines.append(f"  corpus lines refused: {len(report.line_errors)}")
        for e in report.line_errors:
            lines.append(f"    line {e.line}: {e.text}: {e.error}")
    issues = _issue_counts(report.runs)
    if issues:
        lines.append("  emulator issues met:")
        for key, cnt in sorted(issues.items()):
            lines.append(f"    {key}: " + ", ".join(f"{k} {v}" for k, v in sorted(cnt.items())))
            lines.append(f"      {ISSUES[key]}")
    bad = [r for r in report.runs if r.status in ("fail", "error")]
    if bad:
        lines.append(f"  failures: {len(bad)}")
        by_insn: dict[tuple, list[Run]] = {}
        for r in bad:
            by_insn.setdefault((r.line, r.instruction.split(" [")[0], r.issue), []).append(r)
        for (line, text, issue), rs in sorted(by_insn.items(), key=lambda kv: kv[0][0]):
            where = sorted({f"{r.variant}@{r.placement}" for r in rs})
            lines.append(f"    line {line} {text}: {len(rs)} run(s)" + (f" [{issue}]" if issue else ""))
            shown = rs if verbose else rs[:1]
            for r in shown:
                lines.append(f"      {r.variant}@{r.placement} {r.code.hex(' ')}: {r.detail}")
                if verbose:
                    lines.extend(f"        {f}" for f in r.faults[:4])
            if not verbose and len(rs) > 1:
                lines.append(f"      also: {', '.join(where[:12])}{' ...' if len(where) > 12 else ''}")
    if report.lengths:
        cls = Counter(x.cls for x in report.lengths)
        lines.append(f"  lengths cross-checked: {len(report.lengths)} encodings; "
                     + ", ".join(f"{k} {v}" for k, v in sorted(cls.items())))
        for x in report.divergences:
            lines.append(f"    {x.cls}: {x.line_text()}")
        gas = Counter(x.gas_class for x in report.lengths)
        lines.append("  GNU as on the same source: " + ", ".join(f"{k} {v}" for k, v in sorted(gas.items())))
        for x in report.lengths:
            if x.gas_class in ("other-length", "rejected") or (verbose and x.gas_class == "other-encoding"):
                lines.append(f"    {x.gas_class}: {x.gas_line()}")
        for note in report.length_notes:
            lines.append(f"    note: {note}")
    if verbose and report.variants_not_applicable:
        lines.append("  prefix variants not applicable:")
        for k, v in sorted(report.variants_not_applicable.items()):
            lines.append(f"    {v:>4}  {k}")
    lines.append("  OK" if report.ok else "  FAILED")
    return "\n".join(lines)
