"""`faultpath compare`: run the same scenarios under every proposed design for
the vgetrandom state pages and print a table per scenario, the cycle table and
the summary matrix (designs x properties)."""
from __future__ import annotations

import argparse
import json
import sys

from emulator.errors import UsageError
from emulator.options import check_seed, nonempty, split_list
from emulator.outputs import OutputTarget, check_distinct, check_output, write_outputs
from vdso.files import read_json


OUTPUT_HELP = ("files are written whole or not at all, --json and --plot together; an existing regular "
               "file is replaced, a symlink written through to its regular-file target; a missing "
               "directory, a directory, a device or any other non-regular file is refused before the run")


def register(sub, parser_class) -> None:
    from emulator.compare.scenarios import SCENARIOS
    from emulator.compare.designs import DESIGNS
    p = sub.add_parser("compare", help="run every scenario under every state-memory design and compare")
    p.add_argument("--image", default=None, help="host | builtin | builtin-v14 | PATH (default: builtin)")
    p.add_argument("--designs", default=None, help=f"comma list or all: {', '.join(DESIGNS)}")
    p.add_argument("--scenarios", default=None, help=f"comma list or all: {', '.join(SCENARIOS)}")
    p.add_argument("--seed", type=_int, default=None,
                   help="seed of every scenario's random choices and entropy (default 0)")
    p.add_argument("--json", metavar="PATH", help="write the whole report as JSON ('-': stdout); " + OUTPUT_HELP)
    p.add_argument("--plot", metavar="PATH", help="write the summary matrix and cycle comparison as SVG "
                                                  "('-': stdout)")
    p.add_argument("--boundaries", type=_int, default=None, metavar="N",
                   help="fork/coredump/reenter: N boundaries spread over the call (default: every one)")
    p.add_argument("--oom-at", default=None, metavar="N[,N]",
                   help="oom: instruction indices where reclaim takes the state page and allocations start "
                        "failing (default: call start and the first state write)")
    p.add_argument("--oom-modes", default=None, metavar="MODE[,MODE]",
                   help="oom: persistent and/or oom:K forms (default: persistent,oom:1,oom:2,oom:8,oom:64)")
    p.add_argument("--livelock", type=_int, default=None, metavar="N",
                   help="refaults without progress before a spin is reported as livelock")
    p.add_argument("--scale", type=float, default=None,
                   help="multiply the call counts of steady/pressure/swap (default 1)")
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
    opts = Options(seed=check_seed(args.seed if args.seed is not None else 0))
    if args.boundaries is not None:
        if args.boundaries < 1:
            raise UsageError(f"--boundaries {args.boundaries}: must be at least 1")
        opts.boundaries = args.boundaries
    if args.oom_at is not None:
        try:
            opts.oom_at = [int(x, 0) for x in split_list(args.oom_at, "--oom-at")]
        except ValueError:
            raise UsageError(f"--oom-at {args.oom_at!r}: expected instruction indices") from None
        if any(i < 0 or i > 1 << 32 for i in opts.oom_at):
            raise UsageError(f"--oom-at {args.oom_at!r}: out of range")
    if args.oom_modes is not None:
        modes = tuple(split_list(args.oom_modes, "--oom-modes"))
        for m in modes:
            if m != "persistent" and not (m.startswith("oom:") and m[4:].isdigit() and int(m[4:]) > 0):
                raise UsageError(f"--oom-modes: {m!r} is not 'persistent' or oom:K with K > 0")
        opts.oom_modes = modes or OOM_MODES
    livelock = DEFAULT_LIVELOCK if args.livelock is None else args.livelock
    if not 1 <= livelock <= 10_000_000:
        raise UsageError(f"--livelock {livelock}: out of range")
    opts.livelock_limit = livelock
    scale = args.scale if args.scale is not None else 1.0
    if not 0.01 <= scale <= 100:
        raise UsageError(f"--scale {scale}: out of range (0.01..100)")
    opts.scale = scale
    return opts


# What a run takes and a re-render (--from-json) cannot use.
RUN_OPTIONS = ("image", "designs", "scenarios", "seed", "boundaries", "oom_at", "oom_modes", "livelock",
               "scale", "jobs")


def _outputs(args: argparse.Namespace) -> tuple[OutputTarget | None, OutputTarget | None]:
    """--json and --plot, checked before any work (emulator/outputs.py)."""
    json_out = check_output(args.json, "--json") if args.json is not None else None
    plot_out = check_output(args.plot, "--plot") if args.plot is not None else None
    if json_out and plot_out and json_out.is_stdout and plot_out.is_stdout:
        raise UsageError("--json - and --plot -: only one of them can go to stdout")
    check_distinct([t for t in (json_out, plot_out) if t])
    return json_out, plot_out


def cmd_compare(args: argparse.Namespace) -> int:
    from emulator.compare.core import default_jobs, run_compare
    from emulator.compare.designs import parse_designs
    from emulator.compare.scenarios import parse_scenarios
    from vdso.loader import default_image_name, load_image
    json_out, plot_out = _outputs(args)
    if args.from_json is not None:
        for option in RUN_OPTIONS:
            if getattr(args, option) is not None:
                raise UsageError(f"--from-json: --{option.replace('_', '-')} is not used (the report is "
                                 f"rendered as it was run)")
        report = load_report(args.from_json)
        _output(report, json_out, plot_out, from_file=args.from_json)
        return 0
    designs = parse_designs(nonempty(args.designs, "--designs"))
    scenarios = parse_scenarios(nonempty(args.scenarios, "--scenarios"))
    opts = build_options(args)
    jobs = default_jobs() if args.jobs is None else args.jobs
    if not 1 <= jobs <= 64:
        raise UsageError(f"--jobs {jobs}: out of range (1..64)")
    image = load_image(args.image if args.image is not None else default_image_name())

    def progress(s, d, dt):
        if not args.quiet:
            print(f"faultpath compare: {s:<17} {d:<16} {dt:6.1f}s", file=sys.stderr, flush=True)

    report = run_compare(image, designs, scenarios, opts, jobs=jobs, progress=progress)
    _output(report, json_out, plot_out)
    return 0


# A saved report is a few megabytes at most; nothing near this is one.
MAX_REPORT_BYTES = 256 << 20
MAX_REPORT_DEPTH = 32


def load_report(path: str) -> dict:
    """A report saved with --json, read through vdso/files.py (a regular file,
    bounded in size and nesting) and checked for the parts every view needs."""
    from emulator.compare.core import cycle_table, skip_vs_retry, summarize
    label = f"--from-json {path}"
    report = read_json(path, limit=MAX_REPORT_BYTES, label=label, max_depth=MAX_REPORT_DEPTH)
    _check_shape(report, label)
    try:
        report["summary"] = summarize(report)          # derived views: recomputed from the results
        report["skip_vs_retry"] = skip_vs_retry(report)
        report["cycles"] = cycle_table(report)
    except _REPORT_ERRORS as e:
        raise UsageError(f"{label}: not a faultpath compare report ({_what(e)})") from None
    return report


# What walking a report of the wrong shape raises; the report came from a file,
# so each is bad input, not a bug.
_REPORT_ERRORS = (KeyError, TypeError, ValueError, AttributeError, IndexError, ZeroDivisionError)


def _what(e: BaseException) -> str:
    return f"{type(e).__name__}: {(str(e).splitlines() or [''])[0][:120]}"


def _check_shape(report: object, label: str) -> None:
    def need(cond: bool, what: str) -> None:
        if not cond:
            raise UsageError(f"{label}: not a faultpath compare report ({what})")
    need(isinstance(report, dict), "not a JSON object")
    image = report.get("image")
    need(isinstance(image, dict) and isinstance(image.get("name"), str), "image: expected an object with a name")
    cfg = report.get("config")
    need(isinstance(cfg, dict), "config: expected an object")
    for key in ("designs", "scenarios"):
        v = cfg.get(key)
        need(isinstance(v, list) and v and all(isinstance(x, str) for x in v), f"config.{key}: expected names")
    for key in ("results", "scenarios"):
        need(isinstance(report.get(key), dict), f"{key}: expected an object")
    for s in cfg["scenarios"]:
        need(isinstance(report["scenarios"].get(s), str), f"scenarios.{s}: expected its description")
        row = report["results"].get(s)
        need(isinstance(row, dict), f"results.{s}: expected an object")
        for d in cfg["designs"]:
            need(isinstance(row.get(d), dict), f"results.{s}.{d}: expected an object")


def _output(report: dict, json_out: OutputTarget | None, plot_out: OutputTarget | None,
            from_file: str | None = None) -> None:
    """Render everything first, then write every file together (or none)."""
    from emulator.compare.report import format_report, render_svg
    try:
        text = format_report(report)
        svg = render_svg(report) if plot_out else None
    except _REPORT_ERRORS as e:
        if from_file is None:
            raise
        raise UsageError(f"--from-json {from_file}: not a faultpath compare report ({_what(e)})") from None
    items = []
    if json_out:
        items.append((json_out, json.dumps(report, indent=1, allow_nan=False) + "\n"))
    if plot_out:
        items.append((plot_out, svg))
    if not (json_out and json_out.is_stdout):
        items.insert(0, (OutputTarget("stdout", "-", "-"), text + "\n"))
    write_outputs(items)
