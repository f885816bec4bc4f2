"""One emulated task: a Unicorn CPU, an mm, the CPU's view of that mm, a trace.

This is the state the arch code works on (task_struct plus its thread's
registers): the fault entry, usercopy, the syscall layer and injection all take
a Task.  Running calls is not its business; emulator/machine.py adds that on
top, so that none of those modules needs the run loop to exist.

The Unicorn hooks installed here only *record* why the CPU stopped (an invalid
access, a `syscall`): what that means is decided by the run loop
(emulator/entry.py) and the handlers it calls.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from functools import lru_cache

from unicorn import (UC_ARCH_X86, UC_HOOK_CODE, UC_HOOK_INSN, UC_HOOK_MEM_PROT, UC_HOOK_MEM_UNMAPPED,
                     UC_MEM_FETCH_PROT, UC_MEM_FETCH_UNMAPPED, UC_MEM_READ_PROT, UC_MEM_READ_UNMAPPED,
                     UC_MEM_WRITE_PROT, UC_MEM_WRITE_UNMAPPED, UC_MODE_64, Uc)
from unicorn import x86_const as X

from emulator.blockhook import BlockRecorder
from emulator.cycles.blocks import BlockCache
from emulator.errors import EmulationError
from emulator.kernel import Kernel
from emulator.mmu import Mmu
from emulator.records import DEFAULT_LIVELOCK, CallContext, PendingFault
from emulator.trace import Trace, TraceEvent
from mm.mm_struct import MM
from vdso.insn import reachable_insns

CHUNK = 1 << 16                 # instructions per count-bounded run (= block buffer capacity)
# Journal window at the end of a writable page.  A split store is one access of
# at most 16 bytes (movups, cmpxchg16b, maskmovdqu; Unicorn may split a 16-byte
# store into 8-byte halves, the first wholly before the page end), so 16 bytes
# catch it.  Multi-piece stores (fxsave/xsave: 512 bytes written piecewise,
# enter with nesting) commit whole pieces before the faulting one, so images
# holding them get the 512-byte window.
TAIL = 16
TAIL_MULTI_PIECE = 512
MULTI_PIECE_STORES = {"fxsave", "fxsave64", "xsave", "xsave64", "xsaveopt", "xsaveopt64", "xsavec",
                      "xsavec64", "xsaves", "xsaves64", "enter", "fnsave", "fsave", "fnstenv", "fstenv"}

_ACCESS = {
    UC_MEM_READ_PROT: "read", UC_MEM_READ_UNMAPPED: "read",
    UC_MEM_WRITE_PROT: "write", UC_MEM_WRITE_UNMAPPED: "write",
    UC_MEM_FETCH_PROT: "exec", UC_MEM_FETCH_UNMAPPED: "exec",
}

GPRS = ["RAX", "RBX", "RCX", "RDX", "RSI", "RDI", "RBP", "RSP", "R8", "R9", "R10", "R11",
        "R12", "R13", "R14", "R15", "RIP", "RFLAGS", "FS_BASE", "GS_BASE"]
GPR_IDS = [getattr(X, f"UC_X86_REG_{r}") for r in GPRS]
XMM_IDS = [getattr(X, f"UC_X86_REG_XMM{i}") for i in range(16)]


@lru_cache(maxsize=64)
def _code_insns(text: bytes, entries: tuple[int, ...]) -> tuple[tuple[int, str, str], ...]:
    """(offset, mnemonic, operands) of the instructions reachable from the
    image's symbols (recursive descent: an ELF vDSO's headers and data are not
    code, and a linear sweep over them finds fxsave or rcl where there is none)."""
    insns = reachable_insns(text, 0, list(entries))
    return tuple((a, i.mnemonic, i.op_str) for a, i in sorted(insns.items()))


def _image_code(image) -> tuple[tuple[int, str, str], ...]:
    return _code_insns(bytes(image.text), tuple(sorted(set(image.symbols.values()))))


def _tail_window(image) -> int:
    if any(m in MULTI_PIECE_STORES for _, m, _ in _image_code(image)):
        return TAIL_MULTI_PIECE
    return TAIL


def _flag_clobbering_stores(image) -> list[int]:
    """rcl/rcr with a memory destination: Unicorn 2.1.4 updates CF/OF before the
    store faults, so their RFLAGS are saved before they run (measured by skipcheck)."""
    return [off for off, m, ops in _image_code(image) if m in ("rcl", "rcr") and "ptr" in ops.split(",")[0]]


@dataclass
class PendingSyscall:
    rip: int


class Task:
    """A process: owns its Unicorn instance, its mm and its trace."""

    def __init__(self, kernel: Kernel, mm: MM | None = None, *, droppable_oom: str = "skip",
                 livelock_limit: int = DEFAULT_LIVELOCK, rlimit_memlock: int | None = None,
                 name: str = "parent"):
        self.kernel = kernel
        self.name = name
        if mm is None:
            kw = {} if rlimit_memlock is None else {"rlimit_memlock": rlimit_memlock}
            mm = MM(kernel.phys, droppable_oom=droppable_oom, **kw)
        self.mm = mm
        self.trace = Trace()
        self.livelock_limit = livelock_limit
        self.uc = Uc(UC_ARCH_X86, UC_MODE_64)
        self.recorder = BlockRecorder(self.uc, CHUNK)
        self.blocks = BlockCache(self._read_code, kernel.profile)
        self.mmu = Mmu(self.uc, mm, kernel.special_mappings(), _tail_window(kernel.image),
                       lambda: self.recorder.count)
        # Why the CPU last stopped (filled by the hooks below, read by entry.py).
        self.fault: PendingFault | None = None
        self.fault_cpu = None              # CPU context at the first invalid access of a run
        self.syscall: PendingSyscall | None = None
        self.hook_error: BaseException | None = None
        self.readahead_exit: int | None = None
        self.saved_flags: dict[int, int] = {}   # rip -> RFLAGS before an rcl/rcr on memory
        for off in _flag_clobbering_stores(kernel.image):
            # Only these few instructions get a code hook: not the default path.
            self.uc.hook_add(UC_HOOK_CODE, self._save_flags, None, kernel.image.base + off,
                             kernel.image.base + off)
        self.children: list[Task] = []
        self.killed = False
        self.uc.hook_add(UC_HOOK_MEM_PROT | UC_HOOK_MEM_UNMAPPED, self._on_invalid)
        self.uc.hook_add(UC_HOOK_INSN, self._on_syscall, None, 1, 0, X.UC_X86_INS_SYSCALL)
        self.uc.reg_write(X.UC_X86_REG_MXCSR, 0x1F80)   # the CPU's reset value (Unicorn starts at 0)
        self.sync()

    # ------------------------------------------------------------------ memory
    @property
    def tail(self) -> int:
        return self.mmu.tail

    def sync(self, extra: set[int] | None = None) -> None:
        """Bring Unicorn's mappings in line with mm's page tables."""
        self.mmu.sync(extra)

    def sync_range(self, start: int, length: int) -> None:
        self.mmu.sync_range(start, length)

    def special_at(self, addr: int) -> str | None:
        return self.mmu.special_at(addr)

    def read(self, addr: int, n: int) -> bytes:
        """Peek at guest memory without faulting (not-present reads as zeros)."""
        return self.mmu.read(addr, n)

    def undo_partial_store(self, rip: int) -> int:
        return self.mmu.undo_partial_store(rip)

    def replace_mm(self, mm: MM, name: str) -> None:
        """Reuse this task (its Unicorn and translated blocks) for another mm."""
        self.mm = mm
        self.name = name
        self.trace = Trace()
        self.children = []
        self.killed = False
        self.mmu.replace_mm(mm)

    def _read_code(self, addr: int, size: int) -> bytes:
        return bytes(self.uc.mem_read(addr, size))

    # ------------------------------------------------------------------ hooks: why the CPU stopped
    def _on_invalid(self, uc, access, address, size, value, user_data) -> bool:
        try:
            if self.fault is None:
                self.fault = PendingFault(_ACCESS.get(access, "read"), address, size)
                self.fault_cpu = (uc.reg_read(X.UC_X86_REG_RIP), uc.reg_read(X.UC_X86_REG_RFLAGS),
                                  uc.context_save())
        except BaseException as e:  # Unicorn swallows exceptions raised in hooks
            self.hook_error = e
        return False

    def _save_flags(self, uc, address, size, user_data) -> None:
        try:
            self.saved_flags[address] = uc.reg_read(X.UC_X86_REG_RFLAGS)
        except BaseException as e:
            self.hook_error = e

    def _on_syscall(self, uc, user_data) -> None:
        try:
            self.syscall = PendingSyscall(uc.reg_read(X.UC_X86_REG_RIP))
            uc.emu_stop()
        except BaseException as e:
            self.hook_error = e

    # ------------------------------------------------------------------ registers
    def reg(self, name: str) -> int:
        return self.uc.reg_read(getattr(X, f"UC_X86_REG_{name.upper()}"))

    def set_reg(self, name: str, value: int) -> None:
        self.uc.reg_write(getattr(X, f"UC_X86_REG_{name.upper()}"), value)

    def regs(self) -> dict[str, int]:
        return {n: self.uc.reg_read(i) for n, i in zip(GPRS, GPR_IDS)}

    def xmm(self) -> list[int]:
        return [self.uc.reg_read(i) for i in XMM_IDS]

    def copy_cpu_from(self, other: "Task") -> None:
        for i in GPR_IDS + XMM_IDS:
            self.uc.reg_write(i, other.uc.reg_read(i))
        self.uc.reg_write(X.UC_X86_REG_MXCSR, other.uc.reg_read(X.UC_X86_REG_MXCSR))

    # ------------------------------------------------------------------ the call's bookkeeping
    def charge(self, ctx: CallContext, kind: str, rip: int, detail: dict | None = None,
               cycles: float | None = None) -> TraceEvent:
        c = self.kernel.profile.event_cost(kind) if cycles is None else cycles
        ctx.cycles += c
        return self.trace.emit(TraceEvent(ctx.index, rip, kind, detail or {}, c))

    def finish(self, ctx: CallContext, outcome: str, detail: str = "") -> None:
        ctx.done = True
        ctx.result.outcome = outcome
        ctx.result.outcome_detail = detail
        ctx.result.instructions = ctx.index
        ctx.result.cycles = ctx.cycles

    def page_fault(self, ctx: CallContext, address: int, access: str, rip: int, what: str):
        """A kernel-mode access to a user address faulted (the uaccess trap):
        emulator/machine.py routes it to the x86 fault entry."""
        raise NotImplementedError

    # ------------------------------------------------------------------ fork
    def fork(self, name: str = "child") -> "Task":
        """dup_mm() plus a copy of the CPU: the child continues where we are."""
        child_mm = self.mm.dup_mm()
        if isinstance(child_mm, int):       # -ENOMEM: strict overcommit, or no pages for the child
            raise EmulationError(f"fork: dup_mm failed with errno {-child_mm}")
        child = self._spawn(child_mm, name)
        child.copy_cpu_from(self)
        self.sync()     # dup_mm write-protected our pages (COW)
        self.children.append(child)
        return child

    def _spawn(self, mm: MM, name: str) -> "Task":
        """A task of our own kind around a duplicated mm."""
        return type(self)(self.kernel, mm, livelock_limit=self.livelock_limit, name=name)

    def close(self) -> None:
        self.recorder.close()

    # ------------------------------------------------------------------ snapshots
    def snapshot(self, ctx: CallContext | None = None) -> "TaskSnapshot":
        """Everything needed to come back here: mm (COW-shared frames, cheap),
        CPU registers, the kernel's mutable state and the call in progress."""
        mm_snap = self.mm.snapshot()
        self.sync()          # the snapshot write-protected our pages: Unicorn must see it
        return TaskSnapshot(
            mm=mm_snap,
            cpu=self.uc.context_save(),
            kernel=self.kernel.save_state(),
            ctx=copy.deepcopy(ctx) if ctx is not None else None,
            trace_len=len(self.trace),
            nchildren=len(self.children),
        )

    def restore(self, snap: "TaskSnapshot") -> CallContext | None:
        """Go back to a snapshot; may be done any number of times.  Returns a
        fresh copy of the call context saved with it."""
        self.mm.restore(snap.mm)
        self.uc.context_restore(snap.cpu)
        self.kernel.restore_state(snap.kernel)
        del self.trace.events[snap.trace_len:]
        for child in self.children[snap.nchildren:]:
            if not getattr(child.mm, "dead", False):
                child.mm.exit_mmap()        # free the child's frames: they stay charged otherwise
            child.close()
        del self.children[snap.nchildren:]
        self.killed = False
        self.sync()
        return copy.deepcopy(snap.ctx) if snap.ctx is not None else None


@dataclass
class TaskSnapshot:
    mm: object
    cpu: object
    kernel: dict
    ctx: CallContext | None
    trace_len: int
    nchildren: int
