"""sys_call_table for a whole program (`faultpath exec`): the syscalls glibc's
loader, its start-up and a single-threaded program make, with Linux's
numbers (arch/x86/entry/syscalls/syscall_64.tbl).  Anything else returns
-ENOSYS and is counted in the process's `unimplemented` list, which the
report prints."""
from __future__ import annotations

from typing import TYPE_CHECKING

from emulator.records import CallContext, SyscallRecord
from emulator import sys_files as files
from emulator import sys_getrandom as getrandom
from emulator import sys_mm as mm
from emulator import sys_process as process
from emulator import sys_signal as signals
from emulator import sys_time as clock
from emulator.syscall_abi import SyscallTable
from emulator.syscall_names import NUMBERS

if TYPE_CHECKING:
    from emulator.process import Process

_HANDLERS = {
    # memory
    "brk": mm.sys_brk, "mmap": mm.sys_mmap_pgoff, "munmap": mm.sys_munmap, "mprotect": mm.sys_mprotect,
    "madvise": mm.sys_madvise, "mremap": mm.sys_mremap,
    # files
    "read": files.sys_read, "write": files.sys_write, "open": files.sys_open, "openat": files.sys_openat,
    "close": files.sys_close, "pread64": files.sys_pread64, "readv": files.sys_readv,
    "writev": files.sys_writev, "lseek": files.sys_lseek, "fstat": files.sys_fstat, "stat": files.sys_stat,
    "lstat": files.sys_lstat, "newfstatat": files.sys_newfstatat, "access": files.sys_access,
    "faccessat": files.sys_faccessat, "faccessat2": files.sys_faccessat, "readlink": files.sys_readlink,
    "readlinkat": files.sys_readlinkat, "getcwd": files.sys_getcwd, "chdir": files.sys_chdir,
    "pipe": files.sys_pipe, "pipe2": files.sys_pipe2, "dup": files.sys_dup, "dup2": files.sys_dup2,
    "dup3": files.sys_dup3, "fcntl": files.sys_fcntl, "ioctl": files.sys_ioctl,
    # process
    "getpid": process.sys_getpid, "gettid": process.sys_gettid, "getppid": process.sys_getppid,
    "getuid": process.sys_getuid, "geteuid": process.sys_getuid, "getgid": process.sys_getgid,
    "getegid": process.sys_getgid, "arch_prctl": process.sys_arch_prctl,
    "set_tid_address": process.sys_set_tid_address, "set_robust_list": process.sys_set_robust_list,
    "rseq": process.sys_rseq, "prlimit64": process.sys_prlimit64, "getrlimit": process.sys_getrlimit,
    "uname": process.sys_uname, "clone": process.sys_clone, "clone3": process.sys_clone3,
    "fork": process.sys_fork, "vfork": process.sys_vfork, "wait4": process.sys_wait4,
    "exit": process.sys_exit_group, "exit_group": process.sys_exit_group,
    "sched_yield": process.sys_sched_yield, "getcpu": process.sys_getcpu,
    "sched_getaffinity": process.sys_sched_getaffinity, "sched_setaffinity": process.sys_sched_setaffinity,
    # signals
    "rt_sigaction": signals.sys_rt_sigaction, "rt_sigprocmask": signals.sys_rt_sigprocmask,
    "rt_sigreturn": signals.sys_rt_sigreturn, "rt_sigpending": signals.sys_rt_sigpending,
    "sigaltstack": signals.sys_sigaltstack, "kill": signals.sys_kill, "tgkill": signals.sys_tgkill,
    "tkill": signals.sys_tkill,
    # random, time
    "getrandom": getrandom.sys_getrandom,
    "clock_gettime": clock.sys_clock_gettime, "clock_getres": clock.sys_clock_getres,
    "gettimeofday": clock.sys_gettimeofday, "time": clock.sys_time, "nanosleep": clock.sys_nanosleep,
    "clock_nanosleep": clock.sys_clock_nanosleep,
}


def _entry_work(p: "Process", ctx: CallContext, rec: SyscallRecord) -> None:
    """syscall_enter_from_user_mode: what tools hooked on syscall entry
    (injections due at the K-th call of a kind)."""
    for hook in list(p.syscall_hooks):
        hook(p, rec)


def _exit_work(p: "Process", ctx: CallContext, rec: SyscallRecord) -> None:
    """syscall_exit_to_user_mode: note what is not implemented, let
    observers see the completed call, then deliver pending signals."""
    if rec.nr not in PROCESS_SYSCALLS.calls:
        p.unimplemented[rec.name] = p.unimplemented.get(rec.name, 0) + 1
    for o in p.observers:
        o.on_syscall(p, rec)
    p.exit_to_user_mode(ctx)


PROCESS_SYSCALLS = SyscallTable(
    "process",
    {NUMBERS[name]: (name, fn) for name, fn in _HANDLERS.items()},
    entry_work=_entry_work,
    exit_work=_exit_work,
)
