"""What a worker process runs: a task, on a harness it keeps between tasks.

A worker keeps the last two harnesses (a task's neighbours in the plan are
chunks of the same configuration, and building a harness means warm calls
and a baseline) and one per-block analysis per image, which every
configuration of that image shares.  execute_task is the one entry point,
for local worker processes, the in-process executor and Dask workers alike.
"""
from __future__ import annotations

import hashlib

from emulator.sweep.config import SweepConfig
from emulator.sweep.harness import Harness
from emulator.sweep.keystream import StreamCache
from emulator.sweep.records import RunRecord, SweepTask, crash_record
from vdso.image import VdsoImage
# Per worker process: keystreams (keys recur across runs), harnesses, block analyses.
_STREAMS = StreamCache()
_HARNESSES: dict[tuple, Harness] = {}
_BLOCK_CACHES: dict[tuple, object] = {}


def harness_for(image: VdsoImage, cfg: SweepConfig) -> Harness:
    ikey = (image.name, image.base, hashlib.sha1(bytes(image.text)).digest(), image.rng_data_offset, image.abi)
    key = (ikey, cfg)
    h = _HARNESSES.get(key)
    if h is None:
        while len(_HARNESSES) >= 2:
            _HARNESSES.pop(next(iter(_HARNESSES))).close()
        h = _HARNESSES[key] = Harness(image, cfg, _STREAMS)
        # Every configuration of an image runs the same code: one per-block
        # analysis (decode + cycle model) serves them all.  (Requested upstream.)
        shared = _BLOCK_CACHES.setdefault(ikey, h.m.blocks)
        h.m.blocks = shared
    return h


def execute_task(task: SweepTask, emit=None, mark=None) -> list:
    """Run one task; records go to emit() as they are produced (and are returned
    as a list when emit is None, e.g. on a Dask worker).  mark(i, event index)
    is called before each run starts (crash attribution)."""
    out: list = []
    sink = out.append if emit is None else emit
    if mark is not None:
        mark(0, -1)
    done: set = set()

    def record(rec) -> None:
        if isinstance(rec, RunRecord):
            done.add((rec.i, rec.event))
        sink(rec)

    try:
        h = harness_for(task.image, task.config)
        if task.kind == "baseline":
            rec = h.baseline()
            rec.ci = task.ci
            sink(rec)
        else:
            h.boundaries(task, record, mark)
    except Exception as e:          # set-up or walk failed: the task's remaining runs are lost
        why = f"harness: {type(e).__name__}: {e}"
        if task.kind == "baseline":
            sink(crash_record(task, 0, "", why))
        else:
            for i, ev in task.runs():
                if (i, ev) not in done:
                    sink(crash_record(task, i, ev, why))
    return out
