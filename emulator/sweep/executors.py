"""Where sweep tasks run: local worker processes (the default), in-process
(--jobs 0, for debugging), or a Dask cluster (--executor dask://HOST:PORT,
the optional `dask` extra).

Crash isolation.  A Unicorn abort (e.g. `lock bt reg` in 2.1.4) kills the whole
process that runs it.  Local workers therefore publish the run they are about
to start in shared memory; when a worker dies, that run is recorded as
`crash`, the rest of its task goes back to the queue (minus the runs already
reported) and a fresh worker takes over.  On Dask a task whose worker died is
split into one task per run and resubmitted; a single run that still kills
its worker is recorded as `crash`.
"""
from __future__ import annotations

import multiprocessing as mp
import os
import signal
import time
import traceback
from collections import deque
from multiprocessing.connection import wait

from emulator.errors import FaultpathError, UsageError
from emulator.sweep.records import RunRecord, SweepTask, crash_record
from emulator.sweep.worker import execute_task

FLUSH_EVERY = 0.2        # seconds between record batches from a worker
FLUSH_COUNT = 128


def make_executor(spec: str, jobs: int):
    if spec in ("", "local", None):
        return InlineExecutor() if jobs == 0 else LocalExecutor(jobs)
    if spec == "inline":
        return InlineExecutor()
    if spec.startswith("dask://"):
        return DaskExecutor(spec)
    raise UsageError(f"--executor {spec!r}: expected local or dask://HOST:PORT")


# --------------------------------------------------------------------------

class InlineExecutor:
    """Everything in this process: no isolation (debugging, tiny sweeps)."""
    name = "inline"

    def run(self, tasks):
        for t in tasks:
            for rec in execute_task(t):
                yield t, rec

    def close(self) -> None:
        pass


# --------------------------------------------------------------------------

def _worker_main(conn, cur) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
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


class _Worker:
    def __init__(self, ctx):
        self.conn, child = ctx.Pipe()
        self.cur = ctx.RawArray("q", 3)
        self.cur[0] = -1
        self.proc = ctx.Process(target=_worker_main, args=(child, self.cur), daemon=True)
        self.proc.start()
        child.close()
        self.task: SweepTask | None = None
        self.got: set = set()


class LocalExecutor:
    name = "local"

    def __init__(self, jobs: int):
        self.jobs = max(1, jobs)
        methods = mp.get_all_start_methods()
        self.ctx = mp.get_context("fork" if "fork" in methods else "spawn")
        self.workers: list[_Worker] = []

    def _ensure(self, n: int) -> None:
        while len(self.workers) < n:
            self.workers.append(_Worker(self.ctx))

    def run(self, tasks):
        queue = deque(tasks)
        if not queue:
            return
        self._ensure(min(self.jobs, len(queue)))
        while queue or any(w.task is not None for w in self.workers):
            for w in self.workers:
                if w.task is None and queue:
                    w.task = queue.popleft()
                    w.got = set()
                    w.cur[0] = -1
                    w.conn.send(w.task)
            busy = [w for w in self.workers if w.task is not None]
            ready = wait([w.conn for w in busy] + [w.proc.sentinel for w in busy])
            for w in busy:
                if w.conn in ready or w.proc.sentinel in ready:
                    yield from self._service(w, queue)

    def _service(self, w: _Worker, queue: deque):
        while True:
            try:
                if not w.conn.poll():
                    break
                kind, payload = w.conn.recv()
            except (EOFError, OSError):
                break
            if kind == "recs":
                for rec in payload:
                    if isinstance(rec, RunRecord):
                        w.got.add((rec.i, rec.event))
                    yield w.task, rec
            elif kind == "done":
                w.task = None
                return
            elif kind == "error":
                last = payload.strip().splitlines()[-1] if payload.strip() else "?"
                raise FaultpathError(f"sweep worker failed on {w.task.config.label()}: {last}\n{payload}")
        if w.proc.is_alive():
            return
        # The worker died in the middle of a task: its current run crashed.
        task = w.task
        code = w.proc.exitcode
        why = (f"worker killed by signal {-code} ({signal.Signals(-code).name})" if code is not None and code < 0
               else f"worker exited with status {code}")
        self.workers.remove(w)
        if task is not None:
            yield from self._crashed(task, w, why, queue)
        self._ensure(min(self.jobs, len(self.workers) + 1))

    def _crashed(self, task: SweepTask, w: _Worker, why: str, queue: deque):
        if task.kind == "baseline":
            yield task, crash_record(task, 0, "", why)
            return
        rest = [r for r in task.runs() if r not in w.got]
        if not rest:
            return
        if w.cur[0] == task.task_id and 0 <= w.cur[2] < len(task.events):
            bad = (int(w.cur[1]), task.events[w.cur[2]])
        else:
            bad = rest[0]
        if bad not in rest:
            bad = rest[0]
        yield task, crash_record(task, bad[0], bad[1], why)
        left = [r for r in rest if r != bad]
        if left:
            queue.appendleft(SweepTask(task.task_id, task.image, task.config, task.ci, task.kind,
                                       min(i for i, _ in left), task.stop, task.events, task.n,
                                       frozenset(set(task.skip) | w.got | {bad})))

    def close(self) -> None:
        for w in self.workers:
            try:
                w.conn.send(None)
            except (OSError, BrokenPipeError):
                pass
        for w in self.workers:
            w.proc.join(timeout=2)
            if w.proc.is_alive():
                w.proc.kill()
                w.proc.join()
        self.workers = []


# --------------------------------------------------------------------------

class DaskExecutor:
    """Tasks on a dask.distributed cluster.  Install with the `dask` extra."""

    def __init__(self, spec: str):
        addr = spec[len("dask://"):]
        if not addr:
            raise UsageError("--executor dask://HOST:PORT: no address")
        try:
            from distributed import Client
        except ImportError:
            raise UsageError("--executor dask://...: dask.distributed is not installed "
                             "(pip install 'faultpath[dask]')") from None
        try:
            self.client = Client(addr if "://" in addr else f"tcp://{addr}", timeout="20s")
        except OSError as e:
            raise UsageError(f"--executor {spec}: cannot reach the scheduler: {e}") from None
        self.name = f"dask {addr}"

    def run(self, tasks):
        from distributed import as_completed
        pending = {}
        ac = as_completed()
        for t in tasks:
            f = self.client.submit(execute_task, t, pure=False)
            pending[f.key] = t
            ac.add(f)
        for f in ac:
            t = pending.pop(f.key)
            try:
                recs = f.result()
            except Exception as e:          # KilledWorker and friends: the worker died
                why = f"dask worker lost: {type(e).__name__}: {e}"
                runs = t.runs() if t.kind != "baseline" else [(0, "")]
                if len(runs) > 1:
                    for i, ev in runs:
                        one = SweepTask(t.task_id, t.image, t.config, t.ci, t.kind, i, i + 1, (ev,), t.n)
                        nf = self.client.submit(execute_task, one, pure=False)
                        pending[nf.key] = one
                        ac.add(nf)
                else:
                    # One run whose worker died.  Dask also blames tasks whose results
                    # were lost with a worker another task killed, so the verdict comes
                    # from running it once more here, in an isolated local process.
                    yield from self._confirm(t, why)
                continue
            finally:
                f.release()
            for rec in recs:
                yield t, rec

    def _confirm(self, t: SweepTask, why: str):
        local = LocalExecutor(1)
        try:
            got = False
            for _, rec in local.run([t]):
                got = True
                if getattr(rec, "outcome", "") == "crash":
                    rec.violations = [{"invariant": "crash", "call": "worker", "detail": f"{why}; alone in a local "
                                       f"process: {rec.violations[0]['detail']}"}]
                yield t, rec
            if not got:
                runs = t.runs() if t.kind != "baseline" else [(0, "")]
                yield t, crash_record(t, runs[0][0], runs[0][1], why)
        finally:
            local.close()

    def close(self) -> None:
        self.client.close()


# --------------------------------------------------------------------------

def cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1
