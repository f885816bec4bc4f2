"""Structured trace events: every stage of a fault, syscall or injection is
one event with its cycle cost, so the stepper can walk them."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field


@dataclass
class TraceEvent:
    index: int                 # architectural instruction index within the call
    rip: int
    kind: str                  # fault_entry, vma_lookup, alloc, zero_fill, decode, fault_return, syscall, inject, ...
    detail: dict = field(default_factory=dict)
    cycles: float = 0.0

    def as_dict(self) -> dict:
        d = asdict(self)
        d["rip"] = hex(self.rip)
        return d

    def line(self) -> str:
        det = " ".join(f"{k}={_fmt(v)}" for k, v in self.detail.items())
        return f"#{self.index:<6} {self.rip:#014x} {self.kind:<14} {self.cycles:>8.0f}c  {det}".rstrip()


def _fmt(v) -> str:
    if isinstance(v, int) and not isinstance(v, bool) and v > 0xFFFF:
        return hex(v)
    return str(v)


class Trace:
    """Append-only event list owned by one Machine."""

    def __init__(self, limit: int = 1 << 20):
        self.events: list[TraceEvent] = []
        self.limit = limit
        self.dropped = 0

    def emit(self, ev: TraceEvent) -> TraceEvent:
        if len(self.events) < self.limit:
            self.events.append(ev)
        else:
            self.dropped += 1
        return ev

    def since(self, mark: int) -> list[TraceEvent]:
        return self.events[mark:]

    def __len__(self) -> int:
        return len(self.events)
