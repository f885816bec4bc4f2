"""Snapshots of a whole emulated machine (System.snapshot/restore, built on
Process.snapshot/restore): a real glibc program is run to its end, brought
back to a point in the middle any number of times, and must then do exactly
what it did: the same syscalls with the same results and bytes, the same
output, the same processes, the same exit, the same page cache.  Along the
way it exits (its mm torn down, its block hook removed), forks a child that
talks to it through a pipe, reads files, and its tools' counters move."""
from __future__ import annotations

import os

import pytest

from emulator.exec.recorder import TraceRecorder
from emulator.exec.triggers import Injector, parse_trigger
from emulator.execve import ExecConfig, boot
from emulator.sched import DEAD, ZOMBIE
from exec_helpers import glibc_programs
from vdso.loader import load_image

pytestmark = pytest.mark.skipif(os.uname().machine != "x86_64", reason="x86-64 programs")


@pytest.fixture(scope="module")
def progs():
    return glibc_programs()


def machine(progs, name: str, *args: str):
    cfg = ExecConfig(image=load_image("builtin"), program=str(progs[name]), args=list(args), passthrough=False,
                     memory_pages=4096)
    return boot(cfg)


def outcome(system) -> tuple:
    """Everything a run did that a restore must reproduce."""
    procs = tuple((p.pid, p.ppid, p.exit.outcome, p.exit.code, p.ctx.index,
                   tuple((r.name, tuple(r.args), r.ret, r.data) for r in p.ctx.result.syscalls))
                  for p in system.order)
    phys = system.kernel.phys
    return (bytes(system.console.captured[1]), procs, phys.charged, sorted(phys.page_cache))


def snapshot_at(system, index: int) -> list:
    box: list = []
    system.first().at_index(index, lambda p: box.append(system.snapshot()))
    return box


def test_a_program_brought_back_runs_the_same_twice(progs):
    """The snapshot is taken in the loader (most files not read yet, glibc's
    state not mapped); the program then runs to exit_group and is brought
    back from the dead twice."""
    system = machine(progs, "getrandom_loop", "4")
    recorder = TraceRecorder()
    recorder.attach(system.first())
    inj = Injector([parse_trigger("drop@getrandom#3:40")])
    inj.attach(system.first())
    box = snapshot_at(system, 40_000)
    system.run()
    first = outcome(system)
    trace = [str(e) for e in recorder.trace().processes[0]]
    assert first[0] == b"calls=4 bytes=256 short=0 failed=0 zero_words=0\n"
    assert system.first().state in (ZOMBIE, DEAD) and getattr(system.first().mm, "dead", False)
    assert len(inj.triggers[0].fired) == 1
    for _ in range(2):
        system.restore(box[0])
        assert system.first().ctx.index == 40_000 and not inj.triggers[0].fired
        system.run()
        assert outcome(system) == first
        assert [str(e) for e in recorder.trace().processes[0]] == trace
        assert len(inj.triggers[0].fired) == 1


def test_a_forked_child_and_its_pipe_come_back(progs):
    """getrandom_fork: the snapshot falls between fork() and the child's
    first write to the pipe; after the run both processes have exited and
    the parent has reaped the child.  Restored, the same two processes run
    the same way again, and no third process appears."""
    system = machine(progs, "getrandom_fork", "3")
    box: list = []

    class AtFork:
        def on_fork(self, parent, child):
            parent.at_index(parent.ctx.index + 2000, lambda p: box.append(system.snapshot()))

        def on_syscall(self, p, rec): ...
        def on_signal(self, p, k, what): ...
        def on_exit(self, p): ...
        def on_refusal(self, p, rec, why): ...

    system.first().observers.append(AtFork())
    system.run()
    first = outcome(system)
    assert len(first[1]) == 2 and b"child: calls=3" in first[0] and b"same_first_block=0" in first[0]
    for _ in range(2):
        system.restore(box[0])
        assert len(system.order) == 2 and system.order[1].state != ZOMBIE
        system.run()
        assert outcome(system) == first


def test_a_child_forked_after_the_snapshot_is_forgotten(progs):
    """Restoring to before the fork: the child that existed is gone (its
    memory freed), and the fork makes a child with the same pid again."""
    system = machine(progs, "getrandom_fork", "2")
    box = snapshot_at(system, 60_000)
    system.run()
    first = outcome(system)
    child = system.order[1]
    system.restore(box[0])
    assert system.order == [system.first()] and child.pid not in system.procs
    assert getattr(child.mm, "dead", False)
    system.run()
    assert outcome(system) == first and system.order[1] is not child


def test_a_watch_reached_by_a_timed_stop_still_fires_once(progs):
    """at_index stopping exactly where a watch is: the arrival is reported
    (arrive() before the tool acts, or as the run goes on), once."""
    system = machine(progs, "getrandom_loop", "2")
    p = system.first()
    vdso = p.kernel.image.symbol("__vdso_getrandom")
    seen: list[int] = []
    p.watch(vdso, lambda q: seen.append(q.ctx.index))
    system.run()
    first = list(seen)
    assert len(first) == 3                      # glibc's query, then the program's two calls
    system2 = machine(progs, "getrandom_loop", "2")
    q = system2.first()
    seen.clear()
    q.watch(vdso, lambda r: seen.append(r.ctx.index))
    q.at_index(first[1], lambda r: seen.append(-1))
    system2.run()
    assert seen == [first[0], -1, first[1], first[2]]
