"""Sweep benchmark (`make bench` runs it through bench/run.py):

    faultpath sweep --image host --size 4,64,256 --events all --jobs 2

every instruction boundary of the host vDSO's getrandom at three sizes, the
state at the start, at the end and straddling its page, one warm call before,
one further call after, every event, each run judged by the oracle.  Target:
<= 60 s wall time on 2 cores.  Falls back to the builtin image when the
running kernel has no __vdso_getrandom.

    python -m bench.sweep [--image NAME] [--jobs N] [--size 4,64,256]
"""
from __future__ import annotations

import argparse
import sys
import time

TARGET_S = 60.0


def bench_sweep(image_name: str, sizes: list[int], jobs: int, policy: str = "skip") -> dict:
    from emulator.sweep.config import EVENTS_ALL, PLACEMENTS, make_configs
    from emulator.sweep.coordinator import sweep
    from vdso.loader import load_image
    image = load_image(image_name)
    cfgs = make_configs(sizes, list(PLACEMENTS), [1], policy)
    t = time.perf_counter()
    res = sweep(image, image_name, cfgs, list(EVENTS_ALL), jobs=jobs, progress=False)
    dt = time.perf_counter() - t
    boundaries = sum(b.n + 1 for b in res.baselines.values())
    return {"image": image_name, "sizes": sizes, "jobs": jobs, "runs": res.runs, "boundaries": boundaries,
            "seconds": dt, "runs_per_s": res.runs / dt if dt else 0.0, "outcomes": dict(res.outcome_totals()),
            "failed": res.failed}


def main(argv: list[str] | None = None) -> int:
    from vdso.elf_image import host_has_vgetrandom
    p = argparse.ArgumentParser(prog="bench.sweep")
    p.add_argument("--image", default=None)
    p.add_argument("--jobs", type=int, default=2)
    p.add_argument("--size", default="4,64,256")
    args = p.parse_args(argv if argv is not None else [])
    image = args.image or ("host" if host_has_vgetrandom() else "builtin")
    sizes = [int(s) for s in args.size.split(",") if s]
    print(f"== sweep: faultpath sweep --image {image} --size {args.size} --events all --jobs {args.jobs} "
          f"(states at start/end/straddle, 1 call before, 1 after) ==")
    r = bench_sweep(image, sizes, args.jobs)
    verdict = "met" if r["seconds"] <= TARGET_S else "MISSED"
    print(f"{image:>12}: {r['runs']} runs over {r['boundaries']} boundaries in {r['seconds']:.1f} s "
          f"with {r['jobs']} jobs ({r['runs_per_s']:.0f} runs/s); target <= {TARGET_S:.0f} s: {verdict}; "
          f"violations: {r['outcomes'].get('violation', 0)}, crashes: {r['outcomes'].get('crash', 0)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
