"""Run sequences in a Machine: the side under test.

The code page is an anonymous mapping of the emulated process (written, then
made PROT_READ|PROT_EXEC), the data pages are mm mappings put in the kernel
state each sequence asks for (layout.PAGE_STATES): that is what makes the
emulated CPU fault and the emulator's fault path restart the instruction.
The sequence ends with a jump to the kernel's return sentinel, so
`Machine.run` ends with outcome "returned" unless a signal ends it first.

One Machine serves many sequences (a fresh one costs tens of milliseconds):
each sequence unmaps the previous one's code and data (which also drops the
translated blocks of the code page) and resets every register it reads.
Every `recycle` sequences the Machine is replaced, so that nothing a sequence
leaves in the engine can build up.
"""
from __future__ import annotations

from unicorn import x86_const as X

from emulator.diffcheck.layout import (CODE_ADDR, CODE_SIZE, DATA_ADDR, DATA_SIZE, GPRS, HAS_CONTENT, PAGE,
                                       data_page)
from emulator.diffcheck.records import Fault, RunState, Sequence, Signal
from emulator.errors import FaultpathError
from emulator.kernel import SENTINEL_PAGE, Kernel
from emulator.machine import Machine
from emulator.records import CallContext, CallResult
from mm import flags as F
from vdso.image import RNG_DATA_OFFSET_6_15, VdsoImage

BUDGET = 100_000                 # instructions per sequence; a sequence needs a few dozen
_RESUMED = ("mapped", "zero-page", "cow", "reuse", "swap-in", "retry", "retry-oom")
_PRIVATE = F.MAP_PRIVATE | F.MAP_ANONYMOUS | F.MAP_FIXED
_RW = F.PROT_READ | F.PROT_WRITE


def _placeholder_image() -> VdsoImage:
    """The kernel needs a vDSO; the sequences do not call it."""
    return VdsoImage(name="diffcheck", text=b"\xcc" * PAGE, symbols={"__vdso_getrandom": 0},
                     rng_data_offset=RNG_DATA_OFFSET_6_15, rng_data_source="diffcheck")


class EmulatedRunner:
    def __init__(self, recycle: int = 400, livelock_limit: int = 64):
        self.recycle = recycle
        self.livelock_limit = livelock_limit
        self.m: Machine | None = None
        self._runs = 0

    def _machine(self, fresh: bool) -> Machine:
        if self.m is None or self._runs >= self.recycle or fresh:
            if self.m is not None:
                self.m.close()
            kernel = Kernel(_placeholder_image(), memory_pages=512)
            self.m = Machine(kernel, livelock_limit=self.livelock_limit)
            self._runs = 0
        self._runs += 1
        return self.m

    def close(self) -> None:
        if self.m is not None:
            self.m.close()
            self.m = None

    def run(self, seq: Sequence, fresh: bool = False) -> RunState:
        """Run one sequence; `fresh`: in a new Machine (for instructions that
        may leave the engine's CPU in a state no user task can reach, such as
        a privileged instruction Unicorn executes instead of refusing)."""
        m = self._machine(fresh)
        child, snap = None, None
        try:
            child, snap = self._load(m, seq)
            ctx = CallContext(result=CallResult(size=0, process=m.name), rip=CODE_ADDR, budget=BUDGET)
            try:
                m.run(ctx)
            except FaultpathError as e:
                return _error_state(seq, f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")
            return self._capture(m, seq, ctx)
        finally:
            if snap is not None:
                snap.mm.release()
            if child is not None:
                child.exit_mmap()
            m.mm.munmap(CODE_ADDR, CODE_SIZE)
            m.mm.munmap(DATA_ADDR, DATA_SIZE)
            m.sync()

    # ------------------------------------------------------------------ set-up
    def _load(self, m: Machine, seq: Sequence):
        mm = m.mm
        code = bytearray(seq.code) + b"\xcc" * (CODE_SIZE - len(seq.code))
        code[seq.exit_slot:seq.exit_slot + 8] = SENTINEL_PAGE.to_bytes(8, "little")
        _check(mm.mmap(CODE_ADDR, CODE_SIZE, _RW, _PRIVATE, -1, 0), "mmap code")
        _check(mm.poke(CODE_ADDR, bytes(code)) - len(code), "write code")
        _check(mm.mprotect(CODE_ADDR, CODE_SIZE, F.PROT_READ | F.PROT_EXEC), "mprotect code")
        # fork() write-protects every private page the parent has, and a
        # Machine snapshot every page: the pages meant to be COW-shared (or
        # snapshot-protected) are populated first, then the others, so that a
        # present page stays writable as it is natively.
        child = snap = None
        for group in (("cow",), ("snapshot",), ("present", "readonly", "zero-page", "first-touch", "dropped")):
            for i, state in enumerate(seq.pages):
                if state in group:
                    self._map_page(m, i, state, seq.content[i])
            if group == ("cow",) and "cow" in seq.pages:
                child = mm.dup_mm()             # fork(): the parent's private pages become COW-shared
                if isinstance(child, int):
                    raise FaultpathError(f"dup_mm failed: errno {-child}")
            if group == ("snapshot",) and "snapshot" in seq.pages:
                m.sync()
                snap = m.snapshot()
        if "dropped" in seq.pages:
            mm.drop_droppable()                 # reclaim: the written pages are discarded
        m.sync()
        self._set_cpu(m, seq)
        return child, snap

    def _map_page(self, m: Machine, i: int, state: str, content: bytes | None) -> None:
        mm = m.mm
        addr = data_page(i)
        flags = (F.MAP_DROPPABLE | F.MAP_ANONYMOUS | F.MAP_FIXED) if state == "dropped" else _PRIVATE
        _check(mm.mmap(addr, PAGE, _RW, flags, -1, 0), f"mmap data page {i} ({state})")
        if state in HAS_CONTENT or state == "dropped":
            _check(mm.poke(addr, content or bytes(PAGE)) - PAGE, f"write data page {i}")
        if state == "zero-page":
            res = mm.handle_mm_fault(mm.find_vma(addr), addr, F.FAULT_FLAG_USER)     # a read: the zero page
            _check(-1 if res.bits & F.VM_FAULT_ERROR else 0, f"read fault on data page {i}")
        if state == "readonly":
            _check(mm.mprotect(addr, PAGE, F.PROT_READ), f"mprotect data page {i}")

    def _set_cpu(self, m: Machine, seq: Sequence) -> None:
        uc = m.uc
        # One batch for everything up to 64 bits (the binding's reg_write costs
        # microseconds a register): general registers, flags, bases, rip,
        # MXCSR, and the x87 unit as the native harness leaves it (fninit:
        # control word 0x37f, status and last-instruction pointers 0; emms:
        # every tag empty).
        pairs = [(getattr(X, f"UC_X86_REG_{r.upper()}"), seq.regs.get(r, 0)) for r in GPRS]
        pairs += [(X.UC_X86_REG_RFLAGS, seq.regs.get("rflags", 0x202)), (X.UC_X86_REG_FS_BASE, seq.regs.get("fs_base", 0)),
                  (X.UC_X86_REG_GS_BASE, seq.regs.get("gs_base", 0)), (X.UC_X86_REG_RIP, CODE_ADDR),
                  (X.UC_X86_REG_MXCSR, seq.mxcsr), (X.UC_X86_REG_FPCW, 0x37F), (X.UC_X86_REG_FPSW, 0),
                  (X.UC_X86_REG_FIP, 0), (X.UC_X86_REG_FCS, 0), (X.UC_X86_REG_FDP, 0), (X.UC_X86_REG_FDS, 0)]
        for k in range(0, len(pairs), 16):
            m.regs64.write(pairs[k:k + 16])
        uc.reg_write(X.UC_X86_REG_FOP, 0)
        for i, x in enumerate(seq.xmm):
            uc.reg_write(X.UC_X86_REG_XMM0 + i, x)
        # An MMX register is an x87 register with exponent 0xffff.
        for i, x in enumerate(seq.mm):
            uc.reg_write(X.UC_X86_REG_FP0 + i, (x, 0xFFFF))
        uc.reg_write(X.UC_X86_REG_FPTAG, 0xFFFF)

    # ------------------------------------------------------------------ result
    def _capture(self, m: Machine, seq: Sequence, ctx: CallContext) -> RunState:
        res = ctx.result
        gprs = {r: m.reg(r) for r in GPRS}
        pages = [m.read(data_page(i), PAGE) for i in range(len(seq.pages))]
        faults = [Fault(rip=f.rip, address=f.address, access=f.access, error_code=f.error_code & 0x1F)
                  for f in res.faults if f.user and f.decision in _RESUMED
                  for _ in range(f.repeats)]
        return RunState(gprs=gprs, rflags=m.reg("rflags"), xmm=m.xmm(), mxcsr=m.reg("mxcsr"), pages=pages,
                        faults=faults, signal=_ending(m, res))


def _ending(m: Machine, res: CallResult) -> Signal | None:
    """How the call ended, as a Signal (None: it reached the sentinel)."""
    if res.outcome == "returned":
        return None
    if res.outcome != "signal":
        return Signal(name=res.outcome, rip=m.reg("rip"))
    info = getattr(res, "signal", None)       # the SignalInfo record, where the core keeps one
    if info is not None:
        return Signal(name=info.signal, si_code=info.si_code, address=info.si_addr, rip=info.rip,
                      trapno=getattr(info, "trapno", None))
    # No signal record: the name from the outcome, the address from the fault
    # that raised it (if a page fault did); the si_code is unknown.
    name = res.outcome_detail.split()[0] if res.outcome_detail else "signal"
    last = res.faults[-1] if res.faults and res.faults[-1].decision in ("sigsegv", "sigbus") else None
    if last is not None:
        return Signal(name=name, address=last.address, rip=last.rip)
    return Signal(name=name, rip=m.reg("rip"))


def _error_state(seq: Sequence, error: str) -> RunState:
    return RunState(gprs={}, rflags=0, xmm=[], mxcsr=0, pages=[], faults=[], error=error)


def _check(r: int, what: str) -> None:
    if r < 0:
        raise FaultpathError(f"diffcheck: {what} failed in the emulated mm (errno {-r})")
