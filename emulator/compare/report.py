"""Rendering `faultpath compare` results: text tables (one per scenario, the
summary matrix, the cycle table) and a dependency-free SVG picture of the
summary matrix and the cycle comparison."""
from __future__ import annotations

import math
from xml.sax.saxutils import escape

from emulator.compare.core import PROPERTIES, no_cost
from emulator.compare.scenarios import SCENARIOS, describe


# ---------------------------------------------------------------------- text
def _fmt(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return f"{v:.0f}" if abs(v) >= 100 or v == int(v) else f"{v:.1f}"
    return str(v)


def table(headers: list[str], rows: list[list]) -> str:
    cells = [[_fmt(c) for c in r] for r in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) if cells else len(h) for i, h in enumerate(headers)]
    def line(vals, first_left=True):
        out = []
        for i, (v, w) in enumerate(zip(vals, widths)):
            out.append(v.ljust(w) if i == 0 and first_left else v.rjust(w))
        return "  ".join(out).rstrip()
    sep = "  ".join("-" * w for w in widths)
    return "\n".join([line(headers), sep] + [line(r) for r in cells])


# (header, metric) per scenario; a metric is a key or a function of the metrics dict
_COLUMNS = {
    "steady": [("calls", "calls"), ("ok", "returned"), ("cyc mean", "cycles_mean"), ("cyc p99", "cycles_p99"),
               ("faults", "faults"), ("reseeds", "reseeds"), ("dup B", "dup_output_bytes"),
               ("frames", "frames_peak"), ("state frames", "state_frames"), ("locked", "locked_pages"),
               ("pinned", "pinned_pages")],
    "pressure": [("ok", "returned"), ("killed", "killed"), ("cyc mean", "cycles_mean"), ("cyc p99", "cycles_p99"),
                 ("faults", "faults"), ("reseeds", "reseeds"), ("drops", "drops"),
                 ("state->swap", "swap_state_writes"), ("key B->swap", "swap_key_bytes"),
                 ("out B->swap (state)", "swap_output_state_bytes"), ("out B->swap (any)", "swap_output_bytes"),
                 ("frames", "frames_peak")],
    "swap": [("ok", "returned"), ("cyc mean", "cycles_mean"), ("cyc p99", "cycles_p99"), ("reseeds", "reseeds"),
             ("drops", "drops"), ("swapouts", "swapouts"), ("swapins", "swapins"),
             ("state->swap", "swap_state_writes"), ("key B->swap", "swap_key_bytes"),
             ("out B->swap (state)", "swap_output_state_bytes"), ("out B->swap (any)", "swap_output_bytes")],
    "fork": [("boundaries", "boundaries"), ("child ok", "child_completed"),
             ("dup@ (state)", "boundaries_dup_state"), ("dup B (state)", "dup_state_bytes"),
             ("dup window (buffer-inherited)", "inherited_window"), ("reseeds", "reseeds"),
             ("child locked", "child_locked_pages"),
             ("post-fork key->swap parent/child",
              lambda m: f"{m['post_fork_swap_key_parent']}/{m['post_fork_swap_key_child']}"),
             ("cyc mean", "cycles_mean"), ("cyc p99", "cycles_p99")],
    "coredump": [("dumps", "dumps"), ("with key", "dumps_with_key"), ("key B max", "dump_key_bytes_max"),
                 ("state out B max", "dump_output_state_bytes_max"), ("any out B max", "dump_output_bytes_max"),
                 ("state dumped", "state_dumped"), ("cyc mean", "cycles_mean")],
    "memlock": [("threads", "threads"), ("with state", "threads_with_state"),
                ("rlimit fail", "alloc_fail_rlimit"), ("syscall", "libc_fallbacks"), ("locked", "locked_pages"),
                ("pinned", "pinned_pages"), ("frames", "frames_peak"), ("cyc mean", "cycles_mean"),
                ("cyc p99", "cycles_p99")],
    "reenter": [("boundaries", "plain_boundaries"),
                ("handler fell back", "plain_nested_fallback"),
                ("evicted: handler used state", "evicted_nested_used_state"),
                ("zero-output @", lambda m: m.get("plain_boundaries_zero_output", 0)
                 + m.get("evicted_boundaries_zero_output", 0)),
                ("zero B", "zero_output_bytes"),
                ("dup @", lambda m: m.get("plain_boundaries_dup_output", 0) + m.get("evicted_boundaries_dup_output", 0)),
                ("cyc mean", "cycles_mean")],
    "strict-overcommit": [("threads", "threads"), ("with state", "threads_with_state"),
                          ("commit fail", "alloc_fail_overcommit"), ("syscall", "libc_fallbacks"),
                          ("committed", "committed_pages"), ("cyc mean", "cycles_mean"), ("cyc p99", "cycles_p99")],
}
_COMMON_TAIL = [("killed", "killed"), ("signals", "signals"), ("livelock u/k", lambda m: f"{m['livelock_user']}/{m['livelock_kernel']}"),
                ("zero B", "zero_output_bytes")]


def _val(m: dict, spec):
    return spec(m) if callable(spec) else m.get(spec)


def oom_tables(report: dict) -> str:
    res = report["results"]["oom"]
    designs = report["config"]["designs"]
    modes = report["config"]["oom_modes"]
    points = []
    for d in designs:
        for r in res[d]["rows"]:
            if r["at"] not in points:
                points.append(r["at"])
    out = []
    for pt in points:
        rows = []
        for d in designs:
            cells = {r["mode"]: r for r in res[d]["rows"] if r["at"] == pt}
            row = [d]
            for mode in modes:
                r = cells.get(mode)
                row.append(_oom_cell(r) if r else "-")
            rows.append(row)
        out.append(f"-- reclaim takes the state page at {pt}, then allocations fail:")
        out.append(table(["design"] + list(modes), rows))
    svr = report.get("skip_vs_retry") or []
    if svr:
        out.append("-- what skip does that retry does not (same run, same failures):")
        for v in svr:
            out.append(f"   {v['mode']:<11} at {v['at']}: {v['verdict']}")
    out.append("   done: returned; SPIN-user / SPIN-kernel: livelock at the vDSO's write / in getrandom's "
               "copy_to_user; KILLED: OOM kill;\n   s: user writes skipped, u: user refaults, k: kernel-copy "
               "refaults, r: reseeds, fb: vDSO fell back to the syscall")
    return "\n".join(out)


def _oom_cell(r: dict) -> str:
    o = r["outcome"]
    word = {"returned": "done", "killed": "KILLED", "livelock (user)": "SPIN-user",
            "livelock (kernel)": "SPIN-kernel"}.get(o, o)
    bits = [word]
    for k, tag in (("skips", "s"), ("user_refaults", "u"), ("kernel_refaults", "k"), ("reseeds", "r"),
                   ("fallbacks", "fb")):
        if r.get(k):
            bits.append(f"{tag}{r[k]}")
    if r.get("zero_output_bytes"):
        bits.append(f"zero{r['zero_output_bytes']}B")
    return " ".join(bits)


def scenario_tables(report: dict) -> str:
    out = []
    designs = report["config"]["designs"]
    for s in report["config"]["scenarios"]:
        # describe() again: a report saved before the wording followed --boundaries
        doc = describe(report["scenarios"][s], report["config"]["boundaries"])
        doc = doc.split("\n\n")[0].replace("\n", " ")
        doc = " ".join(doc.split())
        out.append(f"== {s}: {doc}")
        if s == "oom":
            out.append(oom_tables(report))
        else:
            cols = _COLUMNS.get(s, []) + [c for c in _COMMON_TAIL if c[0] not in {h for h, _ in _COLUMNS.get(s, [])}]
            rows = []
            for d in designs:
                m = report["results"][s][d]["metrics"]
                rows.append([d] + [_val(m, spec) for _, spec in cols])
            out.append(table(["design"] + [h for h, _ in cols], rows))
        out.append("")
    return "\n".join(out)


def summary_table(report: dict) -> str:
    designs = report["config"]["designs"]
    props = [(k, h) for k, h in PROPERTIES]
    rows = []
    for d in designs:
        row = [d]
        for k, _ in props:
            c = report["summary"][d][k]
            row.append(c["verdict"] if c["verdict"] != "info" else c["text"])
        rows.append(row)
    ran = report["config"]["scenarios"]
    # a subset is named, so that the n/a cells read against what did run
    whence = "" if set(ran) >= set(SCENARIOS) else f": {', '.join(ran)} only"
    out = [f"== summary: designs x properties (from the runs above{whence})",
           table(["design"] + [h for _, h in props], rows), ""]
    for d in designs:
        out.append(f"{d}:")
        for k, h in props:
            c = report["summary"][d][k]
            if c["verdict"] != "info":
                out.append(f"  {h}: {c['verdict']} - {c['text']}")
    return "\n".join(out)


def cycles_text(report: dict) -> str:
    scen = report["config"]["scenarios"]
    rows = []
    for d in report["config"]["designs"]:
        row = [d]
        for s in scen:
            c = report["cycles"][d].get(s)
            row.append(f"{c['mean']:.0f}/{c['p99']:.0f}" if c else f"{_why_no_cost(report, s, d)}: no cost")
        rows.append(row)
    return "== cycles per call that returned (TSC cycles, mean/p99)\n" + table(["design"] + scen, rows)


def _why_no_cost(report: dict, scenario: str, design: str) -> str:
    """Why a run has no cycles (`killed`), so that no design drops out of a
    column or a bar group without a word."""
    return no_cost(report["results"][scenario][design]["metrics"]) or "no call returned"


def format_report(report: dict) -> str:
    cfg = report["config"]
    head = (f"faultpath compare: image={report['image']['name']} (abi {report['image']['abi']}) seed={cfg['seed']} "
            f"designs={','.join(cfg['designs'])}\n"
            f"  boundaries={'all' if cfg['boundaries'] is None else cfg['boundaries']} "
            f"livelock-limit={cfg['livelock_limit']} elapsed={report['elapsed_s']}s\n")
    return "\n".join([head, scenario_tables(report), cycles_text(report), "", summary_table(report)])


# ---------------------------------------------------------------------- SVG
# Colours of the picture. Verdicts alone use green, red and amber; the designs'
# bars use blues and purples, so that no bar reads as "broken" or "holds". In
# grey-scale the verdicts still differ by their word (YES, NO, PARTLY) and
# border (NO: heavy, PARTLY: dashed), and the designs' colours by lightness
# (grey levels 43, 85, 128, 160 and 215 of 255, darkest first).
_VERDICT_FILL = {"yes": "#cdeccf", "no": "#f8c9c9", "partial": "#fde3b5", "info": "#e4ecf7", "n/a": "#eeeeee"}
_VERDICT_WORD = {"yes": "YES", "no": "NO", "partial": "PARTLY", "info": "", "n/a": "n/a"}
_VERDICT_BORDER = {"no": 'stroke="#7a1f1f" stroke-width="2"',
                   "partial": 'stroke="#8a5a00" stroke-width="1.2" stroke-dasharray="4 2"'}
_VERDICT_LEGEND = [("yes", "YES: every run kept the property"), ("no", "NO: a run broke it"),
                   ("partial", "PARTLY: some runs"), ("info", "measured cost"), ("n/a", "n/a: scenario not run")]
DESIGN_COLORS = {"droppable-skip": "#08306b", "mlock": "#6a3d9a", "droppable-retry": "#4292c6",
                 "pinned": "#9e9ac8", "plain-anon": "#c6dbef"}
# designs from elsewhere (a future one, a saved report): the same blues and purples
_SPARE_COLORS = ["#2d004b", "#807dba", "#deebf7"]


_THIN_BORDER = 'stroke="#bbb" stroke-width="0.5"'
_BAR_EDGE = 'stroke="#333" stroke-width="0.4"'     # the palest bar needs an edge on white


def design_color(design: str, index: int) -> str:
    return DESIGN_COLORS.get(design) or _SPARE_COLORS[index % len(_SPARE_COLORS)]

def _wrap(text: str, width: int) -> list[str]:
    lines, cur = [], ""
    for word in text.split():
        if cur and len(cur) + 1 + len(word) > width:
            lines.append(cur)
            cur = word
        else:
            cur = f"{cur} {word}" if cur else word
    if cur:
        lines.append(cur)
    return lines


def _t(x, y, s, size=11, anchor="start", weight="normal", fill="#222") -> str:
    return (f'<text x="{x:.1f}" y="{y:.1f}" font-size="{size}" text-anchor="{anchor}" '
            f'font-weight="{weight}" fill="{fill}">{escape(str(s))}</text>')


def render_svg(report: dict) -> str:
    designs = report["config"]["designs"]
    props = PROPERTIES
    name_w, cell_w, pad = 120, 150, 16
    width = pad * 2 + name_w + cell_w * len(props)
    el = []
    y = pad + 18
    img = report["image"]["name"]
    el.append(_t(pad, y, f"faultpath compare: vgetrandom state designs (image {img}, seed {report['config']['seed']})",
                 size=15, weight="bold"))
    y += 22
    el.append(_t(pad, y, "Every cell is derived from emulated runs of the vDSO machine code.", size=10, fill="#555"))
    # the verdicts' colours, drawn as the cells are (fill, border, word)
    lx = pad + 370
    for v, label in _VERDICT_LEGEND:
        el.append(f'<rect x="{lx}" y="{y - 9}" width="14" height="11" rx="2" fill="{_VERDICT_FILL[v]}" '
                  f'{_VERDICT_BORDER.get(v, _THIN_BORDER)}/>')
        el.append(_t(lx + 18, y, label, size=10, fill="#333"))
        lx += 30 + 5.6 * len(label)
    y += 14
    # header
    hy = y + 14
    for j, (_, h) in enumerate(props):
        x = pad + name_w + j * cell_w + cell_w / 2
        el.append(_t(x, hy, h, size=11, anchor="middle", weight="bold"))
    y = hy + 8
    cell_lines = 6
    cell_h = 14 + cell_lines * 11
    for d in designs:
        el.append(_t(pad + 4, y + cell_h / 2 + 4, d, size=12, weight="bold"))
        for j, (k, _) in enumerate(props):
            c = report["summary"][d][k]
            x = pad + name_w + j * cell_w
            el.append(f'<rect x="{x + 1}" y="{y + 1}" width="{cell_w - 2}" height="{cell_h - 2}" rx="3" '
                      f'fill="{_VERDICT_FILL.get(c["verdict"], "#eee")}" '
                      f'{_VERDICT_BORDER.get(c["verdict"], _THIN_BORDER)}/>')
            ty = y + 13
            word = _VERDICT_WORD.get(c["verdict"], c["verdict"])
            if word:
                el.append(_t(x + 6, ty, word, size=10, weight="bold"))
                ty += 12
            lines = _wrap(c["text"], 27)
            maxl = cell_lines - (1 if word else 0)
            if len(lines) > maxl:
                lines = lines[:maxl - 1] + [lines[maxl - 1][:24] + "..."]
            for ln in lines:
                el.append(_t(x + 6, ty, ln, size=9, fill="#333"))
                ty += 11
        y += cell_h
    # cycle comparison: grouped log-scale bars, mean (bar) and p99 (tick)
    y += 34
    el.append(_t(pad, y, "Cycles per returned call (TSC cycles, log scale): bar = mean, tick = p99", size=13,
                 weight="bold"))
    y += 16
    el.append(_t(pad, y, "A design without a bar returned no call in that scenario; the reason is written "
                 "in the bar's place.", size=10, fill="#555"))
    y += 6
    scen = report["config"]["scenarios"]
    vals = [v for d in designs for s in scen for v in
            ((report["cycles"][d].get(s) or {}).get("mean"), (report["cycles"][d].get(s) or {}).get("p99")) if v]
    lo = 10.0
    hi = max(vals) if vals else 1000.0
    lo_l, hi_l = math.log10(lo), math.log10(hi * 1.2)
    plot_x = pad + name_w
    plot_w = width - plot_x - pad - 10
    bar_h = 8
    group_h = bar_h * len(designs) + 10

    def xs(v):
        v = max(v, lo)
        return plot_x + (math.log10(v) - lo_l) / (hi_l - lo_l) * plot_w

    top = y + 8
    # legend
    lx = plot_x
    for i, d in enumerate(designs):
        col = design_color(d, i)
        el.append(f'<rect x="{lx}" y="{top - 2}" width="10" height="8" fill="{col}" {_BAR_EDGE}/>')
        el.append(_t(lx + 14, top + 6, d, size=10))
        lx += 24 + 7 * len(d)
    top += 16
    bottom = top + group_h * len(scen)
    dec = int(math.floor(lo_l))
    while 10 ** dec <= hi * 1.2:
        if 10 ** dec >= lo:
            gx = xs(10 ** dec)
            el.append(f'<line x1="{gx:.1f}" y1="{top}" x2="{gx:.1f}" y2="{bottom}" stroke="#ddd"/>')
            el.append(_t(gx, bottom + 12, f"{10 ** dec:,}", size=9, anchor="middle", fill="#555"))
        dec += 1
    for si, s in enumerate(scen):
        gy = top + si * group_h
        el.append(_t(pad + 4, gy + group_h / 2 + 3, s, size=11))
        for i, d in enumerate(designs):
            c = report["cycles"][d].get(s)
            by = gy + 4 + i * bar_h
            if not c:
                # no bar must not look like a missing run: say why, where the bar would be
                el.append(_t(plot_x + 4, by + bar_h - 1.5, f"{d}: {_why_no_cost(report, s, d)}, no cost", size=8,
                             fill="#333"))
                continue
            col = design_color(d, i)
            el.append(f'<rect x="{plot_x}" y="{by}" width="{max(0.5, xs(c["mean"]) - plot_x):.1f}" '
                      f'height="{bar_h - 1}" fill="{col}" {_BAR_EDGE}><title>{escape(d)} {escape(s)}: mean '
                      f'{c["mean"]:.0f}, p99 {c["p99"]:.0f} cycles ({c["calls"]} calls)</title></rect>')
            # the tick is dark whatever the bar's colour: a pale one would vanish on white
            px = xs(c["p99"])
            el.append(f'<line x1="{px:.1f}" y1="{by - 1}" x2="{px:.1f}" y2="{by + bar_h - 1}" stroke="#222" '
                      f'stroke-width="1.5"/>')
        el.append(f'<line x1="{plot_x}" y1="{gy + group_h - 2}" x2="{plot_x + plot_w}" y2="{gy + group_h - 2}" '
                  f'stroke="#eee"/>')
    height = bottom + 30
    return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height:.0f}" '
            f'viewBox="0 0 {width} {height:.0f}" font-family="DejaVu Sans, Helvetica, Arial, sans-serif">\n'
            f'<rect width="100%" height="100%" fill="white"/>\n' + "\n".join(el) + "\n</svg>\n")
