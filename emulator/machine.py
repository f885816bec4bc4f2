"""The Machine: a Task that runs calls.

`Machine` is what tools build: one emulated process with its stack, calling a
function under the SysV ABI and running it through the run loop
(emulator/entry.py) until it returns, faults fatally, spins or exhausts its
budget.  Memory ownership: mm owns frames; Unicorn maps present pages directly
onto them (emulator/mmu.py).
"""
from __future__ import annotations

from unicorn import x86_const as X

from emulator import entry, fault, syscalls
from emulator.errors import EmulationError
from emulator.kernel import SENTINEL_PAGE, Kernel
from emulator.layout import STACK_SIZE, STACK_TOP, install_kernel_mappings
from emulator.records import (DEFAULT_BUDGET, DEFAULT_LIVELOCK, CallContext, CallResult,  # noqa: F401
                              Injection)
from emulator.task import Task
from emulator.usercopy import access_user, store_if_writable
from mm import flags as F
from mm.flags import PAGE_SIZE
from mm.mm_struct import MM

_ARG_REGS = (X.UC_X86_REG_RDI, X.UC_X86_REG_RSI, X.UC_X86_REG_RDX, X.UC_X86_REG_RCX, X.UC_X86_REG_R8,
             X.UC_X86_REG_R9)       # SysV: the first six integer arguments


class Machine(Task):
    """A process that runs calls: owns its Unicorn instance, its mm and its trace."""

    def __init__(self, kernel: Kernel, mm: MM | None = None, *, droppable_oom: str = "skip",
                 livelock_limit: int = DEFAULT_LIVELOCK, rlimit_memlock: int | None = None,
                 name: str = "parent", _stack: bool = True):
        super().__init__(kernel, mm, droppable_oom=droppable_oom, livelock_limit=livelock_limit,
                         rlimit_memlock=rlimit_memlock, name=name)
        if _stack:
            # A fresh process: the kernel's mappings are VMAs before anything
            # else is mapped (a forked child inherits them).
            install_kernel_mappings(self.mm, kernel)
            r = self.mm.mmap(STACK_TOP - STACK_SIZE, STACK_SIZE, F.PROT_READ | F.PROT_WRITE,
                             F.MAP_PRIVATE | F.MAP_ANONYMOUS | F.MAP_FIXED)
            if r < 0:
                raise EmulationError(f"cannot map the stack: errno {-r}")
            self.sync()
            # The caller's own frame is live before any call (libc touched it).
            self.user_write(STACK_TOP - PAGE_SIZE, bytes(8))
            self.sync()

    def _spawn(self, mm: MM, name: str) -> "Machine":
        return Machine(self.kernel, mm, livelock_limit=self.livelock_limit, name=name, _stack=False)

    # ------------------------------------------------------------------ the uaccess trap
    def page_fault(self, ctx: CallContext, address: int, access: str, rip: int, what: str):
        return fault.do_kernel_uaccess_fault(self, ctx, address, access, rip, what)

    # ------------------------------------------------------------------ user memory helpers
    def user_write(self, addr: int, data: bytes) -> None:
        """A write made by the emulated process's own (non-emulated) code, e.g. libc
        pushing the return address.  Goes through the fault path like any store."""
        n = access_user(self, addr, data, user=True)
        if n != len(data):
            raise EmulationError(f"user write of {len(data)} bytes at {addr:#x} failed")

    # ------------------------------------------------------------------ calls
    def prepare_call(self, func: int, args: list[int], size: int = 0,
                     injections: list[Injection] | None = None,
                     budget: int = DEFAULT_BUDGET) -> CallContext:
        rsp = STACK_TOP - 256          # entry: (rsp + 8) % 16 == 0 after the return address push
        rsp -= 8
        ret = SENTINEL_PAGE.to_bytes(8, "little")
        if not store_if_writable(self, rsp, ret):      # the caller's frame is normally live
            self.user_write(rsp, ret)
        self.regs64.write(list(zip(_ARG_REGS, args)) + [(X.UC_X86_REG_RSP, rsp), (X.UC_X86_REG_RIP, func)])
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
        entry.run(self, ctx, stop_at)

    def step(self, ctx: CallContext, n: int = 1) -> None:
        """Retire n more instructions (or stop at a fault / the end)."""
        entry.run(self, ctx, stop_at=ctx.index + n)

    def handle_pending_fault(self, ctx: CallContext) -> None:
        """Carry out the fault the run stopped at (stop_on_fault)."""
        entry.handle_pending_fault(self, ctx)

    # ------------------------------------------------------------------ syscalls from the harness
    def do_syscall_now(self, nr: int, args: list[int]) -> int:
        """Make a syscall on behalf of the process's (non-emulated) libc code."""
        ctx = CallContext(result=CallResult(size=0, process=self.name), rip=SENTINEL_PAGE, budget=1)
        self.set_reg("RAX", nr)
        for r, v in zip(["RDI", "RSI", "RDX", "R10", "R8", "R9"], args):
            self.set_reg(r, v & 0xFFFF_FFFF_FFFF_FFFF)
        syscalls.do_syscall(self, ctx, SENTINEL_PAGE)
        return ctx.result.syscalls[-1].ret
