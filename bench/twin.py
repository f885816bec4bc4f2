"""Native-twin benchmark (`make bench` runs it through bench/run.py):

    faultpath sweep --native --image host --size 64 --events drop,reseed

every instruction boundary of the host's __vdso_getrandom at 64 B, the state
at the start, at the end and straddling its page, one warm call before and
one further call after, each (boundary, event) run in the emulator and on the
running kernel (ptrace), both judged by the oracle and compared.  Target:
<= 120 s wall time on 2 cores.  Where the twin cannot run (no
__vdso_getrandom, no ptrace, not root for reseed and drop) it says why in
one line and skips.

    python -m bench.twin [--size 64] [--events drop,reseed] [--jobs 2]
"""
from __future__ import annotations

import argparse
import sys
import time

TARGET_S = 120.0


def unavailable(events: list[str]) -> str:
    """'' if the twin can run these events here, else the one-line reason."""
    from emulator.twin import TwinUnavailable, check_ptrace, why_not
    from vdso.elf_image import host_has_vgetrandom
    if not host_has_vgetrandom():
        return "the running kernel's vDSO has no __vdso_getrandom (needs Linux 6.11+)"
    try:
        check_ptrace()
    except TwinUnavailable as e:
        return str(e)
    return next((f"{e}: {why_not(e)}" for e in events if why_not(e)), "")


def bench_twin(sizes: list[int], events: list[str], jobs: int) -> dict:
    from emulator.sweep.config import PLACEMENTS, make_configs
    from emulator.sweep.coordinator import sweep
    from emulator.twin.agreement import compare_config
    from vdso.loader import load_image
    cfgs = make_configs(sizes, list(PLACEMENTS), [1], "retry")
    t0 = time.perf_counter()
    res = sweep(load_image("host"), "host", cfgs, events, jobs=jobs, progress=False, detail=True)
    t1 = time.perf_counter()
    ccs = [compare_config(cfg, "host", events, res.baselines[ci], [r for r in res.records if r.ci == ci], None, {})
           for ci, cfg in enumerate(cfgs)]
    t2 = time.perf_counter()
    runs = sum(1 for cc in ccs for p in cc.pairs if not p.skipped)
    return {"sizes": sizes, "events": events, "jobs": jobs, "runs": runs, "emulator_s": t1 - t0,
            "native_s": t2 - t1, "seconds": t2 - t0,
            "agree": sum(1 for cc in ccs for p in cc.pairs if p.agrees),
            "disagree": sum(len(cc.disagreements) for cc in ccs),
            "boundaries": sum(cc.native_n + 1 for cc in ccs)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="bench.twin")
    p.add_argument("--size", default="64")
    p.add_argument("--events", default="drop,reseed")
    p.add_argument("--jobs", type=int, default=2)
    args = p.parse_args(argv if argv is not None else [])
    sizes = [int(s) for s in args.size.split(",") if s]
    events = [e for e in args.events.split(",") if e]
    print(f"== native twin: faultpath sweep --native --image host --size {args.size} --events {args.events} "
          f"--jobs {args.jobs} (states at start/end/straddle, 1 call before, 1 after) ==")
    why = unavailable(events)
    if why:
        print(f"  skipped: {why}")
        return 0
    r = bench_twin(sizes, events, args.jobs)
    verdict = "met" if r["seconds"] <= TARGET_S else "MISSED"
    print(f"        host: {r['runs']} runs over {r['boundaries']} boundaries in {r['seconds']:.1f} s (emulator "
          f"{r['emulator_s']:.1f} s, kernel {r['native_s']:.1f} s); target <= {TARGET_S:.0f} s: {verdict}; "
          f"agree {r['agree']}/{r['runs']}, disagreements {r['disagree']}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
