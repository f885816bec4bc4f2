"""faultpath benchmarks, part 3 (`make bench`): the cycle model on code it was
not tuned on (issue 13).

    faultpath bench --validate --profile zen4

builds the validation set (C bodies with gcc at -O0/-O2/-O3, scalar and SSE2;
assembly kernels with known bottlenecks), measures every case natively (min
over interleaved trials of the mean) and predicts it with the shipped profile;
prints the development part and the held-out part apart, and checks the
held-out targets: median |error| <= 10%, max <= 25%.

bench/run.py imports this as `bench.validate` and calls main(); it also runs
on its own: `python -m bench.validate [--quick]`.
"""
from __future__ import annotations

import argparse
import os
import sys

if __package__ in (None, ""):
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def main(argv: list[str] | None = None) -> int:
    from emulator.cli.bench import cmd_bench
    from emulator.errors import FaultpathError
    ap = argparse.ArgumentParser(prog="bench/validate.py")
    ap.add_argument("--quick", action="store_true")
    a = ap.parse_args([] if argv is None and __name__ != "__main__" else argv)
    print("== cycle model on code it was not tuned on: faultpath bench --validate --profile zen4 ==")
    ns = argparse.Namespace(profile=["zen4"], calibrate=False, image="auto", quick=a.quick, json=False,
                            validate=True)
    try:
        return cmd_bench(ns)
    except FaultpathError as e:
        print(f"validation bench: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
