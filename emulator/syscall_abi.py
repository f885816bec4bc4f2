"""What every syscall handler shares: errno values, the table type, the two
ways a handler may leave the CPU other than by returning a value, and small
user-memory helpers.

A handler is `fn(task, ctx, rec) -> int`: it returns what the syscall
returns (a value or -errno), and do_syscall (emulator/syscalls.py)
puts it in rax as the kernel's syscall exit does.  Two exceptions to that:

- a handler that cannot complete now (a read of an empty pipe, wait4 on a
  running child) raises WouldBlock: the task sleeps on a wait queue and, as
  with -ERESTARTSYS, the `syscall` instruction runs again when it is woken;
- rt_sigreturn loads every register from the signal frame and returns
  REGS_RESTORED, so that nothing overwrites rax, rcx or r11 afterwards.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable

from mm.flags import EACCES, EAGAIN, EBADF, EEXIST, EFAULT, EINVAL, ENODEV, ENOENT, ENOMEM, EPERM  # noqa: F401

if TYPE_CHECKING:
    from emulator.records import CallContext, SyscallRecord
    from emulator.task import Task

# include/uapi/asm-generic/errno-base.h and errno.h (values the handlers return).
ESRCH = 3
EINTR = 4
EIO = 5
ECHILD = 10
ENOTDIR = 20
EISDIR = 21
EMFILE = 24
ENOTTY = 25
ESPIPE = 29
EPIPE = 32
ERANGE = 34
ENAMETOOLONG = 36
ENOSYS = 38
ENOTSUP = 95

ERRNO_NAMES = {
    EPERM: "EPERM", ENOENT: "ENOENT", ESRCH: "ESRCH", EINTR: "EINTR", EIO: "EIO", EBADF: "EBADF",
    ECHILD: "ECHILD", EAGAIN: "EAGAIN", ENOMEM: "ENOMEM", EACCES: "EACCES", EFAULT: "EFAULT",
    EEXIST: "EEXIST", ENODEV: "ENODEV", ENOTDIR: "ENOTDIR", EISDIR: "EISDIR", EINVAL: "EINVAL",
    EMFILE: "EMFILE", ENOTTY: "ENOTTY", ESPIPE: "ESPIPE", EPIPE: "EPIPE", ERANGE: "ERANGE",
    ENAMETOOLONG: "ENAMETOOLONG", ENOSYS: "ENOSYS", 75: "EOVERFLOW", ENOTSUP: "EOPNOTSUPP",
}

U64 = (1 << 64) - 1
PATH_MAX = 4096


def signed(v: int) -> int:
    """A register as the kernel's `long`."""
    v &= U64
    return v - (1 << 64) if v >= 1 << 63 else v


def int_arg(v: int) -> int:
    """A register as the kernel's `int` (the upper half is ignored)."""
    v &= 0xFFFF_FFFF
    return v - (1 << 32) if v >= 1 << 31 else v


class WouldBlock(Exception):
    """The syscall must sleep: the task goes on `queue` and the syscall is
    restarted when something wakes it (like -ERESTARTSYS with the task
    blocked in wait_event)."""

    def __init__(self, queue: "WaitQueue", why: str):
        super().__init__(why)
        self.queue = queue
        self.why = why


@dataclass
class WaitQueue:
    """wait_queue_head_t: the tasks sleeping on one condition."""
    name: str
    sleepers: list = field(default_factory=list)

    def add(self, task) -> None:
        if task not in self.sleepers:
            self.sleepers.append(task)

    def wake_up(self) -> None:
        sleepers, self.sleepers = self.sleepers, []
        for t in sleepers:
            t.wake_up(self)


class _Restored:
    def __repr__(self) -> str:
        return "REGS_RESTORED"


REGS_RESTORED = _Restored()

Handler = Callable[["Task", "CallContext", "SyscallRecord"], int]


@dataclass
class SyscallTable:
    """sys_call_table plus the work the entry code does around it for one kind
    of task.  `entry_work(task, ctx, rec)` runs before the handler (tracing,
    injections due at this syscall), `exit_work(task, ctx, rec)` after it, on
    the way back to user mode (signal delivery)."""
    name: str
    calls: dict[int, tuple[str, Handler]]
    entry_work: Callable | None = None
    exit_work: Callable | None = None


def read_cstring(task, addr: int, limit: int = PATH_MAX) -> bytes | None:
    """strncpy_from_user(): the NUL-terminated string at addr, or None if it
    cannot be read (-EFAULT) or has no NUL within limit (-ENAMETOOLONG is the
    caller's to give: None either way here, with `toolong` set)."""
    from emulator.usercopy import copy_from_user
    out = bytearray()
    while len(out) < limit:
        a = addr + len(out)
        chunk = copy_from_user(task, a, min(limit - len(out), 4096 - (a & 4095)))
        if not chunk:
            return None
        nul = chunk.find(b"\0")
        if nul >= 0:
            return bytes(out + chunk[:nul])
        out += chunk
    return None


def put_user(task, ctx, addr: int, data: bytes, rip: int, what: str) -> bool:
    """copy_to_user() that reports whether every byte arrived."""
    from emulator.usercopy import copy_to_user
    return copy_to_user(task, ctx, addr, data, rip, what).copied == len(data)


def get_user(task, addr: int, n: int) -> bytes | None:
    from emulator.usercopy import copy_from_user
    b = copy_from_user(task, addr, n)
    return b if len(b) == n else None
