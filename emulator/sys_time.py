"""Time for an emulated process (kernel/time/posix-timers.c, hrtimer.c):
deterministic, derived from the emulated cycles as the TSC is
(emulator/cpuid.py).  CLOCK_MONOTONIC starts at the process's boot-time
offset; CLOCK_REALTIME at a fixed date, so the same run reads the same
times."""
from __future__ import annotations

import struct
from typing import TYPE_CHECKING

from emulator.cpuid import TSC_AT_EXEC, TSC_HZ
from emulator.records import CallContext, SyscallRecord
from emulator.syscall_abi import EFAULT, EINVAL, get_user, int_arg, put_user

if TYPE_CHECKING:
    from emulator.process import Process

REALTIME_AT_BOOT = 1_735_689_600            # 2025-01-01T00:00:00Z
CLOCK_REALTIME, CLOCK_MONOTONIC, CLOCK_PROCESS_CPUTIME_ID, CLOCK_THREAD_CPUTIME_ID = 0, 1, 2, 3
CLOCK_MONOTONIC_RAW, CLOCK_REALTIME_COARSE, CLOCK_MONOTONIC_COARSE, CLOCK_BOOTTIME = 4, 5, 6, 7
_CLOCKS = {CLOCK_REALTIME, CLOCK_MONOTONIC, CLOCK_PROCESS_CPUTIME_ID, CLOCK_THREAD_CPUTIME_ID,
           CLOCK_MONOTONIC_RAW, CLOCK_REALTIME_COARSE, CLOCK_MONOTONIC_COARSE, CLOCK_BOOTTIME}


def now_ns(p: "Process", clock: int) -> int:
    tsc = p._tsc()
    if clock in (CLOCK_PROCESS_CPUTIME_ID, CLOCK_THREAD_CPUTIME_ID):
        return (tsc - TSC_AT_EXEC) * 1_000_000_000 // TSC_HZ
    mono = tsc * 1_000_000_000 // TSC_HZ
    if clock in (CLOCK_REALTIME, CLOCK_REALTIME_COARSE):
        return REALTIME_AT_BOOT * 1_000_000_000 + mono
    return mono


def sys_clock_gettime(p: "Process", ctx: CallContext, rec: SyscallRecord) -> int:
    clock = int_arg(rec.args[0])
    if clock not in _CLOCKS:
        return -EINVAL
    ns = now_ns(p, clock)
    ts = struct.pack("<qq", ns // 1_000_000_000, ns % 1_000_000_000)
    return 0 if put_user(p, ctx, rec.args[1], ts, rec.rip, "clock_gettime:put_timespec") else -EFAULT


def sys_clock_getres(p: "Process", ctx: CallContext, rec: SyscallRecord) -> int:
    if int_arg(rec.args[0]) not in _CLOCKS:
        return -EINVAL
    if rec.args[1] and not put_user(p, ctx, rec.args[1], struct.pack("<qq", 0, 1), rec.rip, "clock_getres"):
        return -EFAULT
    return 0


def sys_gettimeofday(p: "Process", ctx: CallContext, rec: SyscallRecord) -> int:
    if rec.args[0]:
        ns = now_ns(p, CLOCK_REALTIME)
        tv = struct.pack("<qq", ns // 1_000_000_000, ns % 1_000_000_000 // 1000)
        if not put_user(p, ctx, rec.args[0], tv, rec.rip, "gettimeofday"):
            return -EFAULT
    return 0


def sys_time(p: "Process", ctx: CallContext, rec: SyscallRecord) -> int:
    t = now_ns(p, CLOCK_REALTIME) // 1_000_000_000
    if rec.args[0] and not put_user(p, ctx, rec.args[0], struct.pack("<q", t), rec.rip, "time"):
        return -EFAULT
    return t


def sys_nanosleep(p: "Process", ctx: CallContext, rec: SyscallRecord) -> int:
    """Time does not pass while nothing runs: a sleep returns at once."""
    if get_user(p, rec.args[0], 16) is None:
        return -EFAULT
    return 0


def sys_clock_nanosleep(p: "Process", ctx: CallContext, rec: SyscallRecord) -> int:
    if int_arg(rec.args[0]) not in _CLOCKS:
        return -EINVAL
    return 0 if get_user(p, rec.args[2], 16) is not None else -EFAULT
