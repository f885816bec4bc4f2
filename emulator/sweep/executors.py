"""Where sweep tasks run: local worker processes (the default), in-process
(--jobs 0, for debugging), or a Dask cluster (--executor dask://HOST:PORT,
the optional `dask` extra).

Crash isolation.  A Unicorn abort (e.g. `lock bt reg` in 2.1.4) kills the whole
process that runs it, so no run executes in a process whose death would cost
more than that run.  Local workers publish the run they are about to start in
shared memory; when a worker dies, that run is recorded as `crash` (with the
signal, and the last line the worker wrote to its stderr, which goes to a file
rather than the terminal), the rest of its task goes back to the queue (minus
the runs already reported) and a fresh worker takes over.  A Dask task runs in
a child of the Dask worker (started with subprocess: Dask workers are daemonic
and multiprocessing refuses them children), with the same bookkeeping: a Dask
worker never dies of an abort, so the cluster never loses or recomputes
results, and a crash is attributed exactly as it is locally.
"""
from __future__ import annotations

import multiprocessing as mp
import os
import pickle
import signal
import subprocess
import sys
import tempfile
import threading
from collections import deque
from multiprocessing.connection import wait

from emulator.errors import FaultpathError, UsageError
from emulator.sweep.records import RunRecord, SweepTask, crash_record
from emulator.sweep.worker import execute_task, serve_pipe

STDERR_TAIL = 4096       # bytes of a dead worker's stderr searched for its last words


def check_executor(spec: str) -> None:
    """Refuse a malformed --executor before any work starts."""
    if spec not in ("local", "inline") and not (spec.startswith("dask://") and spec[len("dask://"):]):
        raise UsageError(f"--executor {spec!r}: expected local or dask://HOST:PORT")


def make_executor(spec: str, jobs: int):
    check_executor(spec)
    if spec == "local":
        return InlineExecutor() if jobs == 0 else LocalExecutor(jobs)
    if spec == "inline":
        return InlineExecutor()
    return DaskExecutor(spec)


# --------------------------------------------------------------------------
# What a worker's death means for its task
# --------------------------------------------------------------------------

def death_reason(returncode: int | None, err, since: int) -> str:
    """One line: how the worker ended, and the last line it wrote to its
    stderr capture `err` after offset `since` (the start of the task)."""
    code = returncode
    why = (f"worker killed by signal {-code} ({signal.Signals(-code).name})" if code is not None and code < 0
           else f"worker exited with status {code}")
    try:
        err.seek(max(since, os.fstat(err.fileno()).st_size - STDERR_TAIL))
        lines = [ln.strip() for ln in err.read().decode("utf-8", "replace").splitlines() if ln.strip()]
    except (OSError, ValueError):
        lines = []
    return f"{why}: {lines[-1]}" if lines else why


def split_at_crash(task: SweepTask, got: set, bad: tuple[int, str] | None,
                   why: str) -> tuple[RunRecord | None, SweepTask | None]:
    """A worker died running `task` after reporting the runs in `got`: the
    crash record of the run it died in (`bad` when the worker said which, else
    the first run it did not report), and a task of the runs still to do."""
    if task.kind == "baseline":
        return crash_record(task, 0, "", why), None
    rest = [r for r in task.runs() if r not in got]
    if not rest:
        return None, None
    if bad not in rest:
        bad = rest[0]
    left = [r for r in rest if r != bad]
    again = None
    if left:
        again = SweepTask(task.task_id, task.image, task.config, task.ci, task.kind, min(i for i, _ in left),
                          task.stop, task.events, task.n, frozenset(set(task.skip) | got | {bad}), task.detail)
    return crash_record(task, bad[0], bad[1], why), again


def _failed(task: SweepTask, trace: str) -> FaultpathError:
    last = trace.strip().splitlines()[-1] if trace.strip() else "?"
    return FaultpathError(f"sweep worker failed on {task.config.label()}: {last}\n{trace}")


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

class _Worker:
    def __init__(self, ctx):
        self.err = tempfile.NamedTemporaryFile(prefix="faultpath-sweep-", suffix=".stderr")
        self.conn, child = ctx.Pipe()
        self.cur = ctx.RawArray("q", 3)
        self.cur[0] = -1
        self.proc = ctx.Process(target=serve_pipe, args=(child, self.cur, self.err.name), daemon=True)
        self.proc.start()
        child.close()
        self.task: SweepTask | None = None
        self.got: set = set()
        self.err_mark = 0

    def start(self, task: SweepTask) -> None:
        self.task = task
        self.got = set()
        self.cur[0] = -1
        self.err_mark = os.fstat(self.err.fileno()).st_size
        self.conn.send(task)

    def close(self) -> None:
        self.err.close()          # and so unlinked


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
                    w.start(queue.popleft())
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
                raise _failed(w.task, payload)
        if w.proc.is_alive():
            return
        # The worker died in the middle of a task: its current run crashed.
        w.proc.join()
        task = w.task
        why = death_reason(w.proc.exitcode, w.err, w.err_mark)
        self.workers.remove(w)
        w.close()
        if task is not None:
            bad = None
            if w.cur[0] == task.task_id and 0 <= w.cur[2] < len(task.events):
                bad = (int(w.cur[1]), task.events[w.cur[2]])
            rec, again = split_at_crash(task, w.got, bad, why)
            if rec is not None:
                yield task, rec
            if again is not None:
                queue.appendleft(again)
        self._ensure(min(self.jobs, len(self.workers) + 1))

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
            w.close()
        self.workers = []


# --------------------------------------------------------------------------

class ChildWorker:
    """A worker started by subprocess (`python -m emulator.sweep.worker`), for
    a process that may not have multiprocessing children.  run() gives every
    record of a task; when the child dies, the run it died in is a crash
    record and a fresh child does the rest."""

    def __init__(self):
        self.proc: subprocess.Popen | None = None
        self.err = None

    def _start(self) -> subprocess.Popen:
        import emulator
        root = os.path.dirname(os.path.dirname(os.path.abspath(emulator.__file__)))
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join([root] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
        self.err = tempfile.TemporaryFile(prefix="faultpath-sweep-")
        self.proc = subprocess.Popen([sys.executable, "-m", "emulator.sweep.worker"], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=self.err, env=env)
        return self.proc

    def run(self, task: SweepTask) -> list:
        out: list = []
        todo: SweepTask | None = task
        while todo is not None:
            proc = self.proc if self.proc is not None and self.proc.poll() is None else self._start()
            mark = os.fstat(self.err.fileno()).st_size
            got: set = set()
            try:
                pickle.dump(todo, proc.stdin, pickle.HIGHEST_PROTOCOL)
                proc.stdin.flush()
                while True:
                    kind, payload = pickle.load(proc.stdout)
                    if kind == "recs":
                        for rec in payload:
                            if isinstance(rec, RunRecord):
                                got.add((rec.i, rec.event))
                            out.append(rec)
                    elif kind == "done":
                        todo = None
                        break
                    elif kind == "error":
                        raise _failed(todo, payload)
            except (EOFError, OSError, pickle.UnpicklingError):
                why = death_reason(proc.wait(), self.err, mark)
                self.close()
                rec, todo = split_at_crash(todo, got, None, why)
                if rec is not None:
                    out.append(rec)
        return out

    def close(self) -> None:
        if self.proc is not None:
            for f in (self.proc.stdin, self.proc.stdout):
                try:
                    f.close()
                except OSError:
                    pass
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            self.proc = None
        if self.err is not None:
            self.err.close()
            self.err = None


# Per Dask worker process: children between tasks (their harness caches stay warm).
_IDLE_CHILDREN: list[ChildWorker] = []
_IDLE_LOCK = threading.Lock()


def run_in_child(task: SweepTask) -> list:
    """A Dask task: `task` in a child of this Dask worker."""
    with _IDLE_LOCK:
        child = _IDLE_CHILDREN.pop() if _IDLE_CHILDREN else ChildWorker()
    try:
        return child.run(task)
    finally:
        with _IDLE_LOCK:
            _IDLE_CHILDREN.append(child)


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
        futures = []
        for t in tasks:
            f = self.client.submit(run_in_child, t, pure=False)
            pending[f.key] = t
            futures.append(f)
        for f in as_completed(futures):
            t = pending.pop(f.key)
            try:
                recs = f.result()
            except FaultpathError:
                raise
            except Exception as e:      # the Dask worker itself was lost (not an abort: those stay in children)
                why = f"dask worker lost: {type(e).__name__}: {e}"
                runs = t.runs() if t.kind != "baseline" else [(0, "")]
                recs = [crash_record(t, i, ev, why) for i, ev in runs]
            finally:
                f.release()
            for rec in recs:
                yield t, rec

    def close(self) -> None:
        self.client.close()


# --------------------------------------------------------------------------

def cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1
