"""What `faultpath sweep --native` and `--native-repro` print: per
configuration the agreement table (events x outcome classes, each cell
emulator/kernel runs), then every disagreement, grouped by what differs,
with both sides' calls and one reproduction line for each side."""
from __future__ import annotations

import platform
from collections import defaultdict

from emulator.sweep.report import ranges
from emulator.twin.agreement import CLASSES, ConfigComparison, Pair

ALWAYS = ("ok-fast", "ok-reseed", "ok-fallback", "livelock", "violation")
EXAMPLE_CALLS = 6                 # calls shown per side for one example run


def header(events: list[str], policy: str, jobs: int) -> str:
    return (f"faultpath sweep --native: the host's __vdso_getrandom in the emulator (droppable-oom {policy}, "
            f"{jobs} job(s)) and on the running kernel (Linux {platform.release()}), run by run; "
            f"events {','.join(events)}")


def format_table(cc: ConfigComparison) -> list[str]:
    table = cc.table()
    cols = [c for c in CLASSES if c in ALWAYS or any(row[c] != (0, 0) for row in table.values())]
    e = cc.emulated_baseline
    nb = cc.native_baseline
    bdiff = cc.baseline_differences()
    base = ("baseline agrees" + (f" ({nb.line().split(' ', 3)[3]})" if nb is not None else "")
            if not bdiff else "BASELINE DIFFERS: " + "; ".join(bdiff))
    lines = [f"{cc.config.label()}: n = {e.n} emulated, {cc.native_n} on the kernel; {base}"]
    lines.append("  " + f"{'event':<14}" + "".join(f"{c:>13}" for c in cols) + f"{'agree':>13}")
    agree = cc.agreement()
    for ev in cc.events:
        if ev in cc.skipped:
            continue
        row = table.get(ev)
        if row is None:
            continue
        a, n = agree.get(ev, (0, 0))
        lines.append("  " + f"{ev:<14}" + "".join(f"{f'{row[c][0]}/{row[c][1]}':>13}" for c in cols)
                     + f"{f'{a}/{n}':>13}")
    lines.append("  (each cell: emulator/kernel runs; agree: runs whose class and every call's outcome, return, "
                 "syscalls and verdict match)")
    for ev in cc.events:
        if "reenter" in ev and ev not in cc.skipped and ev in table:
            z = cc.zero_output(ev)
            e, k = z["emulator"], z["kernel"]
            lines.append(f"  {ev}: the interrupted call handed out 8-byte zero words at {e['interrupted_boundaries']} "
                         f"(emulator) / {k['interrupted_boundaries']} (kernel) boundaries "
                         f"({e['interrupted_words']} / {k['interrupted_words']} words; both at "
                         f"{z['both']['interrupted_boundaries']}); a >= 16-byte zero run in any call's output at "
                         f"{e['any_zero_run_boundaries']} / {k['any_zero_run_boundaries']}")
    for ev, why in cc.skipped.items():
        lines.append(f"  {ev}: not run natively: {why}")
    nat = sum(1 for p in cc.pairs if not p.skipped)
    lines.append(f"  native: {nat} runs in {cc.native_seconds:.1f} s"
                 + ("; run again: " + ", ".join(f"{k} ({v})" for k, v in cc.reruns.items()) if cc.reruns else ""))
    for w in cc.warm_violations:
        lines.append(f"  NATIVE WARM CALL: {w}")
    return lines


def _example(cc: ConfigComparison, p: Pair, indent: str = "      ") -> list[str]:
    out = [f"{indent}emulator: {p.emulated.outcome}"]
    out += [f"{indent}  {c.line()}" for c in (p.emulated.calls or [])[:EXAMPLE_CALLS]]
    for v in p.emulated.violations[:2]:
        out.append(f"{indent}  [{v['invariant']}] {v['call']}: {v['detail']}")
    if p.native is not None:
        out.append(f"{indent}kernel:   {p.native.record.outcome}")
        out += [f"{indent}  {c.line()}" for c in p.native.calls[:EXAMPLE_CALLS]]
        for v in p.native.record.violations[:2]:
            out.append(f"{indent}  [{v['invariant']}] {v['call']}: {v['detail']}")
    if p.note:
        out.append(f"{indent}note: {p.note}")
    out.append(f"{indent}emulator run: {cc.emulated_command(p)}")
    out.append(f"{indent}kernel run:   {cc.native_command(p)}")
    return out


def format_disagreements(ccs: list[ConfigComparison], max_groups: int) -> list[str]:
    """Every disagreement, grouped by configuration, event and what differs."""
    groups: dict[tuple, list[tuple[ConfigComparison, Pair]]] = defaultdict(list)
    for ci, cc in enumerate(ccs):
        for p in cc.disagreements:
            groups[(ci, p.event, tuple(p.differences))].append((cc, p))
    total = sum(len(v) for v in groups.values())
    if not total:
        return ["disagreements: none"]
    lines = [f"disagreements: {total} run(s) in {len(groups)} group(s)"]
    for gi, ((ci, ev, diffs), items) in enumerate(sorted(groups.items(), key=lambda kv: (kv[0][0], kv[1][0][1].i))):
        if gi >= max_groups:
            lines.append(f"  ... {len(groups) - max_groups} more group(s) (see --json)")
            break
        cc, p = items[0]
        bs = [x.i for _, x in items]
        more = f" (+{len(bs) - 1} more: boundaries {ranges(bs, 8)})" if len(bs) > 1 else ""
        lines.append(f"  event={ev} {cc.config.label()}: boundary {p.i}{more}")
        for d in diffs[:4]:
            lines.append(f"    {d}")
        lines += _example(cc, p)
    return lines


def format_violations(ccs: list[ConfigComparison], max_groups: int) -> list[str]:
    """Runs either side judged a violation, whether or not the sides agree."""
    items = [(cc, p) for cc in ccs for p in cc.violations]
    if not items:
        return ["violations: none (emulator or kernel)"]
    groups: dict[tuple, list[tuple[ConfigComparison, Pair]]] = defaultdict(list)
    for cc, p in items:
        nat = p.native.record.outcome if p.native is not None and not p.skipped else "-"
        invs = tuple(sorted({v["invariant"] for v in p.emulated.violations}))
        groups[(id(cc), p.event, p.emulated.outcome, nat, invs)].append((cc, p))
    lines = [f"violations: {len(items)} run(s) in {len(groups)} group(s) (emulator class / kernel class)"]
    for gi, ((_, ev, eo, no, invs), g) in enumerate(groups.items()):
        if gi >= max_groups:
            lines.append(f"  ... {len(groups) - max_groups} more group(s) (see --json)")
            break
        cc, p = g[0]
        bs = [x.i for _, x in g]
        lines.append(f"  event={ev} {cc.config.label()}: {eo} / {no} {list(invs) or ''} at {len(bs)} "
                     f"boundaries ({ranges(bs, 8)})")
        lines += _example(cc, p)
    return lines


def format_repro(cc: ConfigComparison, p: Pair) -> list[str]:
    """One run, both sides in full: --native-repro."""
    if p.skipped:
        verdict = f"not run natively: {p.skipped}"
    elif p.agrees:
        what = p.emulated.outcome
        verdict = f"the kernel shows the same ({what}" + (", every call alike)" if p.emulated.calls else ")")
    else:
        verdict = "the kernel differs"
    lines = [f"boundary {p.i}, event {p.event}, {cc.config.label()}: {verdict}"]
    for d in p.differences:
        lines.append(f"    {d}")
    lines += _example(cc, p, indent="  ")
    return lines
