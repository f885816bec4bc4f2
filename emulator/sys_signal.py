"""Signal syscalls: rt_sigaction, rt_sigprocmask, rt_sigreturn, sigaltstack,
kill, tgkill, tkill, rt_sigpending (kernel/signal.c, arch/x86/kernel/signal_64.c).
The machinery they drive is emulator/signal.py."""
from __future__ import annotations

import struct
from typing import TYPE_CHECKING

from unicorn import x86_const as X

from emulator.records import CallContext, SyscallRecord
from emulator.sigframe import Siginfo, pack_stack_t, unpack_stack_t
from emulator.signal import (NSIG, SI_KERNEL, SI_TKILL, SI_USER, SIG_BLOCK, SIG_SETMASK, SIG_UNBLOCK,
                             SIGKILL, SIGSEGV, SIGSTOP, UNBLOCKABLE, KSignal, SigAction, do_sigaltstack,
                             force_sig, restore_sigframe, sas_ss_flags, sigmask)
from emulator.sched import DEAD, ZOMBIE
from emulator.syscall_abi import (EFAULT, EINVAL, EPERM, ESRCH, REGS_RESTORED, get_user, int_arg, put_user)

if TYPE_CHECKING:
    from emulator.process import Process

SIGSET_SIZE = 8


def sys_rt_sigaction(p: "Process", ctx: CallContext, rec: SyscallRecord) -> int:
    sig, act_p, oact_p, size = int_arg(rec.args[0]), rec.args[1], rec.args[2], rec.args[3]
    if size != SIGSET_SIZE or not 1 <= sig <= NSIG:
        return -EINVAL
    new = None
    if act_p:
        raw = get_user(p, act_p, 32)
        if raw is None:
            return -EFAULT
        new = SigAction.unpack(raw)
        if sig in (SIGKILL, SIGSTOP):
            return -EINVAL
    old = p.sig.actions[sig]
    if oact_p and not put_user(p, ctx, oact_p, old.pack(), rec.rip, "rt_sigaction:copy_to_user"):
        return -EFAULT
    if new is not None:
        new.mask &= ~UNBLOCKABLE
        p.sig.actions[sig] = new
        if p.sig.ignored(sig):
            # Setting an ignoring action discards what is pending (POSIX).
            p.sig.pending = [k for k in p.sig.pending if k.signo != sig]
    return 0


def sys_rt_sigprocmask(p: "Process", ctx: CallContext, rec: SyscallRecord) -> int:
    how, set_p, oset_p, size = int_arg(rec.args[0]), rec.args[1], rec.args[2], rec.args[3]
    if size != SIGSET_SIZE:
        return -EINVAL
    old = p.sig.blocked
    if set_p:
        raw = get_user(p, set_p, 8)
        if raw is None:
            return -EFAULT
        s = struct.unpack("<Q", raw)[0] & ~UNBLOCKABLE
        if how == SIG_BLOCK:
            new = old | s
        elif how == SIG_UNBLOCK:
            new = old & ~s
        elif how == SIG_SETMASK:
            new = s
        else:
            return -EINVAL
    if oset_p and not put_user(p, ctx, oset_p, struct.pack("<Q", old), rec.rip, "rt_sigprocmask:copy_to_user"):
        return -EFAULT
    if set_p:
        p.sig.blocked = new
    return 0


def sys_rt_sigpending(p: "Process", ctx: CallContext, rec: SyscallRecord) -> int:
    if rec.args[1] > SIGSET_SIZE:
        return -EINVAL
    mask = 0
    for k in p.sig.pending:
        mask |= sigmask(k.signo)
    mask &= p.sig.blocked
    return 0 if put_user(p, ctx, rec.args[0], struct.pack("<Q", mask)[:rec.args[1]], rec.rip,
                         "rt_sigpending") else -EFAULT


def sys_rt_sigreturn(p: "Process", ctx: CallContext, rec: SyscallRecord) -> int:
    if restore_sigframe(p, ctx):
        return REGS_RESTORED
    # badframe: signal_fault() -> SIGSEGV; what rax holds no longer matters.
    force_sig(p, KSignal(SIGSEGV, Siginfo(SIGSEGV, SI_KERNEL), why="rt_sigreturn: bad frame"))
    return 0


def sys_sigaltstack(p: "Process", ctx: CallContext, rec: SyscallRecord) -> int:
    ss_p, old_p = rec.args[0], rec.args[1]
    rsp = p.uc.reg_read(X.UC_X86_REG_RSP)
    base, size, flags = p.sig.altstack
    old = pack_stack_t(base, sas_ss_flags(p.sig, rsp) | (flags & ~0xFF), size)
    if ss_p:
        raw = get_user(p, ss_p, 24)
        if raw is None:
            return -EFAULT
        sp, fl, sz = unpack_stack_t(raw)
        r = do_sigaltstack(p, sp, fl & 0xFFFF_FFFF, sz, rsp)
        if r:
            return -EPERM if r == -1 else r
    if old_p and not put_user(p, ctx, old_p, old, rec.rip, "sigaltstack:copy_to_user"):
        return -EFAULT
    return 0


def _kill_one(p: "Process", target: "Process", sig: int, code: int) -> int:
    if target.state in (ZOMBIE, DEAD):
        return 0 if target.state == ZOMBIE else -ESRCH
    if sig:
        target.send(sig, code, p)
    return 0


def sys_kill(p: "Process", ctx: CallContext, rec: SyscallRecord) -> int:
    pid, sig = int_arg(rec.args[0]), int_arg(rec.args[1])
    if not 0 <= sig <= NSIG:
        return -EINVAL
    if pid > 0:
        t = p.system.procs.get(pid)
        return -ESRCH if t is None else _kill_one(p, t, sig, SI_USER)
    # 0, -1 and -pgrp: one process group and one session here.
    targets = [t for t in p.system.order if not (pid == -1 and t is p)]
    for t in targets:
        _kill_one(p, t, sig, SI_USER)
    return 0 if targets else -ESRCH


def sys_tgkill(p: "Process", ctx: CallContext, rec: SyscallRecord) -> int:
    tgid, tid, sig = int_arg(rec.args[0]), int_arg(rec.args[1]), int_arg(rec.args[2])
    if tgid <= 0 or tid <= 0 or not 0 <= sig <= NSIG:
        return -EINVAL
    t = p.system.procs.get(tid)
    if t is None or t.pid != tgid:
        return -ESRCH
    return _kill_one(p, t, sig, SI_TKILL)


def sys_tkill(p: "Process", ctx: CallContext, rec: SyscallRecord) -> int:
    tid, sig = int_arg(rec.args[0]), int_arg(rec.args[1])
    if tid <= 0 or not 0 <= sig <= NSIG:
        return -EINVAL
    t = p.system.procs.get(tid)
    return -ESRCH if t is None else _kill_one(p, t, sig, SI_TKILL)

