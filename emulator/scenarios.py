"""Canned scenarios for `faultpath run --scenario NAME`.

A scenario is a list of calls, each with a size and the injections for that
call.  Injection points are expressed relative to landmarks found in a
baseline run (e.g. "the first write to the state page"), so the same scenario
exercises the fault path on any image, not just on one instruction layout.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from emulator.errors import UsageError


@dataclass
class PlannedCall:
    size: int
    injections: list[str] = field(default_factory=list)    # KIND@N specs
    note: str = ""


@dataclass
class Scenario:
    name: str
    description: str
    calls: list[PlannedCall]


SCENARIOS = {
    "fault-path": "warm the state, then drop the state page mid-call while allocations fail "
                  "transiently (oom:K): the vDSO's writes to the dropped page are skipped, and it "
                  "recovers through its generation check (reseed)",
    "kernel-copy-spin": "drop the state page mid-call under persistent OOM: user-mode writes are "
                        "skipped, but the getrandom syscall's own copy_to_user of the reseed key "
                        "into the droppable page refaults forever (bounded, reported as livelock)",
    "none": "plain calls, no injections",
}


def describe() -> str:
    return "; ".join(f"{k}: {v}" for k, v in SCENARIOS.items())


def plan(name: str, sizes: list[int], calls: int, state_write_index: int) -> Scenario:
    """Build the call list.  state_write_index: the instruction index, in a
    warm steady-state call of sizes[-1] bytes, of the first write to the state
    page after the batch copy starts (found by emulator.run.find_landmarks)."""
    if name not in SCENARIOS:
        raise UsageError(f"unknown scenario {name!r} (one of: {', '.join(SCENARIOS)})")
    seq = [sizes[i % len(sizes)] for i in range(calls)]
    out = [PlannedCall(s) for s in seq]
    if name == "none" or calls < 2:
        return Scenario(name, SCENARIOS[name], out)
    at = max(1, state_write_index)
    target = out[1]
    if name == "fault-path":
        target.injections = [f"drop@{at}", f"oom:2@{at}"]
        target.note = "state page dropped mid-call; the next 2 allocations fail"
    elif name == "kernel-copy-spin":
        target.injections = [f"drop@{at}", f"oom@{at}"]
        target.note = "state page dropped mid-call; allocations fail from here on"
        for later in out[2:]:
            later.injections = ["oom-off@0"]
            later.note = "memory is back: the state recovers"
    return Scenario(name, SCENARIOS[name], out)
