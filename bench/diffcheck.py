"""The big differential run of issue 12: at least 100,000 sequences, native
against emulated (`python -m bench.diffcheck`, or from `make bench`).

Every finite kind runs in full (forms, windows, privileged); random flag
sequences fill the rest up to --total.  Prints the differential table and
the speed of each side; the exit status is diffcheck's (1: unexplained differences).
Same command, same seed: the same sequences.
"""
from __future__ import annotations

import argparse
import sys

TOTAL = 100_000


def main(argv: list[str] | None = None) -> int:
    from emulator.diffcheck.native import unavailable_reason
    from emulator.diffcheck.report import format_text
    from emulator.diffcheck.run import KINDS, default_jobs, kind_size, plan, run_plan
    p = argparse.ArgumentParser(prog="bench.diffcheck")
    p.add_argument("--total", type=int, default=TOTAL, help="sequences in all (default 100,000)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--jobs", type=int, default=None)
    args = p.parse_args(argv)
    why = unavailable_reason()
    print(f"== diffcheck: {args.total} sequences, native against emulated (seed {args.seed}) ==")
    if why:
        print(f"skipped: {why}")
        return 0
    fixed = sum(kind_size(k, 0) for k in KINDS if k != "flags")
    count = max(0, args.total - fixed)
    totals = run_plan(args.seed, plan(list(KINDS), count), jobs=args.jobs or default_jobs())
    print(format_text(totals))
    print(f"command: faultpath diffcheck --seed {args.seed} --count {count} --json FILE")
    return 1 if totals.unexplained else 0


if __name__ == "__main__":
    sys.exit(main())
