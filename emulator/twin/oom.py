"""oom natively: a memory cgroup holding only the tracee, limited so that the
next page the tracee needs cannot be charged.  (Filled in below.)"""
from __future__ import annotations

from emulator.twin.records import EventRecord


def unavailable() -> str:
    return "oom: not implemented yet"


class MemoryLimit:
    def apply(self, t, layout, name: str) -> EventRecord:
        raise NotImplementedError

    def release(self, t) -> None:
        pass

    def close(self) -> None:
        pass
