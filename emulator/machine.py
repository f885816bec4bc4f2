"""One emulated process: a Unicorn CPU, an mm, a trace.

The Machine runs a function under the SysV ABI in count-bounded chunks, with
a native block hook for accounting (no per-instruction Python hook), and
turns every Unicorn stop into what the kernel would do: a page fault goes to
emulator/fault.py (arch/x86/mm/fault.c), a `syscall` to emulator/syscalls.py,
a due injection to emulator/inject.py.

Memory ownership (DESIGN.md): mm owns frames; Unicorn maps present pages
directly onto them (mem_map_ptr), pages of a VMA that are not present are
mapped PROT_NONE so that every fault arrives as a protection fault, and
addresses outside any VMA stay unmapped (SIGSEGV), except guard pages after
writable pages, which keep split stores observable.
"""
from __future__ import annotations

import ctypes
from collections import Counter
from functools import lru_cache
from dataclasses import dataclass, field

from unicorn import (UC_ARCH_X86, UC_HOOK_CODE, UC_HOOK_INSN, UC_HOOK_MEM_PROT, UC_HOOK_MEM_UNMAPPED,
                     UC_HOOK_MEM_WRITE, UC_MEM_FETCH_PROT, UC_MEM_FETCH_UNMAPPED, UC_MEM_READ_PROT,
                     UC_MEM_READ_UNMAPPED, UC_MEM_WRITE_PROT, UC_MEM_WRITE_UNMAPPED, UC_MODE_64,
                     UC_PROT_EXEC, UC_PROT_NONE, UC_PROT_READ, UC_PROT_WRITE, Uc, UcError)
from unicorn import x86_const as X

from emulator.blockhook import BlockRecorder
from emulator.cycles.blocks import BlockCache
from emulator.errors import EmulationError, UnfaithfulInstruction
from emulator.kernel import SENTINEL_PAGE, Kernel
from emulator.records import CallResult
from emulator.trace import Trace, TraceEvent
from mm import flags as F
from mm.mm_struct import MM
from vdso.image import PAGE_SIZE

PAGE_MASK = ~(PAGE_SIZE - 1)
STACK_TOP = 0x7FFF_FFFF_0000
STACK_SIZE = 64 * 1024
CHUNK = 1 << 16                 # instructions per count-bounded run (= block buffer capacity)
DEFAULT_BUDGET = 50_000_000     # instructions per call before the outcome is "budget"
DEFAULT_LIVELOCK = 1000         # faults at one instruction without progress before "livelock"
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
    from vdso.insn import reachable_insns
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
class PendingFault:
    access: str
    address: int
    size: int
    restored: int = 0      # bytes of a split store rolled back at the stop (precise exception)


@dataclass
class PendingSyscall:
    rip: int


@dataclass
class Injection:
    at: int          # instruction index within the call
    kind: str        # drop, oom, oom-off, oom:K, fork, reseed, not-ready, ready

    def __str__(self) -> str:
        return f"{self.kind}@{self.at}"


@dataclass
class CallContext:
    """Per-call state of the run loop."""
    result: CallResult
    rip: int
    budget: int
    injections: list[Injection] = field(default_factory=list)
    index: int = 0               # architectural instructions retired so far
    cycles: float = 0.0
    rep_open: int | None = None  # address of a rep-string insn whose iterations are in flight
    last_fault_key: tuple | None = None
    refaults: int = 0
    done: bool = False
    stop_on_fault: bool = False  # stepper: stop *before* handling a fault
    pending_fault: tuple | None = None   # (PendingFault, rip) when stopped at a fault
    stop_requested: bool = False  # a hook (breakpoint, Ctrl-C) asks the run loop to return


@dataclass
class _Mapping:
    kind: str            # frame | none | guard | special
    frame: object        # mm Frame (or bytearray for specials) kept alive while mapped
    perms: int
    buf: object = None   # the ctypes view whose address Unicorn holds


class Machine:
    """A process: owns its Unicorn instance, its mm and its trace."""

    def __init__(self, kernel: Kernel, mm: MM | None = None, *, droppable_oom: str = "skip",
                 livelock_limit: int = DEFAULT_LIVELOCK, rlimit_memlock: int | None = None,
                 name: str = "parent", _stack: bool = True):
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
        self._mapped: dict[int, _Mapping] = {}
        self._tail_hooks: dict[int, int] = {}
        self._none_page = bytearray(PAGE_SIZE)      # backing for PROT_NONE pages (never accessible)
        self._fault: PendingFault | None = None
        self._syscall: PendingSyscall | None = None
        self._hook_error: BaseException | None = None
        self._journal: list[tuple[int, int, int, bytes]] = []   # (block seq, rip, addr, old bytes)
        self._fault_cpu = None              # CPU context at the first invalid access of a run
        self._readahead_exit: int | None = None
        self._saved_flags: dict[int, int] = {}   # rip -> RFLAGS before an rcl/rcr on memory
        self.tail = _tail_window(kernel.image)
        for off in _flag_clobbering_stores(kernel.image):
            # Only these few instructions get a code hook: not the default path.
            self.uc.hook_add(UC_HOOK_CODE, self._save_flags, None, kernel.image.base + off,
                             kernel.image.base + off)
        self.children: list[Machine] = []
        self.killed = False
        self.uc.hook_add(UC_HOOK_MEM_PROT | UC_HOOK_MEM_UNMAPPED, self._on_invalid)
        self.uc.hook_add(UC_HOOK_INSN, self._on_syscall, None, 1, 0, X.UC_X86_INS_SYSCALL)
        for name_, start, backing, perms in kernel.special_mappings():
            self._map_special(start, backing, perms)
        self.uc.reg_write(X.UC_X86_REG_MXCSR, 0x1F80)   # the CPU's reset value (Unicorn starts at 0)
        if _stack:
            r = self.mm.mmap(STACK_TOP - STACK_SIZE, STACK_SIZE, F.PROT_READ | F.PROT_WRITE,
                             F.MAP_PRIVATE | F.MAP_ANONYMOUS | F.MAP_FIXED)
            if r < 0:
                raise EmulationError(f"cannot map the stack: errno {-r}")
            self.sync()
            # The caller's own frame is live before any call (libc touched it).
            self.user_write(STACK_TOP - PAGE_SIZE, bytes(8))
        self.sync()

    # ------------------------------------------------------------------ memory
    def _map_special(self, start: int, backing: bytearray, perms: str) -> None:
        p = UC_PROT_READ | (UC_PROT_EXEC if "x" in perms else 0)
        buf = (ctypes.c_char * len(backing)).from_buffer(backing)
        self.uc.mem_map_ptr(start, len(backing), p, ctypes.addressof(buf))
        for off in range(0, len(backing), PAGE_SIZE):
            self._mapped[start + off] = _Mapping("special", backing, p, buf)

    def special_at(self, addr: int) -> str | None:
        for name, start, backing, _ in self.kernel.special_mappings():
            if start <= addr < start + len(backing):
                return name
        return None

    def _desired(self, va: int) -> tuple[str, object, int]:
        vma = self.mm.find_vma(va)
        if vma is None:
            return ("unmapped", None, 0)
        pte = self.mm.pte(va)
        if pte is None or pte.frame is None:
            return ("none", None, UC_PROT_NONE)
        fl = vma.vm_flags
        perms = 0
        if fl & (F.VM_READ | F.VM_WRITE | F.VM_EXEC):
            perms |= UC_PROT_READ        # x86: every present user page is readable
        if fl & F.VM_WRITE and pte.writable:
            perms |= UC_PROT_WRITE
        if fl & F.VM_EXEC:
            perms |= UC_PROT_EXEC
        if not fl & (F.VM_READ | F.VM_WRITE | F.VM_EXEC):
            return ("none", None, UC_PROT_NONE)   # PROT_NONE vma: present page, no access
        return ("frame", pte.frame, perms)

    def _writable(self, va: int) -> bool:
        m = self._mapped.get(va)
        return m is not None and bool(m.perms & UC_PROT_WRITE)

    def _sync_page(self, va: int) -> None:
        cur = self._mapped.get(va)
        if cur is not None and cur.kind == "special":
            return
        kind, frame, perms = self._desired(va)
        if kind == "unmapped" and self._writable(va - PAGE_SIZE):
            kind, perms = "guard", UC_PROT_NONE
        if cur is not None:
            if cur.kind == kind and cur.frame is frame and cur.perms == perms and kind != "frame":
                return
            if kind == "frame" and cur.kind == "frame" and cur.frame is frame:
                if cur.perms != perms:
                    self.uc.mem_protect(va, PAGE_SIZE, perms)
                    cur.perms = perms
                return
            self.uc.mem_unmap(va, PAGE_SIZE)
            del self._mapped[va]
        if kind == "unmapped":
            return
        if kind == "frame":
            data = frame.data
            buf = (ctypes.c_char * PAGE_SIZE).from_buffer(data)
            self.uc.mem_map_ptr(va, PAGE_SIZE, perms, ctypes.addressof(buf))
            self._mapped[va] = _Mapping("frame", frame, perms, buf)
        else:
            buf = (ctypes.c_char * PAGE_SIZE).from_buffer(self._none_page)
            self.uc.mem_map_ptr(va, PAGE_SIZE, UC_PROT_NONE, ctypes.addressof(buf))
            self._mapped[va] = _Mapping(kind, None, UC_PROT_NONE, buf)

    def sync(self, extra: set[int] | None = None) -> None:
        """Bring Unicorn's mappings in line with mm's page tables."""
        changed = set(self.mm.drain_changes())
        if extra:
            changed |= extra
        if not changed and self._mapped:
            return
        if not self._mapped or len(self._mapped) <= len(self.kernel.special_mappings()) * 8:
            changed |= self._all_vma_pages()
        for va in sorted(changed):
            self._sync_page(va)
        # Guards after newly writable pages, tail journals on every writable page
        # whose successor is not writable.
        around = changed | {va - PAGE_SIZE for va in changed} | {va + PAGE_SIZE for va in changed}
        for va in sorted(around):
            if self._writable(va) and (va + PAGE_SIZE) not in self._mapped:
                self._sync_page(va + PAGE_SIZE)
        for va in around:
            want = self._writable(va) and not self._writable(va + PAGE_SIZE)
            have = va in self._tail_hooks
            if want and not have:
                self._tail_hooks[va] = self.uc.hook_add(
                    UC_HOOK_MEM_WRITE, self._on_tail_write, None, va + PAGE_SIZE - self.tail, va + PAGE_SIZE - 1)
            elif have and not want:
                self.uc.hook_del(self._tail_hooks.pop(va))

    def sync_range(self, start: int, length: int) -> None:
        lo = start & PAGE_MASK
        hi = (start + length + PAGE_SIZE - 1) & PAGE_MASK
        self.sync(set(range(lo, hi, PAGE_SIZE)) | set(
            va for va in self._mapped if lo <= va < hi))

    def _all_vma_pages(self) -> set[int]:
        out = set()
        for vma in self.mm.vmas:
            out.update(range(vma.start, vma.end, PAGE_SIZE))
        out.update(va for va, m in self._mapped.items() if m.kind != "special")
        return out

    def _read_code(self, addr: int, size: int) -> bytes:
        return bytes(self.uc.mem_read(addr, size))

    # ------------------------------------------------------------------ hooks
    def _on_invalid(self, uc, access, address, size, value, user_data) -> bool:
        try:
            if self._fault is None:
                self._fault = PendingFault(_ACCESS.get(access, "read"), address, size)
                self._fault_cpu = (uc.reg_read(X.UC_X86_REG_RIP), uc.reg_read(X.UC_X86_REG_RFLAGS),
                                   uc.context_save())
        except BaseException as e:  # swallowed by Unicorn otherwise (DESIGN.md)
            self._hook_error = e
        return False

    def _save_flags(self, uc, address, size, user_data) -> None:
        try:
            self._saved_flags[address] = uc.reg_read(X.UC_X86_REG_RFLAGS)
        except BaseException as e:
            self._hook_error = e

    def _on_syscall(self, uc, user_data) -> None:
        try:
            self._syscall = PendingSyscall(uc.reg_read(X.UC_X86_REG_RIP))
            uc.emu_stop()
        except BaseException as e:
            self._hook_error = e

    def _on_tail_write(self, uc, access, address, size, value, user_data) -> None:
        """Journal what a write near a page end is about to overwrite.

        Unicorn commits the first-page part of a store that straddles into a
        non-writable page, then faults (DESIGN.md).  This hook fires before any
        byte is written; at the fault we put back the bytes of the faulting
        instruction so that no partial write survives."""
        try:
            end = (address & PAGE_MASK) + PAGE_SIZE
            n = min(size, end - address)
            old = bytes(uc.mem_read(address, n))
            self._journal.append((self.recorder.count, uc.reg_read(X.UC_X86_REG_RIP), address, old))
            if len(self._journal) > 256:
                del self._journal[:128]
        except BaseException as e:
            self._hook_error = e

    def undo_partial_store(self, rip: int) -> int:
        """Roll back the bytes the faulting instruction at rip committed in this
        block execution; returns how many bytes were restored."""
        seq = self.recorder.count
        restored = 0
        for entry_seq, entry_rip, addr, old in reversed(self._journal):
            if entry_seq == seq and entry_rip == rip:
                self.uc.mem_write(addr, old)
                restored += len(old)
        return restored

    # ------------------------------------------------------------------ registers
    def reg(self, name: str) -> int:
        return self.uc.reg_read(getattr(X, f"UC_X86_REG_{name.upper()}"))

    def set_reg(self, name: str, value: int) -> None:
        self.uc.reg_write(getattr(X, f"UC_X86_REG_{name.upper()}"), value)

    def regs(self) -> dict[str, int]:
        return {n: self.uc.reg_read(i) for n, i in zip(GPRS, GPR_IDS)}

    def xmm(self) -> list[int]:
        return [self.uc.reg_read(i) for i in XMM_IDS]

    def copy_cpu_from(self, other: "Machine") -> None:
        for i in GPR_IDS + XMM_IDS:
            self.uc.reg_write(i, other.uc.reg_read(i))
        self.uc.reg_write(X.UC_X86_REG_MXCSR, other.uc.reg_read(X.UC_X86_REG_MXCSR))

    # ------------------------------------------------------------------ user memory helpers
    def user_write(self, addr: int, data: bytes) -> None:
        """A write made by the emulated process's own (non-emulated) code, e.g. libc
        pushing the return address.  Goes through the fault path like any store."""
        from emulator.usercopy import access_user
        n = access_user(self, addr, data, user=True)
        if n != len(data):
            raise EmulationError(f"user write of {len(data)} bytes at {addr:#x} failed")

    def read(self, addr: int, n: int) -> bytes:
        """Peek at guest memory without faulting (not-present reads as zeros)."""
        out = bytearray()
        while n > 0:
            chunk = min(n, PAGE_SIZE - (addr & (PAGE_SIZE - 1)))
            m = self._mapped.get(addr & PAGE_MASK)
            if m is not None and m.kind == "special":
                out += self.uc.mem_read(addr, chunk)
            else:
                out += self.mm.read(addr, chunk)
            addr += chunk
            n -= chunk
        return bytes(out)

    # ------------------------------------------------------------------ calls
    def prepare_call(self, func: int, args: list[int], size: int = 0,
                     injections: list[Injection] | None = None,
                     budget: int = DEFAULT_BUDGET) -> CallContext:
        regs = ["RDI", "RSI", "RDX", "RCX", "R8", "R9"]
        for r, v in zip(regs, args):
            self.set_reg(r, v & 0xFFFF_FFFF_FFFF_FFFF)
        rsp = STACK_TOP - 256          # entry: (rsp + 8) % 16 == 0 after the return address push
        rsp -= 8
        ret = SENTINEL_PAGE.to_bytes(8, "little")
        from emulator.usercopy import store_if_writable
        if not store_if_writable(self, rsp, ret):      # the caller's frame is normally live
            self.user_write(rsp, ret)
        self.set_reg("RSP", rsp)
        self.set_reg("RIP", func)
        res = CallResult(size=size, process=self.name)
        inj = sorted(injections or [], key=lambda i: i.at)
        res.injections = [str(i) for i in inj]
        return CallContext(result=res, rip=func, budget=budget, injections=inj)

    def call(self, func: int, args: list[int], size: int = 0,
             injections: list[Injection] | None = None, budget: int = DEFAULT_BUDGET) -> CallResult:
        ctx = self.prepare_call(func, args, size, injections, budget)
        self.run(ctx)
        return ctx.result

    def run(self, ctx: CallContext, stop_at: int | None = None) -> None:
        """Run until the call ends, or until instruction index stop_at is reached."""
        from emulator import fault as fault_mod
        from emulator import inject as inject_mod
        from emulator import syscalls as sys_mod
        while not ctx.done:
            if ctx.pending_fault is not None or ctx.stop_requested:
                return
            while ctx.injections and ctx.injections[0].at <= ctx.index:
                inject_mod.apply(self, ctx, ctx.injections.pop(0))
                if ctx.done:
                    return
            if stop_at is not None and ctx.index >= stop_at:
                return
            if ctx.index >= ctx.budget:
                self.finish(ctx, "budget", f"instruction budget of {ctx.budget} exhausted at rip={ctx.rip:#x}")
                return
            target = ctx.budget
            if ctx.injections:
                target = min(target, ctx.injections[0].at)
            if stop_at is not None:
                target = min(target, stop_at)
            chunk = max(1, min(CHUNK, target - ctx.index))
            self._run_chunk(ctx, chunk, fault_mod, sys_mod)

    def handle_pending_fault(self, ctx: CallContext) -> None:
        """Carry out the fault the run stopped at (stop_on_fault)."""
        from emulator import fault as fault_mod
        if ctx.pending_fault is None:
            return
        pf, rip = ctx.pending_fault
        ctx.pending_fault = None
        fault_mod.do_user_addr_fault(self, ctx, pf, rip)

    def step(self, ctx: CallContext, n: int = 1) -> None:
        """Retire n more instructions (or stop at a fault / the end)."""
        self.run(ctx, stop_at=ctx.index + n)

    def _run_chunk(self, ctx: CallContext, chunk: int, fault_mod, sys_mod) -> None:
        self.recorder.reset()
        self._fault = None
        self._fault_cpu = None
        self._syscall = None
        self._hook_error = None
        self._journal.clear()
        err = None
        exit_at = self._readahead_exit
        self._readahead_exit = None
        try:
            if exit_at is not None:
                # Stop translation at the page end (see the read-ahead note below).
                self.uc.ctl_exits_enabled(True)
                self.uc.ctl_set_exits([SENTINEL_PAGE, exit_at])
            self.uc.emu_start(ctx.rip, SENTINEL_PAGE, count=chunk)
        except UcError as e:
            err = e
        finally:
            if exit_at is not None:
                self.uc.ctl_exits_enabled(False)
        if self._hook_error is not None:
            e = self._hook_error
            raise EmulationError(f"error inside a Unicorn hook: {type(e).__name__}: {e}") from e
        if err is not None and self._fault_cpu is not None:
            hook_rip, hook_flags, hook_ctx = self._fault_cpu
            if self.uc.reg_read(X.UC_X86_REG_RIP) != hook_rip:
                # Precise exceptions for helper-implemented stores (fxsave,
                # cmpxchg8b/16b, maskmovdqu, x87 stores...): Unicorn leaves rip past
                # the instruction and has updated registers; the CPU state at the
                # faulting access is right.  (The saved context's lazy flags are
                # stale, so RFLAGS comes from reg_read in the hook.)
                self.uc.context_restore(hook_ctx)
                self.uc.reg_write(X.UC_X86_REG_RFLAGS, hook_flags)
            if hook_rip in self._saved_flags:
                # rcl/rcr on memory update CF/OF before the store faults.
                self.uc.reg_write(X.UC_X86_REG_RFLAGS, self._saved_flags[hook_rip])
        if self._syscall is not None:
            stop_rip = self._syscall.rip + 2
        else:
            stop_rip = self.uc.reg_read(X.UC_X86_REG_RIP)
        if err is not None and self._fault is not None and self._fault.access == "exec" \
                and self._fault.address != stop_rip and exit_at is None:
            # Read-ahead: Unicorn translates past the end of a page before the
            # instruction ending there has run; a fetch fault on the next page at
            # translation time is not the CPU's fault yet.  Rerun with an exit
            # at the fault address: the instructions before it execute, and a
            # real fetch there faults with rip == address.
            self._account(ctx, stop_rip)
            ctx.rip = stop_rip
            self._readahead_exit = self._fault.address
            return
        before = ctx.index
        self._account(ctx, stop_rip)
        if ctx.index != before:
            ctx.refaults = 0
            ctx.last_fault_key = None
        if err is not None:
            if self._fault is None:
                self._cpu_exception(ctx, err, stop_rip)
                return
            ctx.rip = stop_rip
            if self._fault.access == "write":
                # Precise exceptions: roll back what Unicorn committed of a split
                # store before anyone (handler, stepper, gdb) looks at memory.
                self._fault.restored = self.undo_partial_store(stop_rip)
            if ctx.stop_on_fault:
                ctx.pending_fault = (self._fault, stop_rip)
                return
            fault_mod.do_user_addr_fault(self, ctx, self._fault, stop_rip)
            return
        if self._syscall is not None:
            ctx.rip = stop_rip
            sys_mod.do_syscall(self, ctx, self._syscall.rip)
            return
        ctx.rip = stop_rip
        if stop_rip == SENTINEL_PAGE:
            ctx.result.ret = self.uc.reg_read(X.UC_X86_REG_RAX)
            if ctx.result.ret >= 1 << 63:
                ctx.result.ret -= 1 << 64
            self.finish(ctx, "returned")

    def _cpu_exception(self, ctx: CallContext, err: UcError, rip: int) -> None:
        code = self.read(rip, 15)
        from vdso.insn import decode_one
        ins = decode_one(code, rip)
        text = ins.text if ins else code[:4].hex()
        self.trace.emit(TraceEvent(ctx.index, rip, "signal", {"signal": "SIGILL", "insn": text, "unicorn": str(err)}))
        self.finish(ctx, "signal", f"SIGILL at {rip:#x} [{text}]: {err}")

    def _account(self, ctx: CallContext, stop_rip: int) -> None:
        """Turn the recorded blocks into retired instructions and cycles."""
        entries = self.recorder.entries()
        if not entries:
            return
        # Fast path: order only matters for rep-string continuations and for the
        # last (possibly partial) block, so count identical entries in C and
        # multiply by their cached per-block figures.
        counts = Counter(entries)
        infos = {e: self.blocks.get(e) for e in counts}
        if not any(i.rep_tail or i.unfaithful for i in infos.values()):
            last = infos[entries[-1]]
            ninsn = 0
            cyc = 0.0
            for e, c in counts.items():
                info = infos[e]
                ninsn += c * info.ninsns
                cyc += c * info.prefix_cost[-1]
            k = last.executed_before(stop_rip)
            ninsn -= last.ninsns - k
            cyc -= last.prefix_cost[-1] - last.prefix_cost[k]
            ctx.index += ninsn
            ctx.rep_open = None
            ctx.cycles += cyc
            ctx.result.instructions = ctx.index
            return
        last = len(entries) - 1
        idx = ctx.index
        cyc = 0.0
        rep_open = ctx.rep_open
        for i, e in enumerate(entries):
            info = self.blocks.get(e)
            if info.unfaithful:
                raise UnfaithfulInstruction(f"{info.unfaithful} at {info.addr:#x} reached at run time")
            if rep_open is not None and info.addr == rep_open and info.ninsns == 1 and info.rep_tail:
                # another iteration of a rep string insn that is already counted
                cyc += info.rep_element_cost or self.blocks.rep_element_cost
                continue
            k = info.executed_before(stop_rip) if i == last else info.ninsns
            idx += k
            cyc += info.prefix_cost[k]
            rep_open = info.insn_addrs[-1] if (info.rep_tail and k == info.ninsns) else None
        ctx.index = idx
        ctx.rep_open = rep_open
        ctx.cycles += cyc
        ctx.result.instructions = idx

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

    # ------------------------------------------------------------------ fork
    def fork(self, name: str = "child") -> "Machine":
        """dup_mm() plus a copy of the CPU: the child continues where we are."""
        child_mm = self.mm.dup_mm()
        if isinstance(child_mm, int):       # -ENOMEM: strict overcommit, or no pages for the child
            raise EmulationError(f"fork: dup_mm failed with errno {-child_mm}")
        child = Machine(self.kernel, child_mm, livelock_limit=self.livelock_limit, name=name, _stack=False)
        child.copy_cpu_from(self)
        self.sync()     # dup_mm write-protected our pages (COW)
        self.children.append(child)
        return child

    def close(self) -> None:
        self.recorder.close()

    # ------------------------------------------------------------------ syscalls from the harness
    def do_syscall_now(self, nr: int, args: list[int]) -> int:
        """Make a syscall on behalf of the process's (non-emulated) libc code."""
        from emulator import syscalls
        ctx = CallContext(result=CallResult(size=0, process=self.name), rip=SENTINEL_PAGE, budget=1)
        self.set_reg("RAX", nr)
        for r, v in zip(["RDI", "RSI", "RDX", "R10", "R8", "R9"], args):
            self.set_reg(r, v & 0xFFFF_FFFF_FFFF_FFFF)
        syscalls.do_syscall(self, ctx, SENTINEL_PAGE)
        return ctx.result.syscalls[-1].ret

    # ------------------------------------------------------------------ snapshots
    def snapshot(self, ctx: CallContext | None = None) -> "MachineSnapshot":
        """Everything needed to come back here: mm (COW-shared frames, cheap),
        CPU registers, the kernel's mutable state and the call in progress."""
        import copy
        mm_snap = self.mm.snapshot()
        self.sync()          # the snapshot write-protected our pages: Unicorn must see it
        return MachineSnapshot(
            mm=mm_snap,
            cpu=self.uc.context_save(),
            kernel=self.kernel.save_state(),
            ctx=copy.deepcopy(ctx) if ctx is not None else None,
            trace_len=len(self.trace),
            nchildren=len(self.children),
        )

    def restore(self, snap: "MachineSnapshot") -> CallContext | None:
        """Go back to a snapshot; may be done any number of times.  Returns a
        fresh copy of the call context saved with it."""
        import copy
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
class MachineSnapshot:
    mm: object
    cpu: object
    kernel: dict
    ctx: CallContext | None
    trace_len: int
    nchildren: int
