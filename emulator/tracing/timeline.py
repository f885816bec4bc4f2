"""One fault's stages as a timeline picture (SVG), from a Chrome trace file.

Reads what emulator/tracing/chrome.py writes (so any trace a run, the
stepper or a sweep reproduction wrote): the enclosing "page fault" span and
the stage events inside it on its track.  One row per stage, bars placed on
a shared axis of model cycles, each labelled with its kernel function and
exact cycles.  PNG when a converter is installed (rsvg-convert, Inkscape,
ImageMagick).
"""
from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from xml.sax.saxutils import escape

from emulator.errors import UsageError

_COLOURS = {"exc_page_fault": "#7f8c8d", "irqentry_exit_to_user_mode": "#7f8c8d", "lock_vma_under_rcu": "#2e86c1",
            "handle_mm_fault": "#2e86c1", "alloc_pages": "#e67e22", "try_to_free_pages": "#d35400",
            "clear_user_highpage": "#27ae60", "wp_page_copy": "#27ae60", "insn_fetch_from_user + insn_decode":
            "#8e44ad", "handle_mm_fault (VM_DROPPABLE)": "#c0392b", "pagefault_out_of_memory": "#c0392b"}


@dataclass
class Fault:
    name: str
    pid: int
    start: float                  # cycles
    cycles: float
    index: int
    stages: list[tuple[str, str, float, float]]     # (function, stage kind, start cycles, cycles)


def faults(trace: dict) -> list[Fault]:
    """The faults of a trace, in time order, with their stages."""
    try:
        mhz = float(trace["otherData"]["tsc_mhz"])
        events = [e for e in trace["traceEvents"] if e.get("ph") == "X"]
    except (KeyError, TypeError, ValueError):
        raise UsageError("not a faultpath trace (no traceEvents / otherData.tsc_mhz)") from None
    out = []
    spans = sorted((e for e in events if e.get("cat") == "fault"), key=lambda e: (e["pid"], e["ts"]))
    for f in spans:
        lo, hi = f["ts"], f["ts"] + f["dur"]
        stages = [(e["name"], e["args"].get("stage", ""), e["ts"] * mhz, e["args"]["cycles"])
                  for e in events if e.get("cat") == "stage" and e["pid"] == f["pid"] and e["tid"] == f["tid"]
                  and lo - 1e-9 <= e["ts"] and e["ts"] + e["dur"] <= hi + 1e-9]
        out.append(Fault(f["name"], f["pid"], lo * mhz, f["args"]["cycles"], f["args"].get("index", 0),
                         sorted(stages, key=lambda s: s[2])))
    return sorted(out, key=lambda f: (f.start, f.pid))


def pick(found: list[Fault], n: int | None) -> Fault:
    if not found:
        raise UsageError("the trace has no fault")
    if n is None:                    # the one with most stages, the longest among those
        return max(found, key=lambda f: (len(f.stages), f.cycles))
    if not 1 <= n <= len(found):
        raise UsageError(f"--fault {n}: the trace has {len(found)} fault(s)")
    return found[n - 1]


def svg(f: Fault, title: str = "") -> str:
    width, left, right, row, top = 900, 290, 110, 26, 64
    span = max(f.cycles, 1e-9)
    scale = (width - left - right) / span
    t0 = f.start
    height = top + row * len(f.stages) + 46
    el = [f'<text x="16" y="24" font-size="15" font-weight="bold">{escape(f.name)} '
          f'(#{f.index}, {f.cycles:.0f} cycles)</text>',
          f'<text x="16" y="44" font-size="11" fill="#555">{escape(title)} - one row per stage of the kernel\'s '
          f'fault path, bars on a shared axis of model cycles</text>']
    for i, (fn, kind, start, cyc) in enumerate(f.stages):
        y = top + i * row
        x = left + (start - t0) * scale
        w = max(cyc * scale, 1.0)
        colour = _COLOURS.get(fn, "#95a5a6")
        el.append(f'<text x="{left - 8}" y="{y + 15}" font-size="11" text-anchor="end">{escape(fn)}</text>')
        el.append(f'<rect x="{x:.1f}" y="{y + 3}" width="{w:.1f}" height="{row - 8}" fill="{colour}">'
                  f'<title>{escape(kind)}: {cyc:g} cycles</title></rect>')
        el.append(f'<text x="{x + w + 6:.1f}" y="{y + 15}" font-size="11" fill="#333">{cyc:.0f}</text>')
    axis_y = top + row * len(f.stages) + 10
    el.append(f'<line x1="{left}" y1="{axis_y}" x2="{width - right}" y2="{axis_y}" stroke="#333"/>')
    for k in range(5):
        x = left + (width - left - right) * k / 4
        el.append(f'<line x1="{x:.1f}" y1="{axis_y}" x2="{x:.1f}" y2="{axis_y + 5}" stroke="#333"/>')
        el.append(f'<text x="{x:.1f}" y="{axis_y + 18}" font-size="10" text-anchor="middle">'
                  f'{span * k / 4:.0f}</text>')
    el.append(f'<text x="{width - right + 8}" y="{axis_y + 18}" font-size="10">cycles</text>')
    return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
            f'font-family="DejaVu Sans, sans-serif">\n<rect width="100%" height="100%" fill="white"/>\n'
            + "\n".join(el) + "\n</svg>\n")


def converter() -> list[str] | None:
    """A command line converting the SVG file {svg} to the PNG file {out}, if a
    converter is installed (ImageMagick only if it says it is ImageMagick)."""
    if shutil.which("rsvg-convert"):
        return ["rsvg-convert", "-f", "png", "-o", "{out}", "{svg}"]
    if shutil.which("inkscape"):
        return ["inkscape", "{svg}", "--export-type=png", "--export-filename={out}"]
    for tool in ("magick", "convert"):
        exe = shutil.which(tool)
        if exe:
            try:
                v = subprocess.run([exe, "-version"], capture_output=True, text=True, timeout=10).stdout
            except (OSError, subprocess.TimeoutExpired):
                continue
            if "ImageMagick" in v and "Version:" in v:
                return [exe, "{svg}", "{out}"]
    return None


def to_png(svg_path: str, png_path: str) -> None:
    cmd = converter()
    if cmd is None:
        raise UsageError("no SVG-to-PNG converter (rsvg-convert, inkscape or ImageMagick) is installed; "
                         "write an .svg instead")
    argv = [a.replace("{svg}", svg_path).replace("{out}", png_path) for a in cmd]
    r = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    if r.returncode != 0:
        raise UsageError(f"{argv[0]} could not convert the picture: {(r.stderr or r.stdout).strip()[:200]}")
