"""What crosses the process boundary: the task a worker runs and the records
it sends back.  All of it is plain data and pickles (local workers, Dask)."""
from __future__ import annotations

from dataclasses import dataclass, field

from emulator.sweep.config import SweepConfig
from vdso.image import VdsoImage


@dataclass
class SweepTask:
    """One unit of work: a configuration's baseline, or a range of its
    boundaries times the events (self-contained, so any worker can run it)."""
    task_id: int
    image: VdsoImage
    config: SweepConfig
    ci: int                              # configuration index (coordinator's)
    kind: str = "boundaries"             # baseline | boundaries
    start: int = 0
    stop: int = 0                        # exclusive
    events: tuple[str, ...] = ()
    n: int = 0                           # the baseline's instruction count
    skip: frozenset = frozenset()        # (i, event) pairs not to run (they crashed a worker)
    detail: bool = False                 # records carry every call's CallSummary (sweep --native)

    def runs(self) -> list[tuple[int, str]]:
        return [(i, ev) for i in range(self.start, self.stop) for ev in self.events if (i, ev) not in self.skip]


@dataclass
class RunRecord:
    ci: int
    i: int
    event: str
    outcome: str                                    # one of oracle.OUTCOMES
    rip: int = 0
    violations: list[dict] = field(default_factory=list)
    livelock: str = ""
    cycles: float | None = None                     # the swept call's, under the profile (None: it never ended)
    where: str = ""                                 # a violation's rip, symbolised where the image was placed
    calls: list | None = None                       # CallSummary of every call, when the task asked for detail


@dataclass
class BaselineRecord:
    ci: int
    n: int
    outcome: str
    violations: list[dict] = field(default_factory=list)
    warm_violations: list[dict] = field(default_factory=list)
    ret: int | None = None
    cycles: float | None = None                     # the undisturbed swept call's
    calls: list | None = None                       # CallSummary of the swept call, when asked for detail


def crash_record(task: SweepTask, i: int, ev: str, why: str) -> RunRecord | BaselineRecord:
    """The record of a run (or baseline) whose worker died or whose harness failed."""
    if task.kind == "baseline":
        return BaselineRecord(task.ci, 0, "crash", [{"invariant": "crash", "call": "baseline", "detail": why}])
    return RunRecord(task.ci, i, ev, "crash", 0, [{"invariant": "crash", "call": "worker", "detail": why}])
