"""`faultpath sweep`'s top level: plan the tasks, hand them to an executor,
gather the records into a SweepResult.

First every configuration's baseline runs (its n: the swept call's
instruction count), then its boundaries 0..n are cut into tasks of a few
hundred runs, longest configurations first, and every task's records come
back as they are produced.  Where tasks run is executors.py's business.
"""
from __future__ import annotations

import sys
import time

from emulator.sweep.config import SweepConfig
from emulator.sweep.executors import make_executor
from emulator.sweep.records import BaselineRecord, SweepTask
from emulator.sweep.report import SweepResult
from vdso.image import VdsoImage


def plan_tasks(image: VdsoImage, configs: list[SweepConfig], baselines: dict[int, BaselineRecord],
               events: list[str], jobs: int, boundaries: list[tuple[int, int]] | None = None,
               detail: bool = False) -> list[SweepTask]:
    """Every boundary (or those in the `boundaries` spans) of every
    configuration whose baseline ran, in chunks."""
    spans = {ci: [(0, b.n)] if boundaries is None else [(lo, min(hi, b.n)) for lo, hi in boundaries if lo <= b.n]
             for ci, b in baselines.items() if b.outcome != "crash"}
    total = sum(hi - lo + 1 for ss in spans.values() for lo, hi in ss)
    chunk = max(8, min(400, total // max(1, jobs * 6) or 1))
    tasks = []
    for ci, cfg in enumerate(configs):
        n = baselines[ci].n if ci in spans else 0
        for lo, hi in spans.get(ci, ()):
            for s in range(lo, hi + 1, chunk):
                tasks.append(SweepTask(1_000_000 + len(tasks), image, cfg, ci, "boundaries", s,
                                       min(hi + 1, s + chunk), tuple(events), n, detail=detail))
    # Longest configurations first keeps the workers busy to the end (and a
    # worker's chunks of one configuration reuse its harness).
    tasks.sort(key=lambda t: -t.n)
    return tasks


def sweep(image: VdsoImage, image_spec: str, configs: list[SweepConfig], events: list[str], *,
          jobs: int = 2, executor: str = "local", progress: bool | None = None,
          boundaries: list[tuple[int, int]] | None = None, detail: bool = False) -> SweepResult:
    """Sweep every configuration: its baseline, then every boundary (or those
    in the `boundaries` spans) x every event.  detail: every record carries
    its calls' summaries (CallSummary), for comparison with native runs."""
    t0 = time.perf_counter()
    ex = make_executor(executor, jobs)
    res = SweepResult(image.name, image_spec, configs, list(events), jobs=jobs, executor=ex.name, image_obj=image,
                      boundaries=boundaries)
    try:
        base_tasks = [SweepTask(ci, image, cfg, ci, "baseline", detail=detail) for ci, cfg in enumerate(configs)]
        for _, rec in ex.run(base_tasks):
            res.baselines[rec.ci] = rec
        tasks = plan_tasks(image, configs, res.baselines, list(events), jobs, boundaries, detail)
        total = sum(len(t.runs()) for t in tasks)
        bar = Progress(total, enabled=progress)
        try:
            for _, rec in ex.run(tasks):
                res.records.append(rec)
                bar.update(1, rec.outcome == "violation")
        finally:
            bar.close()
    finally:
        ex.close()
    res.records.sort(key=lambda r: (r.ci, r.i, events.index(r.event) if r.event in events else 0))
    res.elapsed = time.perf_counter() - t0
    return res


class Progress:
    """A one-line progress bar on stderr, only when stderr is a terminal."""

    def __init__(self, total: int, enabled: bool | None = None, width: int = 30):
        self.total = max(1, total)
        self.done = 0
        self.bad = 0
        self.width = width
        self.t0 = time.monotonic()
        self.last = 0.0
        self.enabled = sys.stderr.isatty() if enabled is None else enabled
        self.drawn = False

    def update(self, n: int = 1, violation: bool = False) -> None:
        self.done += n
        self.bad += int(violation)
        if not self.enabled:
            return
        now = time.monotonic()
        if now - self.last < 0.1 and self.done < self.total:
            return
        self.last = now
        frac = min(1.0, self.done / self.total)
        el = now - self.t0
        eta = el / frac - el if frac > 0 else 0
        bar = "#" * int(frac * self.width) + "-" * (self.width - int(frac * self.width))
        sys.stderr.write(f"\rsweep [{bar}] {frac * 100:5.1f}% {self.done}/{self.total} runs, "
                         f"{self.bad} violation(s), {el:5.1f} s, ETA {eta:5.1f} s ")
        sys.stderr.flush()
        self.drawn = True

    def close(self) -> None:
        if self.enabled and self.drawn:
            sys.stderr.write("\n")
            sys.stderr.flush()
