"""One emulated system for `faultpath compare`: a kernel, a process whose libc
allocates vgetrandom states the way one design says, its forked children, and
the bookkeeping every metric is computed from (calls, the swap device's write
log, the secret ledger).

Everything here drives the ordinary Machine: calls are prepared and run as
libc makes them, paused at an instruction boundary when a scenario wants to
act inside a call (reclaim, fork, a signal handler), and resumed.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from emulator import syscalls
from emulator.cycles.profile import load_profile
from emulator.compare.designs import PAGE_SIZE, Design, DesignCaller
from emulator.errors import EmulationError
from emulator.kernel import SENTINEL_PAGE, Kernel
from emulator.layout import install_kernel_mappings, place_image
from emulator.machine import STACK_SIZE, STACK_TOP, Machine
from emulator.records import DEFAULT_BUDGET, DEFAULT_LIVELOCK, CallContext
from emulator.records import CallResult
from emulator.usercopy import access_user
from emulator.compare.ledger import Ledger
from mm import flags as F
from mm import vmscan
from vdso.abi import NR_getrandom, STATE_KEY, STATE_KEY_LEN
from vdso.image import VdsoImage

U64 = (1 << 64) - 1
SIGNAL_FRAME = 1024          # what a signal frame takes below the red zone (x86-64: ~1 KiB with xsave)
RED_ZONE = 128


@dataclass
class Call:
    """One getrandom() as the application saw it."""
    process: str
    thread: int
    size: int
    via: str                  # vdso | syscall (libc had no state for this thread)
    ret: int | None
    outcome: str              # returned | killed | signal | livelock | budget
    detail: str
    cycles: float
    instructions: int
    output: bytes = field(repr=False)
    reseeds: int = 0          # getrandom syscalls writing a key into the state
    vdso_fallbacks: int = 0   # getrandom syscalls for the caller's buffer, made by the vDSO
    faults: int = 0
    skips: int = 0            # user-mode writes skipped (VM_FAULT_SKIP_INSN)
    user_refaults: int = 0    # user-mode faults that left rip alone under OOM
    kernel_refaults: int = 0  # copy_to_user refaults under OOM
    livelock: str = ""        # "" | user | kernel
    tag: str = ""             # what the scenario was doing

    @property
    def ok(self) -> bool:
        return self.outcome == "returned"

    def as_dict(self) -> dict:
        return {"process": self.process, "thread": self.thread, "size": self.size, "via": self.via,
                "ret": self.ret, "outcome": self.outcome, "detail": self.detail,
                "cycles": round(self.cycles, 1), "instructions": self.instructions,
                "reseeds": self.reseeds, "vdso_fallbacks": self.vdso_fallbacks, "faults": self.faults,
                "skips": self.skips, "user_refaults": self.user_refaults,
                "kernel_refaults": self.kernel_refaults, "livelock": self.livelock, "tag": self.tag}


class Proc:
    """One process: its Machine and its libc."""

    def __init__(self, name: str, machine: Machine, caller: DesignCaller):
        self.name = name
        self.m = machine
        self.caller = caller
        self.heap: tuple[int, int] | None = None     # other anonymous memory of the process
        self.handler_buffer = 0                      # a signal handler's own buffer
        self.alive = True

    @property
    def mm(self):
        return self.m.mm

    def region(self, addr: int) -> str:
        c = self.caller
        page = addr & ~(PAGE_SIZE - 1)
        if page in c.state_page_set():
            return "state"
        if c.buffer <= addr < c.buffer + c.buffer_size:
            return "buffer"
        if STACK_TOP - STACK_SIZE <= addr < STACK_TOP:
            return "stack"
        if self.heap and self.heap[0] <= addr < self.heap[1]:
            return "heap"
        return "other"


class World:
    def __init__(self, design: Design, image: VdsoImage, *, seed: int = 0, memory_pages: int = 4096,
                 swap_pages: int = 0, overcommit_memory: int = 0, overcommit_ratio: int = 50,
                 rlimit_memlock: int | None = None, nthreads: int = 1, buffer_size: int = PAGE_SIZE,
                 livelock_limit: int = DEFAULT_LIVELOCK, profile: str = "zen4",
                 reuse_children: bool = True):
        self.design = design
        self.reuse_children = reuse_children
        self._spare: Machine | None = None     # an exited child's Machine, JIT cache still warm
        self.kernel = Kernel(place_image(image), memory_pages=memory_pages, swap_pages=swap_pages, seed=seed,
                             profile=load_profile(profile), overcommit_memory=overcommit_memory,
                             overcommit_ratio=overcommit_ratio)
        self.phys = self.kernel.phys
        self.swap_log = self.phys.swap.record_writes()
        m = Machine(self.kernel, droppable_oom=design.droppable_oom, livelock_limit=livelock_limit,
                    rlimit_memlock=rlimit_memlock)
        install_kernel_mappings(m.mm, self.kernel)     # before the design's caller maps anything
        caller = DesignCaller(m, design, nthreads=nthreads, buffer_size=buffer_size)
        self.parent = Proc("parent", m, caller)
        self.procs: list[Proc] = [self.parent]
        self.by_mm: dict[int, Proc] = {m.mm.id: self.parent}
        self.ledger = Ledger()
        self.calls: list[Call] = []
        self.events: Counter = Counter()
        self.frames_peak = self.phys.charged
        self.locked_peak = self.locked_pages()
        self.pinned_peak = self.pinned_pages()
        self._nforks = 0
        self._held: list = []

    def hold(self, snap) -> None:
        """Keep a Machine snapshot alive for the World's lifetime. restore() leaves
        the mm's pages write-protected and shared with the snapshot; while the
        snapshot lives, a write to them is the invisible snapshot copy, but once it
        is gone the same write becomes a visible `reuse` fault (630 cycles) that a
        run without snapshots never takes. A snapshot shares every frame the mm
        maps when it is taken, so holding the latest one is enough."""
        self._held[:] = [snap]

    # ------------------------------------------------------------------ set-up helpers
    def add_heap(self, proc: Proc, pages: int) -> int:
        """Other anonymous memory of the process (malloc arenas): not touched yet."""
        r = proc.mm.mmap(0, pages * PAGE_SIZE, F.PROT_READ | F.PROT_WRITE, F.MAP_PRIVATE | F.MAP_ANONYMOUS)
        if r < 0:
            return r
        proc.m.sync_range(r, pages * PAGE_SIZE)
        proc.heap = (r, r + pages * PAGE_SIZE)
        return r

    def add_handler_buffer(self, proc: Proc) -> int:
        r = proc.mm.mmap(0, PAGE_SIZE, F.PROT_READ | F.PROT_WRITE, F.MAP_PRIVATE | F.MAP_ANONYMOUS)
        if r < 0:
            raise EmulationError(f"cannot map a signal handler buffer: errno {-r}")
        proc.m.sync_range(r, PAGE_SIZE)
        proc.handler_buffer = r
        return r

    def touch(self, proc: Proc, addr: int, data: bytes) -> bool:
        """The application writing its own memory between calls (faults, reclaim)."""
        proc.m.sync()
        n = access_user(proc.m, addr, data, user=True)
        proc.m.sync()
        self._note_frames()
        if n != len(data):
            self.events["app_write_oom"] += 1
            return False
        return True

    # ------------------------------------------------------------------ calls
    def state_of(self, proc: Proc, thread: int) -> int | None:
        return proc.caller.thread_states[thread]

    def call(self, proc: Proc, thread: int, size: int, flags: int = 0, *, pause_at: int | None = None,
             on_pause=None, tag: str = "", budget: int = DEFAULT_BUDGET) -> Call:
        """getrandom(buf, size, flags) on `thread`'s state, as libc makes it. With
        pause_at, on_pause(ctx) runs at that instruction boundary (if the call gets
        there) and the call then goes on."""
        m, c = proc.m, proc.caller
        m.sync()
        st = c.thread_states[thread]
        if st is None:
            res = self._syscall_getrandom(proc, c.buffer, size, flags)
            return self.record(proc, thread, res, "syscall", tag)
        ctx = m.prepare_call(c.func, c.args(size, flags, st), size=size, budget=budget)
        if pause_at is not None:
            m.run(ctx, stop_at=pause_at)
            if not ctx.done and on_pause is not None:
                self.observe(proc, thread)
                on_pause(ctx)
                m.sync()
        if not ctx.done:
            m.run(ctx)
        c.fill_output(m, ctx.result)
        return self.record(proc, thread, ctx.result, "vdso", tag)

    def finish_call(self, proc: Proc, thread: int, ctx: CallContext, tag: str = "") -> Call:
        """Run a call prepared elsewhere (stepped, forked) to its end and record it."""
        proc.m.sync()
        if not ctx.done:
            proc.m.run(ctx)
        proc.caller.fill_output(proc.m, ctx.result)
        return self.record(proc, thread, ctx.result, "vdso", tag)

    def _syscall_getrandom(self, proc: Proc, buf: int, size: int, flags: int) -> CallResult:
        """libc without a state: the getrandom syscall itself."""
        m = proc.m
        ctx = CallContext(result=CallResult(size=size, process=m.name), rip=SENTINEL_PAGE, budget=1)
        m.set_reg("RAX", NR_getrandom)
        for r, v in zip(["RDI", "RSI", "RDX"], [buf, size, flags]):
            m.set_reg(r, v & U64)
        syscalls.do_syscall(m, ctx, SENTINEL_PAGE)
        rec = ctx.result.syscalls[-1]
        if not ctx.done:
            ctx.result.ret = rec.ret
            m.finish(ctx, "returned")
        proc.caller.fill_output(m, ctx.result)
        return ctx.result

    def nested_call(self, proc: Proc, thread: int, size: int, tag: str = "signal handler") -> Call:
        """A signal handler calling getrandom() with the same thread's state, between
        two instructions of an interrupted call: the handler runs on the same stack
        below the red zone and a signal frame, into its own buffer; afterwards the
        interrupted context is restored exactly."""
        m, c = proc.m, proc.caller
        if not proc.handler_buffer:
            self.add_handler_buffer(proc)
        st = c.thread_states[thread]
        saved = m.uc.context_save()
        try:
            if st is None:
                res = self._syscall_getrandom(proc, proc.handler_buffer, size, 0)
                via = "syscall"
            else:
                rsp = (m.reg("RSP") - RED_ZONE - SIGNAL_FRAME) & ~0xF
                rsp -= 8                                    # (rsp + 8) % 16 == 0 at entry
                m.user_write(rsp, SENTINEL_PAGE.to_bytes(8, "little"))
                for r, v in zip(["RDI", "RSI", "RDX", "RCX", "R8"],
                                c.args(size, 0, st, buffer=proc.handler_buffer)):
                    m.set_reg(r, v & U64)
                m.set_reg("RSP", rsp)
                m.set_reg("RIP", c.func)
                ctx = CallContext(result=CallResult(size=size, process=m.name + "/handler"),
                                  rip=c.func, budget=DEFAULT_BUDGET)
                m.run(ctx)
                res = ctx.result
                via = "vdso"
            if res.outcome == "returned" and res.ret and res.ret > 0:
                res.output = m.read(proc.handler_buffer, min(res.ret, size))
        finally:
            m.uc.context_restore(saved)
            m.sync()
        return self.record(proc, thread, res, via, tag)

    # ------------------------------------------------------------------ fork
    def fork(self, proc: Proc, name: str | None = None) -> Proc | None:
        """fork() from this process at its current instruction boundary (the child's
        CPU is a copy); None when dup_mm refuses (-ENOMEM)."""
        m = proc.m
        child_mm = m.mm.dup_mm()
        if isinstance(child_mm, int):
            self.events["fork_failed"] += 1
            return None
        self._nforks += 1
        name = name or f"child{self._nforks}"
        child = self._take_spare(child_mm, name)
        if child is None:
            child = Machine(self.kernel, child_mm, livelock_limit=m.livelock_limit, name=name, _stack=False)
            child.blocks = m.blocks              # same kernel text: share the decode/cost cache
        child.copy_cpu_from(m)
        m.sync()                                 # dup_mm write-protected our pages (COW)
        child.sync()
        m.children.append(child)
        cp = Proc(name, child, proc.caller.for_machine(child))
        cp.heap = proc.heap
        cp.handler_buffer = proc.handler_buffer
        self.procs.append(cp)
        self.by_mm[child_mm.id] = cp
        self._note_frames()
        return cp

    def _take_spare(self, mm, name: str) -> Machine | None:
        """Give an exited child's Machine the new child's mm: a fresh Unicorn costs
        ~4 ms and its first call ~6 ms of translation; the kernel text and with it
        every translated block stay valid. The Machine keeps only its special
        mappings, then maps the new mm from scratch (sync of every VMA page)."""
        mach, self._spare = self._spare, None
        if mach is None:
            return None
        try:
            mach.replace_mm(mm, name)
            return mach
        except (AttributeError, TypeError):     # the Machine changed shape: build a new one
            self.reuse_children = False
            mach.close()
            return None

    def continue_in_child(self, child: Proc, ctx: CallContext) -> CallContext:
        """The child's copy of a call in progress (fork inside a signal handler)."""
        return CallContext(result=CallResult(size=ctx.result.size, process=child.name), rip=ctx.rip,
                           budget=ctx.budget, index=ctx.index, rep_open=ctx.rep_open)

    def exit(self, proc: Proc) -> None:
        """The process exits: its address space goes away (frames, swap slots)."""
        if not proc.alive:
            return
        proc.alive = False
        proc.m.mm.exit_mmap()
        for p in self.procs:
            if proc.m in p.m.children:
                p.m.children.remove(proc.m)      # so a parent's restore() does not close it
        if self.reuse_children and proc is not self.parent and self._spare is None:
            self._spare = proc.m
        else:
            proc.m.close()
        if proc in self.procs:
            self.procs.remove(proc)

    # ------------------------------------------------------------------ memory pressure
    def evict(self, proc: Proc, pages) -> Counter:
        """Reclaim picks these pages (shrink_folio_list on their folios): droppable ones
        are discarded, other anonymous ones swapped out if swap has room; locked and
        pinned ones stay. Returns what happened, by kind."""
        out: Counter = Counter()
        phys = self.phys
        for page in pages:
            pte = proc.mm.pte(page)
            f = pte.frame if pte is not None else None
            if f is None or f.is_zero:
                out["absent"] += 1
                continue
            if vmscan.frame_unevictable(f):
                out["unevictable"] += 1
            elif f.droppable or f.lazyfree:
                vmscan.discard_frame(phys, f)
                out["dropped"] += 1
            elif phys.swap.free > 0 and vmscan.swap_out_frame(phys, f):
                out["swapped"] += 1
            else:
                out["kept"] += 1
        self.sync_all()
        return out

    def shrink(self, pages: int) -> None:
        """kswapd: reclaim `pages` pages system-wide now."""
        self.phys.shrink(pages)
        self.sync_all()

    def sync_all(self) -> None:
        for p in self.procs:
            p.m.sync()

    # ------------------------------------------------------------------ bookkeeping
    def _note_frames(self) -> None:
        if self.phys.charged > self.frames_peak:
            self.frames_peak = self.phys.charged
        self.locked_peak = max(self.locked_peak, self.locked_pages())
        self.pinned_peak = max(self.pinned_peak, self.pinned_pages())

    def observe(self, proc: Proc, thread: int | None = None) -> None:
        """Put a thread's state (or every state of the process) into the ledger."""
        c = proc.caller
        states = c.states if thread is None else [c.thread_states[thread]]
        for st in states:
            if st is not None:
                raw = proc.m.read(st, c.state_size)
                self.ledger.add_state(raw)

    def record(self, proc: Proc, thread: int, res: CallResult, via: str, tag: str = "") -> Call:
        st = proc.caller.thread_states[thread] if thread < len(proc.caller.thread_states) else None
        reseeds = fallbacks = 0
        for s in res.syscalls:
            if s.nr != NR_getrandom:
                continue
            if st is not None and via == "vdso" and st <= s.data_addr < st + proc.caller.state_size:
                reseeds += 1
                self.ledger.add(s.generated, "key")
            elif via == "vdso":
                fallbacks += 1
        skips = sum(f.repeats for f in res.faults if f.user and f.decision == "skip")
        urf = sum(f.repeats for f in res.faults if f.user and f.decision in ("retry", "retry-oom", "livelock"))
        krf = sum(f.repeats for f in res.faults if not f.user and f.decision in ("retry", "retry-oom", "livelock"))
        live = ""
        if res.outcome == "livelock":
            live = "kernel" if any(s.outcome == "livelock" for s in res.syscalls) else "user"
        call = Call(process=proc.name, thread=thread, size=res.size, via=via, ret=res.ret, outcome=res.outcome,
                    detail=res.outcome_detail, cycles=res.cycles, instructions=res.instructions,
                    output=res.output, reseeds=reseeds, vdso_fallbacks=fallbacks,
                    faults=sum(f.repeats for f in res.faults), skips=skips, user_refaults=urf,
                    kernel_refaults=krf, livelock=live, tag=tag)
        if res.outcome == "returned" and res.output:
            self.ledger.add(res.output, "output")
        self.observe(proc, thread)
        self._note_frames()
        self.calls.append(call)
        return call

    # ------------------------------------------------------------------ views used by the metrics
    def state_frames(self) -> int:
        """Frames backing state pages, over every live process."""
        n = 0
        for p in self.procs:
            for page in p.caller.state_pages:
                pte = p.mm.pte(page)
                if pte is not None and pte.frame is not None and not pte.frame.is_zero:
                    n += 1
        return n

    def locked_pages(self) -> int:
        return max((p.mm.locked_vm for p in self.procs), default=0)

    def pinned_pages(self) -> int:
        from mm.special_mapping import is_pinned_mapping
        return max((sum(v.pages for v in p.mm.vmas if is_pinned_mapping(v)) for p in self.procs), default=0)

    def region_of(self, mm_id: int, addr: int) -> str:
        p = self.by_mm.get(mm_id)
        return p.region(addr) if p is not None else "other"

    def scan_swap(self, since: int = 0) -> dict:
        """Every page written to the swap device since log index `since`, scanned
        for ledger windows; bytes by kind and by the region the page came from."""
        out: Counter = Counter()
        state_writes = 0
        for w in self.swap_log[since:]:
            region = self.region_of(*w.origin[0]) if w.origin else "other"
            if region == "state":
                state_writes += 1
            for kind, n in self.ledger.scan(w.data).items():
                out[f"{kind}@{region}"] += n
        return {"writes": len(self.swap_log) - since, "state_page_writes": state_writes, "bytes": out}


def secret_bytes(found: Counter) -> tuple[int, int, int]:
    """From a scan result keyed "kind@region": (key material: key windows anywhere
    plus batch windows in a state page, i.e. output not handed out yet; output
    found in state pages; output found anywhere). Batch windows elsewhere are bytes
    the vDSO copied into the caller's buffer and then discarded (its generation
    retry overwrote them): never output, never key, not counted."""
    key = sum(n for k, n in found.items() if k.startswith("key@") or k == "batch@state")
    out_state = sum(n for k, n in found.items() if k == "output@state")
    out_all = sum(n for k, n in found.items() if k.startswith("output@"))
    return key, out_state, out_all


__all__ = ["World", "Proc", "Call", "secret_bytes", "STATE_KEY", "STATE_KEY_LEN"]
