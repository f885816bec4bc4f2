"""faultpath's Python entry point: one emulated process, built from an image
and options, that makes vDSO getrandom calls as libc does.

    from emulator.api import Process
    p = Process("builtin", seed=1)
    r = p.getrandom(256, inject=["drop@0", "oom:1@16"])
    r.faults[0].decision, p.stages(r)

Everything else a tool uses is reachable from here: the process's Machine
(`p.machine`), its kernel (`p.kernel`), the libc-like caller (`p.libc`).
docs/api.md documents it with examples that run as tests (tests/test_api_docs.py).
A room of its own: it reaches into the tools too (traces, the stepper).
"""
from __future__ import annotations

from emulator.records import DEFAULT_BUDGET, DEFAULT_LIVELOCK, CallResult, Injection
from emulator.inject import parse_injection
from emulator.run import RunConfig, new_process
from emulator.trace import TraceEvent
from vdso.abi import VgetrandomState
from vdso.image import VdsoImage
from vdso.loader import load_image


class Process:
    """One process with a vDSO mapped and libc's getrandom state set up."""

    def __init__(self, image: str | VdsoImage = "builtin", *, seed: int = 0, memory_pages: int = 4096,
                 swap_pages: int = 0, droppable_oom: str = "skip", profile: str = "zen4",
                 livelock_limit: int = DEFAULT_LIVELOCK, buffer_size: int = 4096, state_offset: int | None = None):
        """`image`: "builtin", "builtin-v14", "host", a vdso.so or a .s path, or
        a loaded VdsoImage.  The rest are `faultpath run`'s options."""
        img = load_image(image) if isinstance(image, str) else image
        self.config = RunConfig(image=img, sizes=[buffer_size], calls=1, seed=seed, memory_pages=memory_pages,
                                swap_pages=swap_pages, droppable_oom=droppable_oom, profile=profile,
                                livelock_limit=livelock_limit, state_offset=state_offset)
        self.config.validate()
        self.kernel, self.machine, self.libc = new_process(self.config)
        self.calls: list[CallResult] = []

    def getrandom(self, size: int, flags: int = 0, *, inject: list[str | Injection] = (),
                  budget: int = DEFAULT_BUDGET) -> CallResult:
        """One call of __vdso_getrandom(buffer, size, flags, state, ...).
        `inject`: events at instruction indices of this call, "KIND@N" as on
        the command line (drop, oom, oom-off, oom:K, fork, reseed, not-ready,
        ready)."""
        injections = [parse_injection(i) if isinstance(i, str) else i for i in inject]
        res = self.libc.getrandom(size, flags, injections=injections, budget=budget)
        self.calls.append(res)
        return res

    def stages(self, call: CallResult | int | None = None) -> list[TraceEvent]:
        """The trace events of a call (default: the last one): every stage of
        every fault, syscall and injection, with its cycles and when it began."""
        n = len(self.calls) if call is None else call if isinstance(call, int) else self.calls.index(call) + 1
        if not 1 <= n <= len(self.calls):
            raise IndexError(f"no call {n} (this process made {len(self.calls)})")
        return [e for e in self.machine.trace.events if e.call == n]

    def state(self, i: int = 0) -> VgetrandomState:
        """The i-th vgetrandom state, as the process's memory holds it now."""
        return self.libc.state(i)

    @property
    def state_address(self) -> int:
        return self.libc.states[0]

    def trace_json(self, title: str = "faultpath api") -> str:
        """The calls so far as Chrome trace-event JSON (Perfetto UI, chrome://tracing)."""
        from emulator.tracing.chrome import run_trace
        return run_trace(self.kernel, self.machine, self.calls, title=title)
