"""`faultpath diffcheck`: instruction sequences on this CPU and in the
emulator, compared (emulator/diffcheck).  Exit status 1 when any sequence
differs in a way emulator/diffcheck/explain.py does not explain, 2 on bad
input or when the native side cannot run here."""
from __future__ import annotations

import argparse
import json
import sys

from emulator.errors import UsageError
from emulator.options import check_seed
from emulator.outputs import check_output, write_output


def _int(s: str) -> int:
    try:
        return int(s, 0)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{s!r} is not an integer") from None


def register(sub, parser_class) -> None:
    from emulator.diffcheck.run import KINDS
    p = sub.add_parser("diffcheck", help="run instruction sequences natively and emulated, and compare the states")
    p.add_argument("--count", type=_int, default=2000, metavar="N", help="random flag/fault sequences (kind flags)")
    p.add_argument("--seed", type=_int, default=0, help="seed of every sequence (same seed, same sequences)")
    p.add_argument("--kind", default="all", help=f"comma list or all: {', '.join(KINDS)}")
    p.add_argument("--only", type=_int, default=None, metavar="N", help="run sequence N of one --kind alone")
    p.add_argument("--jobs", type=_int, default=None, help="worker processes (default: 2 at most)")
    p.add_argument("--json", metavar="FILE", help="write the whole report as JSON ('-': stdout); checked before "
                                                  "the run, written whole or not at all, never over a non-regular "
                                                  "file (a symlink is written through to its regular-file target)")
    p.add_argument("--examples", type=_int, default=1, metavar="K", help="examples printed per class")
    p.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    p.set_defaults(func=cmd_diffcheck)


def _kinds(spec: str) -> list[str]:
    from emulator.diffcheck.run import KINDS
    if spec == "all":
        return list(KINDS)
    kinds = [k.strip() for k in spec.split(",") if k.strip()]
    bad = [k for k in kinds if k not in KINDS]
    if bad or not kinds:
        raise UsageError(f"--kind {spec!r}: expected a comma list of {', '.join(KINDS)} or all")
    return kinds


def cmd_diffcheck(args: argparse.Namespace) -> int:
    from emulator.diffcheck.native import unavailable_reason
    from emulator.diffcheck.report import as_json, format_text
    from emulator.diffcheck.run import default_jobs, kind_size, plan, run_plan
    kinds = _kinds(args.kind)
    target = check_output(args.json, "--json") if args.json is not None else None   # before any run
    check_seed(args.seed)
    if args.count < 0:
        raise UsageError(f"--count {args.count}: must not be negative")
    if args.jobs is not None and not 1 <= args.jobs <= 64:
        raise UsageError(f"--jobs {args.jobs}: out of range")
    why = unavailable_reason()
    if why:
        raise UsageError(f"diffcheck: {why}")
    if args.only is not None:
        if len(kinds) != 1:
            raise UsageError("--only needs exactly one --kind")
        size = kind_size(kinds[0], max(args.count, args.only + 1))
        if not 0 <= args.only < size:
            raise UsageError(f"--only {args.only}: kind {kinds[0]} has sequences 0..{size - 1}")
        work = [(kinds[0], args.only)]
    else:
        work = plan(kinds, args.count)
    progress = None
    if not args.quiet and sys.stderr.isatty():
        def progress(done: int, total: int) -> None:
            print(f"diffcheck: {done}/{total}", file=sys.stderr)
    totals = run_plan(args.seed, work, jobs=args.jobs or default_jobs(), progress=progress)
    print(format_text(totals, examples=max(args.examples, 1 if args.only is None else 20)))
    if target:
        write_output(target, json.dumps(as_json(totals), indent=1) + "\n")    # whole or not at all
    return 1 if totals.unexplained else 0
