"""`faultpath trace`: read a trace file back; draw one fault's stages.

    faultpath trace FILE                 what the trace holds: processes, calls, faults
    faultpath trace FILE --plot OUT.svg  one fault's stages as a timeline (OUT.png: converted)
    faultpath trace FILE --plot OUT --fault N

FILE is the Chrome trace-event JSON that `faultpath run --trace` and
`faultpath step --trace` write (Perfetto UI and chrome://tracing open it too).
"""
from __future__ import annotations

import argparse

MAX_TRACE_BYTES = 256 << 20


def register(sub, parser_class) -> None:
    p = sub.add_parser("trace", help="summarise a trace file (run/step --trace); --plot draws one fault's stages")
    p.add_argument("file", metavar="FILE", help="a trace written by `faultpath run --trace FILE`")
    p.add_argument("--plot", metavar="OUT", default=None,
                   help="write a timeline of one fault's stages: OUT.svg, or OUT.png where a converter exists")
    p.add_argument("--fault", type=int, default=None, metavar="N",
                   help="which fault (1-based, as listed); default: the one with the most stages")
    p.set_defaults(func=cmd_trace)


def cmd_trace(args: argparse.Namespace) -> int:
    from emulator.errors import UsageError
    from emulator.outputs import check_output, write_output
    from emulator.tracing import timeline
    from vdso.files import read_json
    target = None
    if args.plot is not None:
        target = check_output(args.plot, "--plot", allow_stdout=False)
        if not args.plot.lower().endswith((".svg", ".png")):
            raise UsageError(f"--plot {args.plot}: name an .svg or a .png file")
        if args.plot.lower().endswith(".png") and timeline.converter() is None:
            raise UsageError("--plot: no SVG-to-PNG converter (rsvg-convert, inkscape or ImageMagick) is "
                             "installed; write an .svg instead")
    data = read_json(args.file, limit=MAX_TRACE_BYTES, label=args.file)
    if not isinstance(data, dict):
        raise UsageError(f"{args.file}: not a faultpath trace (a JSON object is expected)")
    found = timeline.faults(data)
    if target is None:
        print(_summary(data, found))
        return 0
    f = timeline.pick(found, args.fault)
    picture = timeline.svg(f, data.get("otherData", {}).get("title", ""))
    if args.plot.lower().endswith(".png"):
        import os
        import tempfile
        with tempfile.TemporaryDirectory() as d:
            src, dst = os.path.join(d, "fault.svg"), os.path.join(d, "fault.png")
            with open(src, "w") as fh:
                fh.write(picture)
            timeline.to_png(src, dst)
            with open(dst, "rb") as fh:
                write_output(target, fh.read())
    else:
        write_output(target, picture)
    print(f"{args.plot}: {f.name} (#{f.index}), {len(f.stages)} stages, {f.cycles:.0f} cycles")
    return 0


def _summary(data: dict, found) -> str:
    other = data.get("otherData", {})
    events = [e for e in data.get("traceEvents", []) if isinstance(e, dict)]
    names = {e["pid"]: e["args"]["name"] for e in events if e.get("ph") == "M" and e.get("name") == "process_name"}
    out = [f"{other.get('title', 'trace')}", f"  clock: {other.get('clock', '?')}"]
    for pid, name in sorted(names.items()):
        calls = [e for e in events if e.get("ph") == "X" and e.get("pid") == pid and e.get("cat") == "call"]
        out.append(f"  process {pid}: {name}: {len(calls)} call(s), "
                   f"{sum(c['args']['cycles'] for c in calls):.0f} cycles")
    for i, f in enumerate(found, start=1):
        out.append(f"  fault {i}: {f.name} (#{f.index}) {len(f.stages)} stages, {f.cycles:.0f} cycles")
    return "\n".join(out)
