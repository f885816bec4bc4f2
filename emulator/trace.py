"""Structured trace events: every stage of a fault, syscall or injection is
one event with its cycle cost, so the stepper can walk them and a timeline
viewer can lay them out.

Time.  A call's clock is its model cycles (ctx.cycles: the user code's block
costs plus every event's cost, in TSC ticks).  Whoever starts a call tells
the trace which context it runs (Trace.begin_call, libc's getrandom and the
stepper do); each event is then stamped with the call it belongs to and the
clock when it began, `at`.  Events of a call begun elsewhere (a forked
child's continuation) have no clock: `at` stays None.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field


# The kernel function each event kind stands for (Linux 6.x names; the x86
# entry and mm/memory.c), as `fstep` shows it and trace viewers label it.
KERNEL_FUNCTION = {
    "fault_entry": "exc_page_fault",               # -> do_user_addr_fault / do_kern_addr_fault
    "undo_split_store": "precise exception",       # the CPU commits nothing of a faulting store
    "vma_lookup": "lock_vma_under_rcu",
    "vma_check": "handle_mm_fault",
    "sigsegv": "bad_area",
    "spurious": "handle_pte_fault (spurious)",
    "map_zero_page": "do_anonymous_page (zero page)",
    "swap_in": "do_swap_page",
    "reclaim": "try_to_free_pages",
    "alloc": "alloc_pages",
    "zero_fill": "clear_user_highpage",
    "cow_copy": "wp_page_copy",
    "reuse": "wp_page_reuse",
    "oom": "pagefault_out_of_memory",
    "droppable_oom": "handle_mm_fault (VM_DROPPABLE)",
    "decode": "insn_fetch_from_user + insn_decode",
    "exception_fixup": "fixup_exception",
    "signal": "force_sig_fault",
    "fault_return": "irqentry_exit_to_user_mode",
    "syscall": "do_syscall_64",
    "syscall_return": "syscall_exit_to_user_mode",
}


def kernel_function(kind: str) -> str:
    return KERNEL_FUNCTION.get(kind, kind)


def event_name(ev: "TraceEvent") -> str:
    """What a viewer calls an event: its kernel function, or the injection."""
    if ev.kind == "inject":
        return f"inject {ev.detail.get('event', '?')}"
    return kernel_function(ev.kind)


@dataclass
class TraceEvent:
    index: int                 # architectural instruction index within the call
    rip: int
    kind: str                  # fault_entry, vma_lookup, alloc, zero_fill, decode, fault_return, syscall, inject, ...
    detail: dict = field(default_factory=dict)
    cycles: float = 0.0
    at: float | None = None    # the call's model cycles when the event began (None: no clock)
    call: int = 0              # which call of the process (1-based; 0: outside any begun call)

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
        self.calls = 0
        self._ctx = None

    def begin_call(self, ctx) -> int:
        """The call that runs on `ctx` starts now: its events are stamped with
        ctx.cycles.  Returns its number."""
        self.calls += 1
        self._ctx = ctx
        return self.calls

    def attach(self, ctx) -> None:
        """The current call continues on `ctx` (a copy restored from a snapshot)."""
        self._ctx = ctx

    def emit(self, ev: TraceEvent) -> TraceEvent:
        ctx = self._ctx
        if ctx is not None:
            # charged events are emitted after their cost was added to the clock
            ev.at = ctx.cycles - ev.cycles
            ev.call = self.calls
        if len(self.events) < self.limit:
            self.events.append(ev)
        else:
            self.dropped += 1
        return ev

    def since(self, mark: int) -> list[TraceEvent]:
        return self.events[mark:]

    def __len__(self) -> int:
        return len(self.events)
