"""The emulated kernel's syscall layer (arch/x86/entry/syscall_64.c).

do_syscall() is the entry: it reads the number and arguments, finds the
handler in the task's table and writes the result back as the CPU's SYSRET
path leaves it.  Unicorn's `syscall` hook sees rip at the instruction and
does not set RCX/R11; we set them as the CPU does (RCX = next rip,
R11 = RFLAGS) before returning.  Anything a table does not implement returns
-ENOSYS and is recorded.

Two tables:
- VDSO_CALL_SYSCALLS (here): the vDSO-call harness (emulator/machine.py):
  what __vdso_getrandom and the libc-like caller can reach;
- PROCESS_SYSCALLS (emulator/syscall_64.py): a whole program under
  `faultpath exec` (emulator/process.py), its handlers split by area:
  emulator/sys_mm.py, sys_files.py, sys_process.py, sys_signal.py,
  sys_getrandom.py and sys_time.py, over emulator/syscall_abi.py.
A task names its table in `sys_call_table`; one without uses the harness's.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from unicorn import x86_const as X

from emulator.records import CallContext, SyscallRecord
from emulator.syscall_abi import ENOSYS, REGS_RESTORED, U64, SyscallTable, WouldBlock, signed
from emulator.sys_getrandom import sys_getrandom, sys_vgetrandom_alloc, vgetrandom_state_size  # noqa: F401
from emulator.sys_mm import sys_madvise, sys_mmap, sys_mprotect, sys_munmap
from emulator.syscall_names import syscall_name
from vdso.abi import NR_getrandom, NR_vgetrandom_alloc

if TYPE_CHECKING:
    from emulator.task import Task

_ARG_REGS = (X.UC_X86_REG_RDI, X.UC_X86_REG_RSI, X.UC_X86_REG_RDX, X.UC_X86_REG_R10, X.UC_X86_REG_R8,
             X.UC_X86_REG_R9)


def sys_exit(m: "Task", ctx: CallContext, rec: SyscallRecord) -> int:
    """The harness: a call that exits ends there (outcome "exit")."""
    m.finish(ctx, "exit", f"exit({signed(rec.args[0])})")
    return 0


VDSO_CALL_SYSCALLS = SyscallTable("vdso-call", {
    NR_getrandom: ("getrandom", sys_getrandom),
    9: ("mmap", sys_mmap),
    10: ("mprotect", sys_mprotect),
    11: ("munmap", sys_munmap),
    28: ("madvise", sys_madvise),
    NR_vgetrandom_alloc: ("vgetrandom_alloc", sys_vgetrandom_alloc),
    60: ("exit", sys_exit),
    231: ("exit_group", sys_exit),
})
SYSCALLS = VDSO_CALL_SYSCALLS.calls


def do_syscall(m: "Task", ctx: CallContext, rip: int) -> None:
    """The `syscall` instruction at rip, as entry_SYSCALL_64 and do_syscall_64 handle it."""
    uc = m.uc
    table: SyscallTable = getattr(m, "sys_call_table", None) or VDSO_CALL_SYSCALLS
    nr = uc.reg_read(X.UC_X86_REG_RAX)
    args = [uc.reg_read(r) for r in _ARG_REGS]
    name, fn = table.calls.get(nr, (syscall_name(nr), None))
    rec = SyscallRecord(index=ctx.index, rip=rip, nr=nr, name=name, args=args)
    if table.entry_work is not None:
        table.entry_work(m, ctx, rec)
        if ctx.done:
            return
    cyc0 = ctx.cycles
    m.charge(ctx, "syscall", rip, {"nr": nr, "name": name}, cycles=0)
    try:
        ret = fn(m, ctx, rec) if fn is not None else -ENOSYS
    except WouldBlock as wb:
        _sleep(m, ctx, rip, wb)
        return
    if ret is REGS_RESTORED:
        # rt_sigreturn: every register came from the signal frame.
        rec.ret = signed(uc.reg_read(X.UC_X86_REG_RAX))
        ctx.rip = uc.reg_read(X.UC_X86_REG_RIP)
    else:
        rec.ret = ret
        next_rip = rip + 2
        uc.reg_write(X.UC_X86_REG_RAX, ret & U64)
        uc.reg_write(X.UC_X86_REG_RCX, next_rip)                              # as SYSCALL does
        uc.reg_write(X.UC_X86_REG_R11, uc.reg_read(X.UC_X86_REG_EFLAGS))      # as SYSCALL does
        uc.reg_write(X.UC_X86_REG_RIP, next_rip)
        ctx.rip = next_rip
    nbytes = len(rec.data) if nr == NR_getrandom else 0
    m.charge(ctx, "syscall_return", rip, {"nr": nr, "ret": rec.ret},
             cycles=m.kernel.profile.syscall_cost(nr, nbytes))
    rec.cycles = ctx.cycles - cyc0
    ctx.result.syscalls.append(rec)
    if table.exit_work is not None:
        table.exit_work(m, ctx, rec)


def _sleep(m: "Task", ctx: CallContext, rip: int, wb: WouldBlock) -> None:
    """The task sleeps in the syscall: when woken it executes the `syscall`
    instruction again (rax still holds the number), as a restarted syscall
    does.  The instruction retires only once, so its count is taken back."""
    wb.queue.add(m)
    m.sleep(wb.queue, wb.why)
    m.uc.reg_write(X.UC_X86_REG_RIP, rip)
    ctx.rip = rip
    ctx.index -= 1
    ctx.result.instructions = ctx.index
    ctx.stop_requested = True
