"""A caller that behaves like libc's vgetrandom (glibc 2.41+ on 6.11+).

6.11 ABI: query the opaque params once (opaque_len == ~0), mmap state pages
with the returned prot/flags, carve states so that none straddles a page,
then call __vdso_getrandom(buf, len, flags, state, sizeof state).
v14 ABI: states come from the vgetrandom_alloc syscall; the call has four
arguments.
"""
from __future__ import annotations

import struct
from typing import TYPE_CHECKING

from emulator.errors import EmulationError, UsageError
from mm import flags as F
from vdso.abi import (NR_vgetrandom_alloc, PARAMS_SIZE, STATE_SIZE, OpaqueParams, VgetrandomState)
from vdso.image import ABI_V14, PAGE_SIZE

if TYPE_CHECKING:
    from emulator.machine import Machine
    from emulator.records import Injection
    from emulator.records import CallResult

U64 = (1 << 64) - 1
MAX_REQUEST = 16 << 20       # the CLI's sanity limit on one request


class VgetrandomCaller:
    def __init__(self, machine: "Machine", nstates: int = 1, buffer_size: int = PAGE_SIZE):
        self.m = machine
        self.image = machine.kernel.image
        self.func = self.image.symbol("__vdso_getrandom")
        self.v14 = self.image.abi == ABI_V14
        self.scratch = self._mmap(PAGE_SIZE, F.PROT_READ | F.PROT_WRITE, F.MAP_PRIVATE | F.MAP_ANONYMOUS)
        self.params: OpaqueParams | None = None
        self.states: list[int] = []
        self.state_size = STATE_SIZE
        self.buffer = 0
        self.buffer_size = 0
        self.last: CallResult | None = None
        self._ensure_buffer(max(buffer_size, 1))
        self.alloc_states(nstates)

    # --- set-up, as libc does it ------------------------------------------------
    def _mmap(self, length: int, prot: int, flags: int) -> int:
        r = self.m.mm.mmap(0, length, prot, flags, -1, 0)
        if r < 0:
            raise EmulationError(f"libc: mmap({length}) failed with errno {-r}")
        self.m.sync_range(r, length)
        return r

    def _ensure_buffer(self, size: int) -> None:
        if size <= self.buffer_size:
            return
        if self.buffer:
            self.m.mm.munmap(self.buffer, self.buffer_size)
            self.m.sync_range(self.buffer, self.buffer_size)
        length = (size + PAGE_SIZE - 1) // PAGE_SIZE * PAGE_SIZE
        self.buffer = self._mmap(length, F.PROT_READ | F.PROT_WRITE, F.MAP_PRIVATE | F.MAP_ANONYMOUS)
        self.buffer_size = length

    def query_params(self) -> OpaqueParams:
        res = self.m.call(self.func, [0, 0, 0, self.scratch, U64], size=0)
        if res.outcome != "returned" or res.ret != 0:
            raise EmulationError(f"vgetrandom params query failed: {res.outcome} ret={res.ret}")
        self.params = OpaqueParams.unpack(self.m.read(self.scratch, PARAMS_SIZE))
        return self.params

    def alloc_states(self, n: int) -> list[int]:
        if self.v14:
            return self._alloc_states_v14(n)
        p = self.params or self.query_params()
        size = p.size_of_opaque_state
        if size <= 0 or size > PAGE_SIZE:
            raise EmulationError(f"vDSO reports an opaque state size of {size}")
        per_page = PAGE_SIZE // size
        pages = (n + per_page - 1) // per_page
        base = self._mmap(pages * PAGE_SIZE, p.mmap_prot, p.mmap_flags)
        for i in range(n):
            page, slot = divmod(i, per_page)
            self.states.append(base + page * PAGE_SIZE + slot * size)
        self.state_size = size
        return self.states

    def _alloc_states_v14(self, n: int) -> list[int]:
        from emulator.usercopy import access_user
        access_user(self.m, self.scratch, struct.pack("<II", n, 0), user=True)
        ret = self.m.do_syscall_now(NR_vgetrandom_alloc, [self.scratch, self.scratch + 4, 0, 0])
        if ret < 0:
            raise EmulationError(f"vgetrandom_alloc failed with errno {-ret}")
        num, size = struct.unpack("<II", self.m.read(self.scratch, 8))
        self.state_size = size
        self.states.extend(ret + i * size for i in range(min(n, num)))
        return self.states

    # --- the call ------------------------------------------------------------------
    def args(self, size: int, flags: int = 0, state: int | None = None, buffer: int | None = None) -> list[int]:
        st = self.states[0] if state is None else state
        buf = self.buffer if buffer is None else buffer
        if self.v14:
            return [buf, size, flags, st]
        return [buf, size, flags, st, self.state_size]

    def getrandom(self, size: int, flags: int = 0, state: int | None = None,
                  injections: list["Injection"] | None = None, budget: int | None = None) -> "CallResult":
        if size < 0 or size > MAX_REQUEST:
            raise UsageError(f"request size {size} out of range (0..{MAX_REQUEST})")
        self._ensure_buffer(size)
        kw = {} if budget is None else {"budget": budget}
        ctx = self.m.prepare_call(self.func, self.args(size, flags, state), size=size, injections=injections, **kw)
        self.m.trace.begin_call(ctx)          # the trace's clock for this call (emulator/trace.py)
        self.m.run(ctx)
        res = ctx.result
        self.fill_output(self.m, res)
        for child in self.m.children:
            cctx = getattr(child, "last_ctx", None)
            if cctx is not None and cctx.result in res.children:
                self.fill_output(child, cctx.result)
        self.last = res
        return res

    def fill_output(self, m: "Machine", res: "CallResult") -> None:
        if res.outcome == "returned" and res.ret is not None and res.ret > 0:
            res.output = m.read(self.buffer, min(res.ret, res.size))

    def state(self, i: int = 0, machine: "Machine | None" = None) -> VgetrandomState:
        return VgetrandomState.unpack((machine or self.m).read(self.states[i], STATE_SIZE))
