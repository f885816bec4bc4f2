"""Process syscalls: identity, thread-area set-up (arch_prctl, set_tid_address,
set_robust_list, rseq), resource limits, uname, fork (clone without shared
memory), wait4 and exit (kernel/fork.c, kernel/exit.c, kernel/sys.c,
kernel/rseq.c, arch/x86/kernel/process_64.c)."""
from __future__ import annotations

import struct
from typing import TYPE_CHECKING

from unicorn import x86_const as X

from emulator.records import CallContext, SyscallRecord
from emulator.sched import ZOMBIE
from emulator.syscall_abi import (ECHILD, EFAULT, EINVAL, EPERM, ESRCH, WouldBlock, get_user, int_arg,
                                      put_user, signed)

if TYPE_CHECKING:
    from emulator.process import Process

EBUSY = 16
ARCH_SET_GS, ARCH_SET_FS, ARCH_GET_FS, ARCH_GET_GS = 0x1001, 0x1002, 0x1003, 0x1004
TASK_SIZE_MAX = (1 << 47) - 4096

# clone flags (uapi linux/sched.h)
CSIGNAL = 0xFF
CLONE_VM, CLONE_FS, CLONE_FILES, CLONE_SIGHAND = 0x100, 0x200, 0x400, 0x800
CLONE_PIDFD, CLONE_PTRACE, CLONE_VFORK, CLONE_PARENT, CLONE_THREAD = 0x1000, 0x2000, 0x4000, 0x8000, 0x10000
CLONE_NEWNS, CLONE_SYSVSEM, CLONE_SETTLS = 0x20000, 0x40000, 0x80000
CLONE_PARENT_SETTID, CLONE_CHILD_CLEARTID, CLONE_DETACHED = 0x100000, 0x200000, 0x400000
CLONE_UNTRACED, CLONE_CHILD_SETTID = 0x800000, 0x01000000
# What a fork may carry: the child's tid written or cleared, the parent's tid written.
FORK_FLAGS = CSIGNAL | CLONE_PARENT_SETTID | CLONE_CHILD_CLEARTID | CLONE_CHILD_SETTID | CLONE_UNTRACED \
    | CLONE_PTRACE | CLONE_DETACHED
CLONE_ARGS_SIZE_VER0 = 64
WNOHANG, WUNTRACED, WCONTINUED = 1, 2, 8
WNOTHREAD, WALL, WCLONE = 0x20000000, 0x40000000, 0x80000000

RLIM_INFINITY = (1 << 64) - 1
RLIMIT_NAMES = ("RLIMIT_CPU", "RLIMIT_FSIZE", "RLIMIT_DATA", "RLIMIT_STACK", "RLIMIT_CORE", "RLIMIT_RSS",
                "RLIMIT_NPROC", "RLIMIT_NOFILE", "RLIMIT_MEMLOCK", "RLIMIT_AS", "RLIMIT_LOCKS",
                "RLIMIT_SIGPENDING", "RLIMIT_MSGQUEUE", "RLIMIT_NICE", "RLIMIT_RTPRIO", "RLIMIT_RTTIME")
# A login shell's limits on a Debian host (ulimit -a), the defaults a process inherits.
DEFAULT_RLIMITS = {
    0: (RLIM_INFINITY, RLIM_INFINITY), 1: (RLIM_INFINITY, RLIM_INFINITY), 2: (RLIM_INFINITY, RLIM_INFINITY),
    3: (8 << 20, RLIM_INFINITY), 4: (0, RLIM_INFINITY), 5: (RLIM_INFINITY, RLIM_INFINITY),
    6: (31711, 31711), 7: (1024, 1048576), 8: (8 << 20, 8 << 20), 9: (RLIM_INFINITY, RLIM_INFINITY),
    10: (RLIM_INFINITY, RLIM_INFINITY), 11: (31711, 31711), 12: (819200, 819200), 13: (0, 0), 14: (0, 0),
    15: (RLIM_INFINITY, RLIM_INFINITY),
}
UTS_RELEASE = b"6.18.0-faultpath"          # the emulated kernel: 6.11+ semantics (MAP_DROPPABLE, vDSO getrandom)


def sys_getpid(p: "Process", ctx: CallContext, rec: SyscallRecord) -> int:
    return p.pid


def sys_gettid(p: "Process", ctx: CallContext, rec: SyscallRecord) -> int:
    return p.tid


def sys_getppid(p: "Process", ctx: CallContext, rec: SyscallRecord) -> int:
    return p.ppid


def sys_getuid(p: "Process", ctx: CallContext, rec: SyscallRecord) -> int:
    return p.cred.uid


def sys_getgid(p: "Process", ctx: CallContext, rec: SyscallRecord) -> int:
    return p.cred.gid


def sys_arch_prctl(p: "Process", ctx: CallContext, rec: SyscallRecord) -> int:
    """do_arch_prctl_64: set or read the FS/GS base (TLS); a base above the
    user address space is -EPERM."""
    code, addr = int_arg(rec.args[0]), rec.args[1]
    if code in (ARCH_SET_FS, ARCH_SET_GS):
        if addr >= TASK_SIZE_MAX:
            return -EPERM
        p.uc.reg_write(X.UC_X86_REG_FS_BASE if code == ARCH_SET_FS else X.UC_X86_REG_GS_BASE, addr)
        return 0
    if code in (ARCH_GET_FS, ARCH_GET_GS):
        v = p.uc.reg_read(X.UC_X86_REG_FS_BASE if code == ARCH_GET_FS else X.UC_X86_REG_GS_BASE)
        return 0 if put_user(p, ctx, addr, struct.pack("<Q", v), rec.rip, "arch_prctl:put_user") else -EFAULT
    return -EINVAL


def sys_set_tid_address(p: "Process", ctx: CallContext, rec: SyscallRecord) -> int:
    p.clear_child_tid = rec.args[0]
    return p.tid


def sys_set_robust_list(p: "Process", ctx: CallContext, rec: SyscallRecord) -> int:
    if rec.args[1] != 24:                  # sizeof(struct robust_list_head)
        return -EINVAL
    p.robust_list = (rec.args[0], rec.args[1])
    return 0


RSEQ_FLAG_UNREGISTER = 1
ORIG_RSEQ_SIZE = 32


def sys_rseq(p: "Process", ctx: CallContext, rec: SyscallRecord) -> int:
    """kernel/rseq.c: register the thread's struct rseq.  On the way back to
    user mode the kernel then stores the current cpu (and node, mm_cid)
    into it: one CPU here, so zeros.  Restartable critical sections are not
    modelled (none is ever entered by glibc itself)."""
    addr, length, flags, sig = rec.args[0], int_arg(rec.args[1]), int_arg(rec.args[2]), rec.args[3] & 0xFFFF_FFFF
    cur = p.rseq
    if flags & RSEQ_FLAG_UNREGISTER:
        if flags & ~RSEQ_FLAG_UNREGISTER:
            return -EINVAL
        if cur.addr != addr:
            return -EINVAL
        if cur.length != length:
            return -EINVAL
        if cur.sig != sig:
            return -EPERM
        cur.addr = cur.length = cur.sig = 0
        return 0
    if flags:
        return -EINVAL
    if cur.addr:
        if cur.addr != addr or cur.length != length:
            return -EINVAL
        return -EPERM if cur.sig != sig else -EBUSY
    if length < ORIG_RSEQ_SIZE or (length == ORIG_RSEQ_SIZE and addr % ORIG_RSEQ_SIZE) \
            or (length != ORIG_RSEQ_SIZE and addr % 32):
        return -EINVAL
    if addr + length > TASK_SIZE_MAX:
        return -EFAULT
    cur.addr, cur.length, cur.sig = addr, length, sig
    # rseq_update_cpu_node_id(): cpu_id_start, cpu_id (offsets 0, 4), then
    # node_id and mm_cid (24, 28).
    if not put_user(p, ctx, addr, struct.pack("<II", 0, 0), rec.rip, "rseq:cpu_id") \
            or not put_user(p, ctx, addr + 24, struct.pack("<II", 0, 0), rec.rip, "rseq:node_id"):
        return -EFAULT
    return 0


def sys_prlimit64(p: "Process", ctx: CallContext, rec: SyscallRecord) -> int:
    pid, res, new, old = int_arg(rec.args[0]), int_arg(rec.args[1]), rec.args[2], rec.args[3]
    if pid not in (0, p.pid):
        return -ESRCH if pid not in p.system.procs else -EPERM
    if not 0 <= res < len(RLIMIT_NAMES):
        return -EINVAL
    cur = p.rlimits.get(res, DEFAULT_RLIMITS[res])
    if new:
        raw = get_user(p, new, 16)
        if raw is None:
            return -EFAULT
        lim = struct.unpack("<QQ", raw)
        if lim[0] > lim[1] or lim[1] > cur[1]:
            return -EINVAL if lim[0] > lim[1] else -EPERM
    if old and not put_user(p, ctx, old, struct.pack("<QQ", *cur), rec.rip, "prlimit64:copy_to_user"):
        return -EFAULT
    if new:
        p.rlimits[res] = lim
    return 0


def sys_getrlimit(p: "Process", ctx: CallContext, rec: SyscallRecord) -> int:
    rec.args = [0, rec.args[0], 0, rec.args[1]] + rec.args[4:]
    return sys_prlimit64(p, ctx, rec)


def sys_uname(p: "Process", ctx: CallContext, rec: SyscallRecord) -> int:
    fields = (b"Linux", b"faultpath", UTS_RELEASE, b"#1 SMP PREEMPT_DYNAMIC faultpath", b"x86_64", b"(none)")
    raw = b"".join(f.ljust(65, b"\0") for f in fields)
    return 0 if put_user(p, ctx, rec.args[0], raw, rec.rip, "uname:copy_to_user") else -EFAULT


def sys_exit_group(p: "Process", ctx: CallContext, rec: SyscallRecord) -> int:
    """do_group_exit(): one thread per process here, so exit and exit_group
    are the same.  (clear_child_tid is written only when other threads
    share the mm: never here.)"""
    code = int_arg(rec.args[0]) & 0xFF
    p.exit.code = code
    p.exit.outcome = "exit"
    p.finish(ctx, "exit", f"exit_group({code})")
    return 0


# ------------------------------------------------------------------ fork
def refuse(p: "Process", rec: SyscallRecord, why: str, errno: int) -> int:
    """A request faultpath does not model: a record, an errno, no silent no-op."""
    p.refusals.append((rec.name, why, -errno))
    for o in p.observers:
        o.on_refusal(p, rec, why)
    return -errno


def kernel_clone(p: "Process", ctx: CallContext, rec: SyscallRecord, flags: int, newsp: int, parent_tid: int,
                 child_tid: int, tls: int) -> int:
    """fork as clone() makes it.  Threads (CLONE_THREAD) and any sharing of
    the address space, files or handlers are refused: one thread per
    process is modelled."""
    if flags & (CLONE_THREAD | CLONE_VM | CLONE_SIGHAND | CLONE_VFORK | CLONE_FILES | CLONE_FS):
        what = "a thread (CLONE_THREAD)" if flags & CLONE_THREAD else "shared memory or tables (CLONE_VM...)"
        return refuse(p, rec, f"clone of {what}, flags {flags:#x}: threads are not emulated", EINVAL)
    if flags & ~FORK_FLAGS:
        return refuse(p, rec, f"clone flags {flags & ~FORK_FLAGS:#x} are not emulated", EINVAL)
    child = p.copy_process(ctx)
    child.exit_signal = flags & CSIGNAL
    cu = child.uc
    next_rip = ctx.rip
    cu.reg_write(X.UC_X86_REG_RAX, 0)                   # the child's fork() returns 0
    cu.reg_write(X.UC_X86_REG_RCX, next_rip)
    cu.reg_write(X.UC_X86_REG_R11, p.uc.reg_read(X.UC_X86_REG_EFLAGS))
    cu.reg_write(X.UC_X86_REG_RIP, next_rip)
    if newsp:
        cu.reg_write(X.UC_X86_REG_RSP, newsp)
    child.rseq = type(p.rseq)(p.rseq.addr, p.rseq.length, p.rseq.sig)
    child.robust_list = p.robust_list
    child.rlimits = dict(p.rlimits)
    if flags & CLONE_CHILD_SETTID:
        put_user(child, child.ctx, child_tid, struct.pack("<i", child.pid), next_rip, "clone:child_tid")
    if flags & CLONE_CHILD_CLEARTID:
        child.clear_child_tid = child_tid
    if flags & CLONE_PARENT_SETTID:
        put_user(p, ctx, parent_tid, struct.pack("<i", child.pid), rec.rip, "clone:parent_tid")
    return child.pid


def sys_clone(p: "Process", ctx: CallContext, rec: SyscallRecord) -> int:
    flags, newsp, parent_tid, child_tid, tls = rec.args[:5]     # x86-64 order
    return kernel_clone(p, ctx, rec, flags, newsp, parent_tid, child_tid, tls)


def sys_clone3(p: "Process", ctx: CallContext, rec: SyscallRecord) -> int:
    uargs, size = rec.args[0], rec.args[1]
    if size < CLONE_ARGS_SIZE_VER0 or size > 4096:
        return -EINVAL
    raw = get_user(p, uargs, CLONE_ARGS_SIZE_VER0)
    if raw is None:
        return -EFAULT
    flags, _pidfd, child_tid, parent_tid, exit_signal, stack, stack_size, tls = struct.unpack("<8Q", raw)
    if exit_signal & ~CSIGNAL:
        return -EINVAL
    sp = stack + stack_size if stack else 0
    return kernel_clone(p, ctx, rec, flags | exit_signal, sp, parent_tid, child_tid, tls)


def sys_fork(p: "Process", ctx: CallContext, rec: SyscallRecord) -> int:
    return kernel_clone(p, ctx, rec, 17, 0, 0, 0, 0)         # SIGCHLD


def sys_vfork(p: "Process", ctx: CallContext, rec: SyscallRecord) -> int:
    return kernel_clone(p, ctx, rec, CLONE_VM | CLONE_VFORK | 17, 0, 0, 0, 0)


def sys_wait4(p: "Process", ctx: CallContext, rec: SyscallRecord) -> int:
    """do_wait(): a zombie child is reaped (status and an all-zero rusage
    written); with WNOHANG and none, 0; with no such child, -ECHILD;
    otherwise the caller sleeps until a child exits."""
    pid, status_p, options, ru = signed(rec.args[0]), rec.args[1], int_arg(rec.args[2]), rec.args[3]
    if options & ~(WNOHANG | WUNTRACED | WCONTINUED | WNOTHREAD | WALL | WCLONE):
        return -EINVAL
    kids = [c for c in p.children_procs if pid in (-1, 0) or pid < -1 or c.pid == pid]
    if not kids:
        return -ECHILD
    for c in kids:
        if c.state == ZOMBIE:
            if status_p and not put_user(p, ctx, status_p, struct.pack("<i", c.exit.wstatus), rec.rip,
                                         "wait4:status"):
                return -EFAULT
            if ru and not put_user(p, ctx, ru, bytes(144), rec.rip, "wait4:rusage"):
                return -EFAULT
            rec.data = struct.pack("<i", c.exit.wstatus)
            p.system.reap(c)
            return c.pid
    if options & WNOHANG:
        return 0
    raise WouldBlock(p.wait_chldexit, f"wait4({pid}) for a running child")


def sys_sched_yield(p: "Process", ctx: CallContext, rec: SyscallRecord) -> int:
    return 0


def sys_getcpu(p: "Process", ctx: CallContext, rec: SyscallRecord) -> int:
    for addr in rec.args[:2]:
        if addr and not put_user(p, ctx, addr, struct.pack("<I", 0), rec.rip, "getcpu:put_user"):
            return -EFAULT
    return 0


def sys_sched_getaffinity(p: "Process", ctx: CallContext, rec: SyscallRecord) -> int:
    """One CPU: the mask has bit 0; the kernel writes (and returns) the
    bytes of a cpumask, whole longs."""
    pid, size, mask = int_arg(rec.args[0]), rec.args[1], rec.args[2]
    if pid not in (0, p.pid) and pid not in p.system.procs:
        return -ESRCH
    if size < 8 or size & 7:
        return -EINVAL
    return 8 if put_user(p, ctx, mask, struct.pack("<Q", 1), rec.rip, "sched_getaffinity") else -EFAULT


def sys_sched_setaffinity(p: "Process", ctx: CallContext, rec: SyscallRecord) -> int:
    pid, size, mask = int_arg(rec.args[0]), rec.args[1], rec.args[2]
    if pid not in (0, p.pid) and pid not in p.system.procs:
        return -ESRCH
    raw = get_user(p, mask, min(size, 8))
    if raw is None:
        return -EFAULT
    return 0 if int.from_bytes(raw, "little") & 1 else -EINVAL
