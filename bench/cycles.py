"""faultpath benchmarks, part 2 (`make bench`): cycle accuracy.

Calibrates this machine (in memory: nothing is written), then measures it a
second, independent time and prints predicted vs measured cycles for the
vDSO sizes, the getrandom syscall and the fault kinds, with the shipped
default profile (zen4) and with the fresh calibration, and checks issue 7's
targets.  Same as `faultpath bench --calibrate --profile zen4`.

Then part 3, bench/validate.py: the same model on code it was not tuned on
(the validation set, its held-out part apart).

bench/run.py imports this as `bench.cycles` and calls main(); it also runs on
its own: `python bench/cycles.py [--quick]`.
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
    ap = argparse.ArgumentParser(prog="bench/cycles.py")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--image", default="auto", choices=["auto", "host", "builtin"])
    a = ap.parse_args([] if argv is None and __name__ != "__main__" else argv)
    print("== cycle accuracy: faultpath bench --calibrate --profile zen4 (TSC ticks per call) ==")
    ns = argparse.Namespace(profile=["zen4"], calibrate=True, image=a.image, quick=a.quick, json=False,
                            validate=False)
    try:
        rc = cmd_bench(ns)
    except FaultpathError as e:
        print(f"cycle bench: {e}", file=sys.stderr)
        rc = 2
    from bench import validate
    print()
    return max(rc, validate.main(["--quick"] if a.quick else []))


if __name__ == "__main__":
    sys.exit(main())
