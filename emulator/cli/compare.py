"""`faultpath compare`: run the same scenarios under every proposed design for
the vgetrandom state pages and print a table per scenario, the cycle table and
the summary matrix (designs x properties)."""
from __future__ import annotations

import argparse
import json
import os
import sys

from emulator.errors import UsageError


def register(sub, parser_class) -> None:
    from emulator.compare.scenarios import SCENARIOS
    from emulator.compare.designs import DESIGNS
    p = sub.add_parser("compare", help="run every scenario under every state-memory design and compare")
    p.add_argument("--image", default=None, help="host | builtin | builtin-v14 | PATH (default: builtin)")
    p.add_argument("--designs", default="all", help=f"comma list or all: {', '.join(DESIGNS)}")
    p.add_argument("--scenarios", default="all", help=f"comma list or all: {', '.join(SCENARIOS)}")
    p.add_argument("--seed", type=_int, default=0, help="seed of every scenario's random choices and entropy")
    p.add_argument("--json", metavar="PATH", help="write the whole report as JSON ('-': stdout)")
    p.add_argument("--plot", metavar="PATH", help="write the summary matrix and cycle comparison as SVG")
    p.add_argument("--boundaries", type=_int, default=None, metavar="N",
                   help="fork/coredump/reenter: N boundaries spread over the call (default: every one)")
    p.add_argument("--oom-at", default=None, metavar="N[,N]",
                   help="oom: instruction indices where reclaim takes the state page and allocations start "
                        "failing (default: call start and the first state write)")
    p.add_argument("--oom-modes", default=None, metavar="MODE[,MODE]",
                   help="oom: persistent and/or oom:K forms (default: persistent,oom:1,oom:2,oom:8,oom:64)")
    p.add_argument("--livelock", type=_int, default=None, metavar="N",
                   help="refaults without progress before a spin is reported as livelock")
    p.add_argument("--scale", type=float, default=1.0, help="multiply the call counts of steady/pressure/swap")
    p.add_argument("--jobs", type=_int, default=None, help="worker processes (default: CPUs, at most 8)")
    p.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    p.add_argument("--from-json", metavar="PATH", help="render a report saved with --json again (no runs)")
    p.set_defaults(func=cmd_compare)


def _int(s: str) -> int:
    try:
        return int(s, 0)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{s!r} is not an integer") from None


def build_options(args: argparse.Namespace):
    from emulator.compare.scenarios import OOM_MODES, Options
    from emulator.records import DEFAULT_LIVELOCK
    opts = Options(seed=args.seed)
    if args.boundaries is not None:
        if args.boundaries < 1:
            raise UsageError(f"--boundaries {args.boundaries}: must be at least 1")
        opts.boundaries = args.boundaries
    if args.oom_at:
        try:
            opts.oom_at = [int(x, 0) for x in args.oom_at.split(",") if x.strip()]
        except ValueError:
            raise UsageError(f"--oom-at {args.oom_at!r}: expected instruction indices") from None
        if any(i < 0 or i > 1 << 32 for i in opts.oom_at):
            raise UsageError(f"--oom-at {args.oom_at!r}: out of range")
    if args.oom_modes:
        modes = tuple(m.strip() for m in args.oom_modes.split(",") if m.strip())
        for m in modes:
            if m != "persistent" and not (m.startswith("oom:") and m[4:].isdigit() and int(m[4:]) > 0):
                raise UsageError(f"--oom-modes: {m!r} is not 'persistent' or oom:K with K > 0")
        opts.oom_modes = modes or OOM_MODES
    livelock = DEFAULT_LIVELOCK if args.livelock is None else args.livelock
    if not 1 <= livelock <= 10_000_000:
        raise UsageError(f"--livelock {livelock}: out of range")
    opts.livelock_limit = livelock
    if not 0.01 <= args.scale <= 100:
        raise UsageError(f"--scale {args.scale}: out of range (0.01..100)")
    opts.scale = args.scale
    return opts


def cmd_compare(args: argparse.Namespace) -> int:
    from emulator.compare.core import default_jobs, run_compare
    from emulator.compare.report import format_report, render_svg
    from emulator.compare.scenarios import parse_scenarios
    from emulator.compare.designs import parse_designs
    from vdso.loader import default_image_name, load_image
    for path in (args.json, args.plot):
        if path and path != "-":
            d = os.path.dirname(os.path.abspath(path))
            if not os.path.isdir(d):
                raise UsageError(f"{path}: directory {d} does not exist")
    if args.from_json:
        report = _load_report(args.from_json)
        _output(args, report, format_report(report), render_svg)
        return 0
    designs = parse_designs(args.designs)
    scenarios = parse_scenarios(args.scenarios)
    opts = build_options(args)
    jobs = default_jobs() if args.jobs is None else args.jobs
    if not 1 <= jobs <= 64:
        raise UsageError(f"--jobs {jobs}: out of range (1..64)")
    image = load_image(args.image or default_image_name())

    def progress(s, d, dt):
        if not args.quiet:
            print(f"faultpath compare: {s:<17} {d:<16} {dt:6.1f}s", file=sys.stderr, flush=True)

    report = run_compare(image, designs, scenarios, opts, jobs=jobs, progress=progress)
    _output(args, report, format_report(report), render_svg)
    return 0


def _load_report(path: str) -> dict:
    from emulator.compare.core import cycle_table, skip_vs_retry, summarize
    try:
        with open(path) as f:
            report = json.load(f)
        report["summary"] = summarize(report)          # derived views: recomputed from the results
        report["skip_vs_retry"] = skip_vs_retry(report)
        report["cycles"] = cycle_table(report)
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise UsageError(f"--from-json {path}: not a faultpath compare report ({type(e).__name__}: {e})") from None
    return report


def _output(args: argparse.Namespace, report: dict, text: str, render_svg) -> None:
    if args.json == "-":
        print(json.dumps(report, indent=1))
    else:
        print(text)
    if args.json and args.json != "-":
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1)
            f.write("\n")
    if args.plot:
        svg = render_svg(report)
        if args.plot == "-":
            sys.stdout.write(svg)
        else:
            with open(args.plot, "w") as f:
                f.write(svg)
