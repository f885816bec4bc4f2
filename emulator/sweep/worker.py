"""What a worker process runs: a task, on a harness it keeps between tasks.

A worker keeps the last two harnesses (a task's neighbours in the plan are
chunks of the same configuration, and building a harness means warm calls
and a baseline) and one per-block analysis per image, which every
configuration of that image shares.  execute_task is the one entry point,
for local worker processes, the in-process executor and Dask workers alike.

Two worker loops serve it, one per way a worker is started (executors.py
holds the other ends): serve_pipe in a multiprocessing child (local
workers), serve_stdio in a child started by subprocess (`python -m
emulator.sweep.worker`, for Dask workers, which multiprocessing does not let
have children).  Either way the worker's stderr goes to a file its parent
reads when the worker dies, and Python's fault handler is off: a Unicorn
abort becomes that run's crash record, one line, and never a stack dump on
the user's terminal.
"""
from __future__ import annotations

import faulthandler
import hashlib
import os
import pickle
import signal
import sys
import time
import traceback

from emulator.sweep.config import SweepConfig
from emulator.sweep.exec_config import ExecSweepConfig
from emulator.sweep.harness import Harness
from emulator.sweep.keystream import StreamCache
from emulator.sweep.process_harness import cached_harness
from emulator.sweep.records import RunRecord, SweepTask, crash_record
from vdso.image import VdsoImage

FLUSH_EVERY = 0.2        # seconds between record batches from a local worker
FLUSH_COUNT = 128

# Per worker process: keystreams (keys recur across runs), harnesses, block analyses.
_STREAMS = StreamCache()
_HARNESSES: dict[tuple, Harness] = {}
_BLOCK_CACHES: dict[tuple, object] = {}


def harness_for(image: VdsoImage, cfg: SweepConfig) -> Harness:
    if isinstance(cfg, ExecSweepConfig):        # sweep --exec: a real program (process_harness.py)
        return cached_harness(image, cfg, _STREAMS)
    ikey = (image.name, image.base, hashlib.sha1(bytes(image.text)).digest(), image.rng_data_offset, image.abi)
    key = (ikey, cfg)
    h = _HARNESSES.get(key)
    if h is None:
        while len(_HARNESSES) >= 2:
            _HARNESSES.pop(next(iter(_HARNESSES))).close()
        h = _HARNESSES[key] = Harness(image, cfg, _STREAMS)
        # Every configuration of an image runs the same code: one per-block
        # analysis (decode + cycle model) serves all those priced by the same
        # profile.  (Requested upstream.)
        shared = _BLOCK_CACHES.setdefault(ikey + (cfg.profile,), h.m.blocks)
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
            if task.detail:
                rec.calls = h.summaries()
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


def quiet_stderr(path: str | None) -> None:
    """Fault handler off; stderr (fd 2, so C code's too) appended to `path`."""
    faulthandler.disable()
    if path is None:
        return
    sys.stderr.flush()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND)
    os.dup2(fd, 2)
    os.close(fd)


def serve_pipe(conn, cur, err_path: str | None = None) -> None:
    """A local worker (multiprocessing child): tasks arrive on `conn`, records
    go back in batches, and `cur` (shared memory) names the run about to
    start, so that the parent can tell which run a crash killed."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    quiet_stderr(err_path)
    while True:
        try:
            task = conn.recv()
        except EOFError:
            return
        if task is None:
            return
        buf: list = []
        last = [time.monotonic()]

        def flush() -> None:
            if buf:
                conn.send(("recs", list(buf)))
                buf.clear()
            last[0] = time.monotonic()

        def emit(rec) -> None:
            buf.append(rec)
            if len(buf) >= FLUSH_COUNT or time.monotonic() - last[0] > FLUSH_EVERY:
                flush()

        def mark(i: int, ev_index: int) -> None:
            cur[0], cur[1], cur[2] = task.task_id, i, ev_index

        try:
            execute_task(task, emit, mark)
            flush()
            conn.send(("done", task.task_id))
        except BaseException:
            flush()
            conn.send(("error", traceback.format_exc()))


def serve_stdio() -> None:
    """A worker started by subprocess: pickled tasks on stdin, pickled
    messages on stdout, each record sent as soon as it exists (the first run
    its parent has no record of is the one a crash killed).  The parent
    points stderr at its capture file."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    quiet_stderr(None)
    out = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)                  # a stray print must not corrupt the message stream
    inp = sys.stdin.buffer

    def send(msg) -> None:
        pickle.dump(msg, out, pickle.HIGHEST_PROTOCOL)
        out.flush()

    while True:
        try:
            task = pickle.load(inp)
        except EOFError:
            return
        try:
            execute_task(task, lambda rec: send(("recs", [rec])))
            send(("done", task.task_id))
        except BaseException:
            send(("error", traceback.format_exc()))


if __name__ == "__main__":
    serve_stdio()
