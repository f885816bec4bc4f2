"""Events injected at instruction N of a call (`--inject KIND@N`).

drop        reclaim every droppable page (as memory pressure would)
oom         from here on no frame can be allocated (persistent failure)
oom-off     allocations succeed again
oom:K       only the next K allocation attempts fail (the OOM killer freed memory elsewhere)
fork        fork here; the child continues the call as a second Machine
reseed      bump vdso_rng_data.generation (crng reseed)
not-ready   clear vdso_rng_data.is_ready
ready       set it again
"""
from __future__ import annotations

import re
from typing import TYPE_CHECKING

from emulator.errors import UsageError
from emulator.records import CallContext, Injection

if TYPE_CHECKING:
    from emulator.task import Task

KINDS = ("drop", "oom", "oom-off", "oom:K", "fork", "reseed", "not-ready", "ready")
_KIND_RE = re.compile(r"^(drop|oom|oom-off|oom:(\d+)|fork|reseed|not-ready|ready)$")
MAX_INDEX = 1 << 40


def parse_kind(kind: str) -> str:
    m = _KIND_RE.match(kind.strip())
    if not m:
        raise UsageError(f"unknown inject kind {kind!r} (one of: {', '.join(KINDS)})")
    if m.group(2) is not None and int(m.group(2)) <= 0:
        raise UsageError(f"inject kind {kind!r}: K must be positive")
    return kind.strip()


def parse_injection(spec: str) -> Injection:
    """KIND@N, e.g. drop@120, oom:3@121."""
    kind, sep, at = spec.rpartition("@")
    if not sep:
        raise UsageError(f"--inject {spec!r}: expected KIND@N (e.g. drop@120)")
    try:
        n = int(at, 0)
    except ValueError:
        raise UsageError(f"--inject {spec!r}: instruction index {at!r} is not a number") from None
    if n < 0 or n > MAX_INDEX:
        raise UsageError(f"--inject {spec!r}: instruction index out of range")
    return Injection(at=n, kind=parse_kind(kind))


def apply(m: "Task", ctx: CallContext, inj: Injection) -> "Task | None":
    """Carry out one event now, between two instructions.  A fork returns the
    child, which the run loop lets finish the call (emulator/entry.py)."""
    kind = inj.kind
    detail: dict = {"event": kind}
    phys = m.kernel.phys
    if kind == "drop":
        n = m.mm.drop_droppable()
        detail["pages"] = n
        m.sync()
        m.charge(ctx, "inject", ctx.rip, detail, cycles=n * m.kernel.profile.event_cost("drop_page"))
        return None
    if kind == "oom":
        phys.fail_allocations(persistent=True)
    elif kind == "oom-off":
        phys.fail_allocations(None)
    elif kind.startswith("oom:"):
        phys.fail_allocations(count=int(kind[4:]))
    elif kind == "reseed":
        m.kernel.reseed()
        detail["generation"] = m.kernel.generation
    elif kind == "not-ready":
        m.kernel.set_ready(False)
    elif kind == "ready":
        m.kernel.set_ready(True)
    elif kind == "fork":
        child = m.fork()
        detail["child"] = child.name
        m.charge(ctx, "inject", ctx.rip, detail, cycles=m.kernel.profile.event_cost("fork"))
        return child
    m.charge(ctx, "inject", ctx.rip, detail, cycles=0)
    return None
