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
import ctypes
from dataclasses import dataclass, replace

from unicorn import (UC_ARCH_X86, UC_HOOK_CODE, UC_HOOK_INSN, UC_HOOK_INTR, UC_HOOK_MEM_PROT,
                     UC_HOOK_MEM_UNMAPPED, UC_MEM_FETCH_PROT, UC_MEM_FETCH_UNMAPPED, UC_MEM_READ_PROT,
                     UC_MEM_READ_UNMAPPED, UC_MEM_WRITE_PROT, UC_MEM_WRITE_UNMAPPED, UC_MODE_64, Uc)
from unicorn import x86_const as X
from unicorn.unicorn_py3 import unicorn as _ucmod

from emulator import fixups
from emulator.blockhook import BlockRecorder
from emulator.cpu import enter_user_mode
from emulator.cycles.blocks import BlockCache
from emulator.errors import EmulationError
from emulator.instrument import InsnHook, effective_address, has_multi_piece_store, hooks_for
from emulator.kernel import Kernel
from emulator.mmu import Mmu
from emulator.records import DEFAULT_LIVELOCK, CallContext, PendingFault
from emulator.trace import Trace, TraceEvent
from mm.flags import PAGE_SIZE
from mm.mm_struct import MM

CHUNK = 1 << 16                 # blocks recorded per run (the native hook's buffer)
# Journal window at the end of a writable page.  A split store is one access of
# at most 16 bytes (movups, cmpxchg16b, maskmovdqu; Unicorn may split a 16-byte
# store into 8-byte halves, the first wholly before the page end), so 16 bytes
# catch it.  Multi-piece stores (fxsave/xsave: 512 bytes written piecewise,
# enter with nesting) commit whole pieces before the faulting one: the window
# grows to 512 bytes when first sight meets one (emulator/instrument.py).
TAIL = 16
TAIL_MULTI_PIECE = 512

_ACCESS = {
    UC_MEM_READ_PROT: "read", UC_MEM_READ_UNMAPPED: "read",
    UC_MEM_WRITE_PROT: "write", UC_MEM_WRITE_UNMAPPED: "write",
    UC_MEM_FETCH_PROT: "exec", UC_MEM_FETCH_UNMAPPED: "exec",
}

GPRS = ["RAX", "RBX", "RCX", "RDX", "RSI", "RDI", "RBP", "RSP", "R8", "R9", "R10", "R11",
        "R12", "R13", "R14", "R15", "RIP", "RFLAGS", "FS_BASE", "GS_BASE"]
GPR_IDS = [getattr(X, f"UC_X86_REG_{r}") for r in GPRS]
XMM_IDS = [getattr(X, f"UC_X86_REG_XMM{i}") for i in range(16)]


class Regs64:
    """Fast access to 64-bit general registers through Unicorn's C API (the
    binding's reg_read/reg_write cost several microseconds each in Python:
    most of a short call's set-up)."""

    def __init__(self, uc):
        self._uch = uc._uch
        self._v = ctypes.c_uint64()
        self._ref = ctypes.byref(self._v)
        self._ids = (ctypes.c_int * 16)()
        self._vals = (ctypes.c_uint64 * 16)()
        base = ctypes.addressof(self._vals)
        self._ptrs = (ctypes.c_void_p * 16)(*[base + 8 * k for k in range(16)])

    def read(self, reg_id: int) -> int:
        _ucmod.uclib.uc_reg_read(self._uch, reg_id, self._ref)
        return self._v.value

    def write(self, pairs: list[tuple[int, int]]) -> None:
        n = len(pairs)
        for k, (r, v) in enumerate(pairs):
            self._ids[k] = r
            self._vals[k] = v & 0xFFFF_FFFF_FFFF_FFFF
        _ucmod.uclib.uc_reg_write_batch(self._uch, self._ids, self._ptrs, n)


@dataclass
class PendingSyscall:
    rip: int


@dataclass
class PendingException:
    """A CPU exception the task raised (UC_HOOK_INTR, or an instruction hook)."""
    trapno: int
    rip: int
    why: str = ""


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
        enter_user_mode(self.uc)
        self.regs64 = Regs64(self.uc)
        self.recorder = BlockRecorder(self.uc, CHUNK)
        self.blocks = BlockCache(self._read_code, kernel.profile)
        self.mmu = Mmu(self.uc, mm, kernel.special_mappings(), TAIL,
                       lambda: self.recorder.count, self.forget_code)
        # Why the CPU last stopped (filled by the hooks below, read by entry.py).
        self.fault: PendingFault | None = None
        self.fault_cpu = None              # CPU context at the first invalid access of a run
        self.syscall: PendingSyscall | None = None
        self.hook_error: BaseException | None = None
        self.exception: PendingException | None = None
        self.readahead_exit: int | None = None
        self.saved_flags: dict[int, int] = {}   # rip -> RFLAGS as an instruction hook fired there
        self.pending_fixup: fixups.Pending | None = None   # an instruction Unicorn gets wrong, running
        self.insn_hooks: dict[int, InsnHook] = {}
        self._tool_hooks: dict[int, int] = {}     # hook handle -> address (hook_code)
        self._insn_hook_handles: dict[int, int] = {}
        self._summary: dict[int, tuple[int, float, bool]] = {}
        self._summary_of = self.blocks
        self.children: list[Task] = []
        self.killed = False
        self.uc.hook_add(UC_HOOK_MEM_PROT | UC_HOOK_MEM_UNMAPPED, self._on_invalid)
        self.uc.hook_add(UC_HOOK_INSN, self._on_syscall, None, 1, 0, X.UC_X86_INS_SYSCALL)
        self.uc.hook_add(UC_HOOK_INTR, self._on_interrupt)
        self.mmu.sync_all()

    @property
    def block_summary(self) -> dict[int, tuple[int, float, bool]]:
        """entry -> (instructions, cost, must be accounted in order), derived from
        self.blocks (tools may swap in a shared BlockCache)."""
        if self._summary_of is not self.blocks:
            self._summary, self._summary_of = {}, self.blocks
        return self._summary

    # ------------------------------------------------------------------ memory
    @property
    def tail(self) -> int:
        return self.mmu.tail

    def sync(self, extra: list[tuple[int, int]] | None = None) -> None:
        """Bring Unicorn's mappings in line with mm's page tables (extra: more
        [start, end) ranges to look at)."""
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

    def _on_interrupt(self, uc, intno, user_data) -> None:
        """A CPU exception or `int n` at CPL 3: the task stops; entry.py turns it
        into the signal Linux delivers (emulator/traps.py)."""
        try:
            if self.exception is None:
                self.exception = PendingException(intno, uc.reg_read(X.UC_X86_REG_RIP))
            uc.emu_stop()
        except BaseException as e:
            self.hook_error = e

    def _on_insn_hook(self, uc, address, size, ih: InsnHook) -> None:
        try:
            if ih.fence and self.fault is not None:     # the helper store before us faulted
                uc.emu_stop()
                return
            if ih.first and not self._first_of_run(address):
                # Run it first in an emulation run, where Unicorn's lazy flags are
                # exact whatever the hooks do (emulator/instrument.py): stop, resume.
                uc.emu_stop()
                return
            if self.pending_fixup is not None and fixups.finish(self, uc, address):
                return                                  # the instruction before completed: fixed at the stop
            # Any code hook on an instruction that faults makes Unicorn unwind to
            # stale lazy flags: keep the true ones (read right in a code hook).
            self.saved_flags[address] = uc.reg_read(X.UC_X86_REG_RFLAGS)
            if ih.kind == "raise" or (ih.kind == "align16" and effective_address(self.read_reg_by_name, ih.mem) % 16):
                self.exception = PendingException(ih.trapno, address, ih.why)
                uc.emu_stop()
            elif ih.kind == "raise_after":          # a trap: it reports the next instruction
                self.exception = PendingException(ih.trapno, address + ih.length, ih.why)
                uc.emu_stop()
            elif ih.fixup is not None:
                fixups.start(self, uc, ih.fixup)    # what Unicorn will get wrong, put right at the next one
        except BaseException as e:
            self.hook_error = e

    def _first_of_run(self, address: int) -> bool:
        """Whether the instruction at address is the first this run executes
        (the run's first block starts there and is the only one entered)."""
        rec = self.recorder
        return rec.count == 1 and rec.entries()[0] & 0xFFFF_FFFF_FFFF == address

    def forget_code(self, lo: int, hi: int) -> None:
        """Code in [lo, hi) was unmapped or replaced: forget its blocks and
        remove the instruction hooks learned there (new code at the same
        addresses is met afresh)."""
        self.recorder.forget(lo - PAGE_SIZE, hi)      # a TB may start on the page before
        self.blocks.forget(lo - PAGE_SIZE, hi)
        self._summary = {}
        for addr in [a for a in self.insn_hooks if lo <= a < hi]:
            del self.insn_hooks[addr]
            self.uc.hook_del(self._insn_hook_handles.pop(addr))
            self.saved_flags.pop(addr, None)

    # ------------------------------------------------------------------ code hooks for tools
    def hook_code(self, addr: int, callback) -> int:
        """A code hook on one instruction, for a tool that asked for it (a
        breakpoint): callback(task, address) runs before the instruction.

        The hook makes Unicorn unwind to stale lazy flags if that instruction
        faults, so RFLAGS are saved as it fires and the run loop puts them back.
        Blocks already translated would not call a new hook (and keep calling a
        deleted one): they are dropped from Unicorn's cache both ways."""
        def fire(uc, address, size, user_data):
            try:
                self.saved_flags[address] = uc.reg_read(X.UC_X86_REG_RFLAGS)
                callback(self, address)
            except BaseException as e:     # Unicorn swallows exceptions raised in hooks
                self.hook_error = e
        h = self.uc.hook_add(UC_HOOK_CODE, fire, None, addr, addr)
        self._tool_hooks[h] = addr
        self.uc.ctl_remove_cache(addr, addr + 1)
        return h

    def unhook_code(self, h: int) -> None:
        addr = self._tool_hooks.pop(h)
        self.uc.hook_del(h)
        self.uc.ctl_remove_cache(addr, addr + 1)
        if addr not in self.insn_hooks and addr not in self._tool_hooks.values():
            self.saved_flags.pop(addr, None)

    def read_reg_by_name(self, name: str) -> int:
        """A register by its capstone name (rax, r8d, fs_base...)."""
        return self.uc.reg_read(getattr(X, f"UC_X86_REG_{name.upper()}"))

    # ------------------------------------------------------------------ first sight of a block
    def instrument(self, addr: int, size: int) -> bool:
        """Install the instruction hooks a block needs (emulator/instrument.py)
        before it first runs; True when the block's translation must be redone."""
        added = False
        code = self._read_code(addr, size)
        if has_multi_piece_store(code, addr):
            self.mmu.widen_tail(TAIL_MULTI_PIECE)
        for ih in hooks_for(code, addr):
            old = self.insn_hooks.get(ih.address)
            if old is not None:
                # A fence comes from the instruction before, which another block may have shown;
                # past this block, the block that holds the address decides the rest.
                inside = addr <= ih.address < addr + size
                ih = replace(ih if inside else old, fence=ih.fence or old.fence)
                if ih == old:
                    continue
                self.uc.hook_del(self._insn_hook_handles.pop(ih.address))
            self.insn_hooks[ih.address] = ih
            self._insn_hook_handles[ih.address] = self.uc.hook_add(UC_HOOK_CODE, self._on_insn_hook, ih,
                                                                   ih.address, ih.address)
            if not addr <= ih.address < addr + size:
                # Where the block's last instruction completes: that block may be translated already.
                self.uc.ctl_remove_cache(ih.address, ih.address + 1)
            added = True
        if added:
            # The TB was translated before we saw it: translate it again with the hooks.
            self.uc.ctl_remove_cache(addr, addr + size)
        return added

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
        """The whole CPU state (fork): general, segment-base, x87, SSE and
        control state, and the privilege level, as one Unicorn context."""
        self.uc.context_restore(other.uc.context_save())

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

    def force_sig(self, ctx: CallContext, info, detail: str) -> None:
        """force_sig_fault(): a synchronous signal for this task.  A task with no
        handler for it dies of it, so the call ends with outcome "signal"
        (a process with signal handlers overrides this to deliver it)."""
        ctx.result.signal = info
        self.finish(ctx, "signal", detail)

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
