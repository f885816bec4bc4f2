"""The emulated kernel's syscall layer (arch/x86/entry/syscall_64.c).

Unicorn's `syscall` hook sees rip at the instruction and does not set RCX/R11;
we set them as the CPU does (RCX = next rip, R11 = RFLAGS) before returning.
Anything we do not implement returns -ENOSYS and is recorded.
"""
from __future__ import annotations

import struct
from typing import TYPE_CHECKING, Callable

from emulator.records import CallContext, SyscallRecord
from emulator.usercopy import copy_from_user, copy_to_user
from mm import flags as F
from mm.flags import PAGE_SIZE
from vdso.abi import GRND_INSECURE, GRND_RANDOM, GRND_VALID, MAX_RW_COUNT, NR_getrandom, NR_vgetrandom_alloc, STATE_SIZE

if TYPE_CHECKING:
    from emulator.task import Task

ENOSYS = 38
EINVAL = 22
EFAULT = 14
U64 = (1 << 64) - 1


def _signed(v: int) -> int:
    return v - (1 << 64) if v >= 1 << 63 else v


def sys_getrandom(m: "Task", ctx: CallContext, rec: SyscallRecord) -> int:
    buf, count, flags = rec.args[0], rec.args[1], rec.args[2] & 0xFFFFFFFF
    # drivers/char/random.c: unknown flags, or RANDOM together with INSECURE -> -EINVAL
    if flags & ~GRND_VALID or (flags & (GRND_RANDOM | GRND_INSECURE)) == (GRND_RANDOM | GRND_INSECURE):
        return -EINVAL
    count = min(count, MAX_RW_COUNT)
    if count == 0:
        return 0
    # A not-ready crng would block (or give -EAGAIN with GRND_NONBLOCK); ours is
    # always seeded, `not-ready` only clears the vDSO's is_ready flag.
    data = m.kernel.entropy_bytes(count)
    rec.generated = data
    res = copy_to_user(m, ctx, buf, data, rec.rip, "getrandom:copy_to_user")
    rec.data_addr = buf
    rec.data = data[:res.copied]
    if res.livelock:
        rec.outcome = "livelock"
        m.finish(ctx, "livelock", f"kernel copy livelock: getrandom's copy_to_user into {buf + res.copied:#x} "
                                  f"refaulted more than {m.livelock_limit} times")
        return res.copied or -EFAULT
    if res.copied == 0:
        return -EFAULT
    return res.copied


def sys_mmap(m: "Task", ctx: CallContext, rec: SyscallRecord) -> int:
    addr, length, prot, flags, fd, off = rec.args
    r = m.mm.mmap(addr, length, prot & 0xFFFFFFFF, flags & 0xFFFFFFFF, _signed(fd) if fd >= 1 << 31 else fd, off)
    if r >= 0:
        m.sync_range(r, length)
    return r


def sys_munmap(m, ctx, rec) -> int:
    r = m.mm.munmap(rec.args[0], rec.args[1])
    m.sync_range(rec.args[0], rec.args[1])
    return r


def sys_mprotect(m, ctx, rec) -> int:
    r = m.mm.mprotect(rec.args[0], rec.args[1], rec.args[2] & 0xFFFFFFFF)
    m.sync_range(rec.args[0], rec.args[1])
    return r


def sys_madvise(m, ctx, rec) -> int:
    r = m.mm.madvise(rec.args[0], rec.args[1], rec.args[2] & 0xFFFFFFFF)
    m.sync_range(rec.args[0], rec.args[1])
    return r


def vgetrandom_state_size() -> int:
    """v14: each state is rounded up to a power of two so none straddles a page."""
    size = 1
    while size < STATE_SIZE:
        size <<= 1
    return size


def sys_vgetrandom_alloc(m: "Task", ctx: CallContext, rec: SyscallRecord) -> int:
    """v14: vgetrandom_alloc(unsigned *num, unsigned *size_per_each, unsigned long addr, unsigned flags)."""
    num_p, size_p, addr, flags = rec.args[0], rec.args[1], rec.args[2], rec.args[3] & 0xFFFFFFFF
    if addr or flags:
        return -EINVAL
    raw = copy_from_user(m, num_p, 4)
    raw_size = copy_from_user(m, size_p, 4)
    if len(raw) != 4 or len(raw_size) != 4:
        return -EFAULT
    if struct.unpack("<I", raw_size)[0] != 0:
        return -EINVAL
    hint = struct.unpack("<I", raw)[0]
    state_size = vgetrandom_state_size()
    per_page = PAGE_SIZE // state_size
    num = max(1, hint)
    if num > (1 << 20):
        return -EINVAL
    pages = (num + per_page - 1) // per_page
    length = pages * PAGE_SIZE
    got = length // state_size
    wb = copy_to_user(m, ctx, num_p, struct.pack("<I", got), rec.rip, "vgetrandom_alloc:put_user")
    wb2 = copy_to_user(m, ctx, size_p, struct.pack("<I", state_size), rec.rip, "vgetrandom_alloc:put_user")
    if wb.copied != 4 or wb2.copied != 4:
        return -EFAULT
    # v14: VM_DROPPABLE | VM_NORESERVE | VM_WIPEONFORK | VM_DONTDUMP, exactly the
    # flags MAP_DROPPABLE later came to imply.
    r = m.mm.mmap(0, length, F.PROT_READ | F.PROT_WRITE, F.MAP_DROPPABLE | F.MAP_ANONYMOUS, -1, 0)
    if r < 0:
        return r
    m.sync_range(r, length)
    return r


def sys_exit(m: "Task", ctx: CallContext, rec: SyscallRecord) -> int:
    m.finish(ctx, "exit", f"exit({_signed(rec.args[0])})")
    return 0


SYSCALLS: dict[int, tuple[str, Callable]] = {
    NR_getrandom: ("getrandom", sys_getrandom),
    9: ("mmap", sys_mmap),
    10: ("mprotect", sys_mprotect),
    11: ("munmap", sys_munmap),
    28: ("madvise", sys_madvise),
    NR_vgetrandom_alloc: ("vgetrandom_alloc", sys_vgetrandom_alloc),
    60: ("exit", sys_exit),
    231: ("exit_group", sys_exit),
}


def do_syscall(m: "Task", ctx: CallContext, rip: int) -> None:
    from unicorn import x86_const as X
    uc = m.uc
    nr = uc.reg_read(X.UC_X86_REG_RAX)
    args = [uc.reg_read(r) for r in (X.UC_X86_REG_RDI, X.UC_X86_REG_RSI, X.UC_X86_REG_RDX,
                                      X.UC_X86_REG_R10, X.UC_X86_REG_R8, X.UC_X86_REG_R9)]
    name, fn = SYSCALLS.get(nr, (f"sys_{nr}", None))
    rec = SyscallRecord(index=ctx.index, rip=rip, nr=nr, name=name, args=args)
    cyc0 = ctx.cycles
    m.charge(ctx, "syscall", rip, {"nr": nr, "name": name}, cycles=0)
    ret = fn(m, ctx, rec) if fn is not None else -ENOSYS
    rec.ret = ret
    nbytes = len(rec.data) if nr == NR_getrandom else 0
    m.charge(ctx, "syscall_return", rip, {"nr": nr, "ret": ret}, cycles=m.kernel.profile.syscall_cost(nr, nbytes))
    rec.cycles = ctx.cycles - cyc0
    ctx.result.syscalls.append(rec)
    next_rip = rip + 2
    uc.reg_write(X.UC_X86_REG_RAX, ret & U64)
    uc.reg_write(X.UC_X86_REG_RCX, next_rip)                              # as SYSCALL does
    uc.reg_write(X.UC_X86_REG_R11, uc.reg_read(X.UC_X86_REG_EFLAGS))      # as SYSCALL does
    uc.reg_write(X.UC_X86_REG_RIP, next_rip)
    ctx.rip = next_rip
