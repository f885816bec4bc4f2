"""A thin ctypes layer over the few kernel interfaces the native twin needs.

ptrace(2) requests, waitpid status decoding, the x86-64 `user_regs_struct`,
process_vm_readv/writev, pidfd_open and process_madvise.  Nothing here holds
state; the Tracee (tracee.py) owns a pid and calls these.

Why not python-ptrace: it fits (ctypes, same requests) but its per-stop cost is
what the sweep pays a million times over, and it has no pidfd or
process_madvise; the subset we need is these ~150 lines (see the package
docstring for the measured comparison).
"""
from __future__ import annotations

import ctypes
import errno
import os

# <sys/ptrace.h> requests (x86-64 numbering).
PTRACE_TRACEME = 0
PTRACE_PEEKDATA = 2
PTRACE_POKEDATA = 5
PTRACE_CONT = 7
PTRACE_KILL = 8
PTRACE_SINGLESTEP = 9
PTRACE_GETREGS = 12
PTRACE_SETREGS = 13
PTRACE_GETFPREGS = 14
PTRACE_SETFPREGS = 15
PTRACE_SYSCALL = 24
PTRACE_SETOPTIONS = 0x4200
PTRACE_GETEVENTMSG = 0x4201

PTRACE_O_TRACESYSGOOD = 0x1
PTRACE_O_TRACEFORK = 0x2
PTRACE_O_EXITKILL = 0x100000      # the kernel SIGKILLs every tracee if the tracer goes away

PTRACE_EVENT_FORK = 1

SYSCALL_STOP = 0x80 | 5           # SIGTRAP | 0x80 under PTRACE_O_TRACESYSGOOD

NR_fork = 57
NR_mmap = 9
NR_munmap = 11
NR_exit = 60
NR_process_vm_readv = 310
NR_process_vm_writev = 311
NR_pidfd_open = 434
NR_process_madvise = 440

MADV_PAGEOUT = 21

__WALL = 0x40000000

_libc = ctypes.CDLL(None, use_errno=True)
_ptrace = _libc.ptrace
_ptrace.restype = ctypes.c_long
_ptrace.argtypes = [ctypes.c_long, ctypes.c_long, ctypes.c_void_p, ctypes.c_void_p]
_syscall = _libc.syscall
_syscall.restype = ctypes.c_long


class PtraceError(OSError):
    pass


class UserRegs(ctypes.Structure):
    """struct user_regs_struct (arch/x86/include/asm/user_64.h), field order matters."""
    _fields_ = [(n, ctypes.c_uint64) for n in (
        "r15", "r14", "r13", "r12", "rbp", "rbx", "r11", "r10", "r9", "r8", "rax", "rcx", "rdx", "rsi",
        "rdi", "orig_rax", "rip", "cs", "eflags", "rsp", "ss", "fs_base", "gs_base", "ds", "es", "fs", "gs")]

    def copy(self) -> "UserRegs":
        r = UserRegs()
        ctypes.pointer(r)[0] = self
        return r

    def as_dict(self) -> dict[str, int]:
        return {n: getattr(self, n) for n, _ in self._fields_}


FPREGS_SIZE = 512                 # struct user_fpregs_struct: the FXSAVE image (x87, MXCSR, xmm0-15)


class _IoVec(ctypes.Structure):
    _fields_ = [("base", ctypes.c_void_p), ("len", ctypes.c_size_t)]


def _check(ret: int, what: str, pid: int) -> int:
    if ret == -1:
        e = ctypes.get_errno()
        if e:
            raise PtraceError(e, f"{what}(pid {pid}): {os.strerror(e)}")
    return ret


def ptrace(req: int, pid: int, addr: int = 0, data: int = 0) -> int:
    ctypes.set_errno(0)
    return _check(_ptrace(req, pid, addr, data), f"ptrace({req})", pid)


def traceme() -> None:
    ptrace(PTRACE_TRACEME, 0)


def set_options(pid: int, opts: int) -> None:
    ptrace(PTRACE_SETOPTIONS, pid, 0, opts)


def get_regs(pid: int) -> UserRegs:
    r = UserRegs()
    ptrace(PTRACE_GETREGS, pid, 0, ctypes.addressof(r))
    return r


def set_regs(pid: int, regs: UserRegs) -> None:
    ptrace(PTRACE_SETREGS, pid, 0, ctypes.addressof(regs))


def get_fpregs(pid: int) -> bytes:
    buf = ctypes.create_string_buffer(FPREGS_SIZE)
    ptrace(PTRACE_GETFPREGS, pid, 0, ctypes.addressof(buf))
    return buf.raw


def set_fpregs(pid: int, raw: bytes) -> None:
    buf = ctypes.create_string_buffer(raw, FPREGS_SIZE)
    ptrace(PTRACE_SETFPREGS, pid, 0, ctypes.addressof(buf))


def singlestep(pid: int, sig: int = 0) -> None:
    ptrace(PTRACE_SINGLESTEP, pid, 0, sig)


def cont(pid: int, sig: int = 0) -> None:
    ptrace(PTRACE_CONT, pid, 0, sig)


def cont_syscall(pid: int, sig: int = 0) -> None:
    ptrace(PTRACE_SYSCALL, pid, 0, sig)


def event_msg(pid: int) -> int:
    v = ctypes.c_ulong()
    ptrace(PTRACE_GETEVENTMSG, pid, 0, ctypes.addressof(v))
    return v.value


def read_mem(pid: int, addr: int, n: int) -> bytes:
    """n bytes of the tracee's memory (process_vm_readv: one syscall, no page
    faults in the tracee: a not-present anonymous page reads as zeros)."""
    if n <= 0:
        return b""
    buf = ctypes.create_string_buffer(n)
    local = _IoVec(ctypes.addressof(buf), n)
    remote = _IoVec(addr, n)
    ctypes.set_errno(0)
    got = _syscall(NR_process_vm_readv, ctypes.c_long(pid), ctypes.byref(local), ctypes.c_ulong(1),
                   ctypes.byref(remote), ctypes.c_ulong(1), ctypes.c_ulong(0))
    _check(got, f"process_vm_readv({addr:#x}, {n})", pid)
    if got != n:
        raise PtraceError(errno.EFAULT, f"process_vm_readv(pid {pid}, {addr:#x}, {n}): short read {got}")
    return buf.raw


def write_mem(pid: int, addr: int, data: bytes) -> None:
    """Write into the tracee (process_vm_writev; a not-present page is faulted
    in as the tracee's own write would)."""
    if not data:
        return
    buf = ctypes.create_string_buffer(bytes(data), len(data))
    local = _IoVec(ctypes.addressof(buf), len(data))
    remote = _IoVec(addr, len(data))
    ctypes.set_errno(0)
    got = _syscall(NR_process_vm_writev, ctypes.c_long(pid), ctypes.byref(local), ctypes.c_ulong(1),
                   ctypes.byref(remote), ctypes.c_ulong(1), ctypes.c_ulong(0))
    _check(got, f"process_vm_writev({addr:#x}, {len(data)})", pid)
    if got != len(data):
        raise PtraceError(errno.EFAULT, f"process_vm_writev(pid {pid}, {addr:#x}): short write {got}")


def poke_text(pid: int, addr: int, data: bytes) -> None:
    """Write into a read-only (text) mapping: PTRACE_POKEDATA forces the write
    through FOLL_FORCE, which process_vm_writev does not."""
    for off in range(0, len(data), 8):
        chunk = data[off:off + 8]
        if len(chunk) < 8:
            ctypes.set_errno(0)
            word = _ptrace(PTRACE_PEEKDATA, pid, addr + off, 0)
            _check(word, "ptrace(PEEKDATA)", pid)
            old = (word & 0xFFFF_FFFF_FFFF_FFFF).to_bytes(8, "little")
            chunk = chunk + old[len(chunk):]
        ptrace(PTRACE_POKEDATA, pid, addr + off, int.from_bytes(chunk, "little"))


def pidfd_open(pid: int) -> int:
    ctypes.set_errno(0)
    return _check(_syscall(NR_pidfd_open, ctypes.c_long(pid), ctypes.c_uint(0)), "pidfd_open", pid)


def process_madvise(pidfd: int, addr: int, length: int, advice: int) -> int:
    """process_madvise(2) of one range; returns the bytes advised."""
    iov = _IoVec(addr, length)
    ctypes.set_errno(0)
    ret = _syscall(NR_process_madvise, ctypes.c_int(pidfd), ctypes.byref(iov), ctypes.c_ulong(1),
                   ctypes.c_int(advice), ctypes.c_uint(0))
    return _check(ret, f"process_madvise({addr:#x}, {length}, {advice})", pidfd)


def wait(pid: int, flags: int = 0) -> tuple[int, int]:
    """waitpid(pid, __WALL | flags) -> (pid, status); (0, 0) with WNOHANG and nothing to report."""
    return os.waitpid(pid, __WALL | flags)


def stop_sig(status: int) -> int:
    """The stop signal of a ptrace-stop, with the 0x80 syscall-stop bit; 0 if not stopped."""
    return (status >> 8) & 0xFF if os.WIFSTOPPED(status) else 0


def stop_event(status: int) -> int:
    """PTRACE_EVENT_* of an event stop (status>>16), else 0."""
    return (status >> 16) & 0xFF if os.WIFSTOPPED(status) else 0
