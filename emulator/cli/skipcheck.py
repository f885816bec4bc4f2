"""`faultpath skipcheck`: the instruction-skip regression suite (emulator/skipcheck/)."""
from __future__ import annotations

import argparse
import json


def register(sub, parser_class) -> None:
    p = sub.add_parser(
        "skipcheck",
        help="run every store form against a droppable page under OOM and check the skip (or retry)",
        description="Run each corpus instruction (builtin: every store/RMW form up to SSE4.2, crossed "
                    "with prefixes) in several placements against a droppable page under OOM, check "
                    "the skip (rip += length, nothing written, registers kept, next instruction runs) "
                    "or the refault, and cross-check each length between capstone, objdump, GNU as "
                    "and Unicorn.  Exit status 0: all pass; 1: a failure, a refused corpus line or an "
                    "unexplained length divergence; 2: bad input.")
    p.add_argument("--corpus", default="builtin", metavar="builtin|FILE",
                   help="instructions, one per line, Intel syntax, `#` comments (default: builtin)")
    p.add_argument("--droppable-oom", default="skip", choices=["skip", "retry"],
                   help="OOM design for droppable VMAs (default: skip)")
    p.add_argument("--placement", action="append", default=[], metavar="NAME",
                   help="only these placements (repeatable): plain, split, riprel, page-end, stack, "
                        "stack-split, rep-partway")
    p.add_argument("--cross-prefixes", action=argparse.BooleanOptionalAction, default=None,
                   help="cross every line with prefixes (default: on for builtin, off for a FILE)")
    p.add_argument("--jobs", type=int, default=None, metavar="N",
                   help="worker processes (default: one per CPU)")
    p.add_argument("--no-lengths", action="store_true", help="skip the length cross-check")
    p.add_argument("--verbose", "-v", action="store_true", help="more detail per failure and per divergence")
    p.add_argument("--json", action="store_true", help="one JSON object on stdout")
    p.set_defaults(func=cmd_skipcheck)


def cmd_skipcheck(args: argparse.Namespace) -> int:
    from emulator.errors import UsageError
    from emulator.skipcheck.report import format_report
    from emulator.skipcheck.runner import run_skipcheck
    if args.jobs is not None and not 1 <= args.jobs <= 256:
        raise UsageError(f"--jobs {args.jobs}: out of range")
    report = run_skipcheck(args.corpus, args.droppable_oom, cross=args.cross_prefixes,
                           placements=tuple(args.placement) or None, jobs=args.jobs,
                           lengths=not args.no_lengths)
    if args.json:
        print(json.dumps(report.as_dict(), indent=1))
    else:
        print(format_report(report, verbose=args.verbose))
    return 0 if report.ok else 1
