"""Measurements of the native engine, runnable as
`python -m emulator.twin.measure [sizes] [events] [placements]`: boundaries per
call, time per boundary, and each event's runs by the path the swept call
took (from its syscalls: fast / reseed / fallback, efault for -EFAULT).  The
path is not the oracle's verdict, only its cheapest part."""
from __future__ import annotations

import sys
import time
from collections import Counter
from dataclasses import dataclass, field

from emulator.twin.engine import Twin
from emulator.twin.process import PLACEMENTS, TwinConfig
from emulator.twin.records import NativeRun

EFAULT = 14


def swept_path(run: NativeRun) -> str:
    """The swept calls' path, the heaviest one when a fork made two
    (fast < efault < reseed < fallback, as the emulator's sweep ranks them)."""
    if run.skipped:
        return "skipped"
    rank = {"fast": 0, "efault": 1, "reseed": 2, "fallback": 3}
    paths = []
    for c in run.calls:
        if c.role not in ("swept", "child", "nested"):
            continue
        if c.outcome != "returned":
            paths.append(c.outcome)
        elif c.ret == -EFAULT:
            paths.append("efault")
        else:
            paths.append("fallback" if "fallback" in c.path() else c.path().split("+")[0])
    others = [p for p in paths if p not in rank]
    if others:
        return others[0]
    return max(paths, key=rank.get, default="fast")


@dataclass
class Measurement:
    config: TwinConfig
    n: int
    raw_steps: int
    baseline_seconds: float
    sweep_seconds: float
    runs: int
    paths: dict[str, Counter] = field(default_factory=dict)    # event -> path -> runs

    @property
    def per_boundary(self) -> float:
        return self.sweep_seconds / (self.n + 1)


def measure(cfg: TwinConfig, events: list[str], cpu: int | None = None) -> Measurement:
    with Twin(cfg, cpu=cpu) as tw:
        t0 = time.monotonic()
        base = tw.baseline()
        t1 = time.monotonic()
        paths: dict[str, Counter] = {e: Counter() for e in events}
        runs = 0
        for run in tw.sweep(events):
            paths[run.event][swept_path(run)] += 1
            runs += 1
        t2 = time.monotonic()
    return Measurement(cfg, base.n, base.raw_steps, t1 - t0, t2 - t1, runs, paths)


def main(argv: list[str]) -> int:
    sizes = [int(x) for x in (argv[0] if argv else "4,64,256").split(",")]
    events = (argv[1] if len(argv) > 1 else "drop,reseed").split(",")
    placements = (argv[2] if len(argv) > 2 else "start").split(",")
    for size in sizes:
        for pl in placements:
            if pl not in PLACEMENTS:
                print(f"unknown placement {pl!r}", file=sys.stderr)
                return 2
            m = measure(TwinConfig(size, placement=pl), events)
            print(f"size {size} state at {pl}: n={m.n} (raw single steps {m.raw_steps}), baseline "
                  f"{m.baseline_seconds * 1e3:.0f} ms; {m.runs} runs in {m.sweep_seconds:.2f} s = "
                  f"{m.per_boundary * 1e3:.2f} ms per boundary ({m.sweep_seconds / max(m.runs, 1) * 1e3:.2f} ms per run)")
            for e, c in m.paths.items():
                print(f"  {e:14s} " + "  ".join(f"{k} {v}" for k, v in sorted(c.items())))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
