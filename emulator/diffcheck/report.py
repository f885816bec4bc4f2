"""The differential table, as text and as JSON."""
from __future__ import annotations

from emulator.diffcheck.explain import REGISTRY
from emulator.diffcheck.run import Totals

REASONS = {e.name: e.reason for e in REGISTRY}

SHOW_DETAILS = 4


def _rate(n: int, s: float) -> str:
    return f"{n / s:,.0f}/s" if s > 0 else "-"


def format_text(t: Totals, examples: int = 1) -> str:
    kinds = ", ".join(f"{k} {v}" for k, v in t.kinds.items())
    out = [f"faultpath diffcheck: seed {t.seed}, {t.total} sequences ({kinds})",
           f"speed: native {_rate(t.total, t.native_s)}, emulated {_rate(t.total, t.emulated_s)} "
           f"(sequence runs only; wall {t.wall_s:.1f} s)",
           f"equal {t.equal}, different {t.different} (explained {sum(t.explained.values())}, "
           f"unexplained: {t.unexplained})"]
    if t.explained:
        out += ["", "explained (not emulator bugs; emulator/diffcheck/explain.py):"]
        for name, n in t.explained.most_common():
            out.append(f"{n:>6}  {name}: {REASONS.get(name, '')}")
            for d, why in t.explained_examples.get(name, [])[:examples]:
                out.append(f"          e.g. {why}  [{d.seq.reproduce()}]")
    if not t.classes:
        return "\n".join(out)
    out += ["", f"unexplained: {t.unexplained} in {len(t.classes)} classes"]
    width = max(len(k) for k in t.classes) + 2
    out += ["", f"{'count':>6}  {'class (where it arises)':<{width}}wrong flags          most frequent accesses"]
    for k, n in t.classes.most_common():
        acc = "; ".join(f"{a} ({c})" for a, c in t.accesses.get(k, {}).most_common(3))
        bits = " ".join(f"{b}:{c}" for b, c in t.flag_bits.get(k, {}).most_common()) or "-"
        out.append(f"{n:>6}  {k:<{width}}{bits:<20} {acc}")
    out += ["", "examples (one per class, most frequent class first):"]
    for k, _n in t.classes.most_common():
        for d in t.examples.get(k, [])[:examples]:
            seq = d.seq
            out.append(f"- {k}")
            out.append(f"    {seq.reproduce()}")
            out.append(f"    {seq.note}; pages {', '.join(seq.pages)}")
            out.append(f"    code: {' ; '.join(line.replace(chr(10), ' ') for line in seq.lines)}")
            for line in d.details[:SHOW_DETAILS]:
                out.append(f"    {line}")
            if len(d.details) > SHOW_DETAILS:
                out.append(f"    ... {len(d.details) - SHOW_DETAILS} more")
    return "\n".join(out)


def as_json(t: Totals) -> dict:
    return {
        "seed": t.seed, "sequences": t.total, "kinds": t.kinds, "equal": t.equal, "different": t.different,
        "unexplained": t.unexplained,
        "explained": [{"name": k, "count": n, "reason": REASONS.get(k, ""),
                       "examples": [{"why": why, "reproduce": d.seq.reproduce()} for d, why in
                                    t.explained_examples.get(k, [])]} for k, n in t.explained.most_common()],
        "seconds": {"native": round(t.native_s, 3), "emulated": round(t.emulated_s, 3), "wall": round(t.wall_s, 3)},
        "classes": [{"class": k, "count": n, "accesses": dict(t.accesses.get(k, {}).most_common()),
                     "flag_bits": dict(t.flag_bits.get(k, {}).most_common()),
                     "examples": [d.as_dict() for d in t.examples.get(k, [])]}
                    for k, n in t.classes.most_common()],
    }
