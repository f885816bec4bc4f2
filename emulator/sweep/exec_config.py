"""What `faultpath sweep --exec` varies: one real program, one of its
getrandom() calls, the events at every boundary of that call.

The swept call is chosen by its vDSO call: --call K is the K-th
__vdso_getrandom call of the run (as `faultpath exec --inject
...@getrandom#K:N` counts them: glibc's start-up query of the parameters is
call 1, so call 2 is the program's first getrandom(), which allocates the
state and reseeds it, and call 3, the default, is the first warm one).  What
is swept is the glibc getrandom() call that made it, every instruction
boundary from the wrapper's entry to its return, glibc's code and the
vDSO's alike.

The events are those of the vDSO sweep (config.py), carried out on the real
process, plus one:

  reenter       a real signal (--reenter-signal, SIGUSR1 by default) is
                delivered to the program's own handler, which must call
                getrandom(): glibc's real re-entry path
  drop+reenter  every droppable page is dropped, then that signal: what
                happens when memory pressure takes the state page just
                before a handler's getrandom() (natively, a handler calling
                madvise(MADV_DONTNEED) and then getrandom())
"""
from __future__ import annotations

from dataclasses import dataclass

from emulator.cycles.profile import DEFAULT_PROFILE
from emulator.execve import DEFAULT_EXEC_MEMORY, ExecConfig
from emulator.sweep.config import SWEEP_LIVELOCK, parse_events, split_list
from vdso.image import VdsoImage

DROP_REENTER = "drop+reenter"
EXEC_EVENTS_ALL = ("drop", "oom", "oom:2", "fork", "reenter", DROP_REENTER, "reseed", "not-ready")
DEFAULT_CALL = 3            # the first warm call: the state exists and holds a batch
EXEC_SWEEP_BUDGET = 50_000_000    # instructions from start-up to the swept call, per process


@dataclass(frozen=True)
class ExecSweepConfig:
    """One program run and the call to sweep in it (hashable: workers key
    their harnesses on it; picklable: it travels in every task)."""
    program: str
    args: tuple[str, ...] = ()
    env: tuple[str, ...] | None = None
    allow_read: tuple[str, ...] = ()
    image_spec: str = "builtin"
    call: int = DEFAULT_CALL
    after: int = 1
    seed: int = 0
    memory_pages: int = DEFAULT_EXEC_MEMORY
    droppable_oom: str = "skip"
    livelock_limit: int = SWEEP_LIVELOCK
    profile: str = DEFAULT_PROFILE
    reenter_signal: str = "SIGUSR1"
    budget: int = EXEC_SWEEP_BUDGET

    def exec_config(self, image: VdsoImage) -> ExecConfig:
        kw = {} if self.env is None else {"env": list(self.env)}
        return ExecConfig(image=image, program=self.program, args=list(self.args), seed=self.seed,
                          memory_pages=self.memory_pages, droppable_oom=self.droppable_oom, budget=self.budget,
                          livelock_limit=self.livelock_limit, allow_read=list(self.allow_read),
                          profile=self.profile, passthrough=False, **kw)

    def label(self) -> str:
        return f"{' '.join([self.program, *self.args])}, vDSO call {self.call}"


def parse_exec_events(spec: str, livelock_limit: int) -> list[str]:
    """--events for --exec: the vDSO sweep's events, drop+reenter, or all."""
    out: list[str] = []
    for ev in split_list(spec, "--events"):
        if ev == "all":
            items = list(EXEC_EVENTS_ALL)
        elif ev == DROP_REENTER:
            items = [ev]
        else:
            items = parse_events(ev, livelock_limit)
        out.extend(e for e in items if e not in out)
    return out
