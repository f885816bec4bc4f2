"""The emulated process's syscalls, signals and exit in strace's notation
(strace 6.x with ``-s 64``), so that emulator/exec/strace.py normalises
them exactly as it does a native trace.

Arguments are read from the emulated memory *after* the syscall returned
(what strace does at syscall exit for output arguments; input strings and
structures are still there).  Memory is peeked (Task.read), never faulted.
"""
from __future__ import annotations

import os
import struct
from typing import TYPE_CHECKING, Callable

from emulator.exec.strace import Event
from emulator.signal import NSIG, SIGRTMIN, signame
from emulator.syscall_abi import int_arg, signed
from mm import flags as F

if TYPE_CHECKING:
    from emulator.process import Process
    from emulator.records import SyscallRecord
    from emulator.signal import KSignal

STRSIZE = 64
AT_FDCWD = -100

PROT_NAMES = ((F.PROT_READ, "PROT_READ"), (F.PROT_WRITE, "PROT_WRITE"), (F.PROT_EXEC, "PROT_EXEC"),
         (F.PROT_GROWSDOWN, "PROT_GROWSDOWN"), (F.PROT_GROWSUP, "PROT_GROWSUP"))
_MAP_TYPE = {F.MAP_SHARED: "MAP_SHARED", F.MAP_PRIVATE: "MAP_PRIVATE", F.MAP_SHARED_VALIDATE: "MAP_SHARED_VALIDATE"}
MAP_FLAG_NAMES = ((F.MAP_FIXED, "MAP_FIXED"), (F.MAP_ANONYMOUS, "MAP_ANONYMOUS"), (0x40, "MAP_32BIT"),
              (F.MAP_GROWSDOWN, "MAP_GROWSDOWN"), (F.MAP_DENYWRITE, "MAP_DENYWRITE"),
              (F.MAP_EXECUTABLE, "MAP_EXECUTABLE"), (F.MAP_LOCKED, "MAP_LOCKED"),
              (F.MAP_NORESERVE, "MAP_NORESERVE"), (F.MAP_POPULATE, "MAP_POPULATE"),
              (F.MAP_NONBLOCK, "MAP_NONBLOCK"), (F.MAP_STACK, "MAP_STACK"), (F.MAP_HUGETLB, "MAP_HUGETLB"),
              (F.MAP_SYNC, "MAP_SYNC"), (F.MAP_FIXED_NOREPLACE, "MAP_FIXED_NOREPLACE"),
              (F.MAP_UNINITIALIZED, "MAP_UNINITIALIZED"))
_OPEN_FLAGS = ((0o100, "O_CREAT"), (0o200, "O_EXCL"), (0o400, "O_NOCTTY"), (0o1000, "O_TRUNC"),
               (0o2000, "O_APPEND"), (0o4000, "O_NONBLOCK"), (0o10000, "O_DSYNC"), (0o40000, "O_DIRECT"),
               (0o100000, "O_LARGEFILE"), (0o200000, "O_DIRECTORY"), (0o400000, "O_NOFOLLOW"),
               (0o1000000, "O_NOATIME"), (0o2000000, "O_CLOEXEC"), (0o10000000, "O_PATH"))
_MADV = {0: "MADV_NORMAL", 1: "MADV_RANDOM", 2: "MADV_SEQUENTIAL", 3: "MADV_WILLNEED", 4: "MADV_DONTNEED",
         8: "MADV_FREE", 9: "MADV_REMOVE", 10: "MADV_DONTFORK", 11: "MADV_DOFORK", 12: "MADV_MERGEABLE",
         13: "MADV_UNMERGEABLE", 14: "MADV_HUGEPAGE", 15: "MADV_NOHUGEPAGE", 16: "MADV_DONTDUMP",
         17: "MADV_DODUMP", 18: "MADV_WIPEONFORK", 19: "MADV_KEEPONFORK", 20: "MADV_COLD", 21: "MADV_PAGEOUT",
         22: "MADV_POPULATE_READ", 23: "MADV_POPULATE_WRITE", 24: "MADV_DONTNEED_LOCKED", 102: "MADV_GUARD_INSTALL",
         103: "MADV_GUARD_REMOVE"}
_GRND = ((1, "GRND_NONBLOCK"), (2, "GRND_RANDOM"), (4, "GRND_INSECURE"))
# strace's order (its sigact_flags table), not the bits' order.
_SA = ((0x04000000, "SA_RESTORER"), (0x08000000, "SA_ONSTACK"), (0x10000000, "SA_RESTART"),
       (0x40000000, "SA_NODEFER"), (0x80000000, "SA_RESETHAND"), (0x4, "SA_SIGINFO"), (0x1, "SA_NOCLDSTOP"),
       (0x2, "SA_NOCLDWAIT"))
_CLONE = ((0x100, "CLONE_VM"), (0x200, "CLONE_FS"), (0x400, "CLONE_FILES"), (0x800, "CLONE_SIGHAND"),
          (0x1000, "CLONE_PIDFD"), (0x2000, "CLONE_PTRACE"), (0x4000, "CLONE_VFORK"), (0x8000, "CLONE_PARENT"),
          (0x10000, "CLONE_THREAD"), (0x20000, "CLONE_NEWNS"), (0x40000, "CLONE_SYSVSEM"),
          (0x80000, "CLONE_SETTLS"), (0x100000, "CLONE_PARENT_SETTID"), (0x200000, "CLONE_CHILD_CLEARTID"),
          (0x400000, "CLONE_DETACHED"), (0x800000, "CLONE_UNTRACED"), (0x01000000, "CLONE_CHILD_SETTID"))
_RLIMITS = ("RLIMIT_CPU", "RLIMIT_FSIZE", "RLIMIT_DATA", "RLIMIT_STACK", "RLIMIT_CORE", "RLIMIT_RSS",
            "RLIMIT_NPROC", "RLIMIT_NOFILE", "RLIMIT_MEMLOCK", "RLIMIT_AS", "RLIMIT_LOCKS", "RLIMIT_SIGPENDING",
            "RLIMIT_MSGQUEUE", "RLIMIT_NICE", "RLIMIT_RTPRIO", "RLIMIT_RTTIME")
_ARCH_PRCTL = {0x1001: "ARCH_SET_GS", 0x1002: "ARCH_SET_FS", 0x1003: "ARCH_GET_FS", 0x1004: "ARCH_GET_GS"}
_HOW = {0: "SIG_BLOCK", 1: "SIG_UNBLOCK", 2: "SIG_SETMASK"}
_ACCESS = ((4, "R_OK"), (2, "W_OK"), (1, "X_OK"))
_FTYPES = ((0o140000, "S_IFSOCK"), (0o120000, "S_IFLNK"), (0o100000, "S_IFREG"), (0o060000, "S_IFBLK"),
           (0o040000, "S_IFDIR"), (0o020000, "S_IFCHR"), (0o010000, "S_IFIFO"))
_SI_CODES = {0: "SI_USER", 0x80: "SI_KERNEL", -6: "SI_TKILL", -1: "SI_QUEUE"}
_FAULT_CODES = {"SIGSEGV": {1: "SEGV_MAPERR", 2: "SEGV_ACCERR", 4: "SEGV_PKUERR"},
                "SIGBUS": {1: "BUS_ADRALN", 2: "BUS_ADRERR"}, "SIGILL": {2: "ILL_ILLOPN"},
                "SIGFPE": {1: "FPE_INTDIV", 2: "FPE_INTOVF"}, "SIGTRAP": {1: "TRAP_BRKPT"},
                "SIGCHLD": {1: "CLD_EXITED", 2: "CLD_KILLED", 3: "CLD_DUMPED"}}


def flags_text(v: int, table, zero: str = "0") -> str:
    parts = []
    for bit, name in table:
        if v & bit:
            parts.append(name)
            v &= ~bit
    if v:
        parts.append(hex(v))
    return "|".join(parts) if parts else zero


def addr(v: int) -> str:
    return "NULL" if v == 0 else hex(v)


def quote(data: bytes, limit: int | None = STRSIZE) -> str:
    """strace's string_quote: printable ASCII as is, C escapes, octal for the rest."""
    cut = limit is not None and len(data) > limit
    if cut:
        data = data[:limit]
    out = []
    for i, c in enumerate(data):
        if c == 0x22:
            out.append('\\"')
        elif c == 0x5C:
            out.append("\\\\")
        elif 0x20 <= c < 0x7F:
            out.append(chr(c))
        elif c in b"\f\n\r\t\v":
            out.append({0x0C: "\\f", 0x0A: "\\n", 0x0D: "\\r", 0x09: "\\t", 0x0B: "\\v"}[c])
        else:
            nxt = data[i + 1] if i + 1 < len(data) else None
            if nxt is not None and 0x30 <= nxt <= 0x37:
                out.append(f"\\{c:03o}")
            else:
                out.append(f"\\{c:o}")
    return '"' + "".join(out) + '"' + ("..." if cut else "")


def cstring(p: "Process", a: int, limit: int = 4096) -> bytes | None:
    if not a:
        return None
    out = bytearray()
    while len(out) < limit:
        chunk = p.read(a + len(out), min(256, limit - len(out)))
        nul = chunk.find(b"\0")
        if nul >= 0:
            return bytes(out + chunk[:nul])
        out += chunk
    return bytes(out)


def path(p: "Process", a: int) -> str:
    s = cstring(p, a)
    return addr(a) if s is None else quote(s, None)


def dirfd(v: int) -> str:
    v = int_arg(v)
    return "AT_FDCWD" if v == AT_FDCWD else str(v)


def sigset(mask: int) -> str:
    """[USR1 SEGV], or ~[...] naming what is missing when most are in."""
    mask &= (1 << NSIG) - 1
    def names(m: int) -> str:
        out = []
        for s in range(1, NSIG + 1):
            if m >> (s - 1) & 1:
                if s == SIGRTMIN:
                    out.append("RTMIN")
                elif s > SIGRTMIN:
                    out.append("RTMAX" if s == NSIG else f"RT_{s - SIGRTMIN}")
                else:
                    out.append(signame(s).removeprefix("SIG"))
        return " ".join(out)
    if bin(mask).count("1") > NSIG // 2:
        return "~[" + names(~mask & ((1 << NSIG) - 1)) + "]"
    return "[" + names(mask) + "]"


def mode_text(mode: int) -> str:
    for bits, name in _FTYPES:
        if mode & 0o170000 == bits:
            return f"{name}|{mode & 0o7777:04o}"
    return f"{mode & 0o7777:04o}"


def stat_text(raw: bytes) -> str:
    mode = struct.unpack_from("<I", raw, 24)[0]
    size = struct.unpack_from("<q", raw, 48)[0]
    return f"{{st_mode={mode_text(mode)}, st_size={size}, ...}}"


def ret_text(rec: "SyscallRecord", kind: str = "int") -> str:
    r = rec.ret
    if isinstance(r, int) and -4096 < r < 0:
        e = -r
        name = _ERRNAMES.get(e, str(e))
        return f"-1 {name} ({os.strerror(e)})"
    if kind == "addr":
        return hex(r)
    return str(r)


_ERRNAMES = {1: "EPERM", 2: "ENOENT", 3: "ESRCH", 4: "EINTR", 5: "EIO", 9: "EBADF", 10: "ECHILD", 11: "EAGAIN",
             12: "ENOMEM", 13: "EACCES", 14: "EFAULT", 16: "EBUSY", 17: "EEXIST", 19: "ENODEV", 20: "ENOTDIR",
             21: "EISDIR", 22: "EINVAL", 24: "EMFILE", 25: "ENOTTY", 29: "ESPIPE", 30: "EROFS", 32: "EPIPE",
             34: "ERANGE", 36: "ENAMETOOLONG", 38: "ENOSYS", 75: "EOVERFLOW", 95: "EOPNOTSUPP"}


def _ok(rec) -> bool:
    return not (isinstance(rec.ret, int) and rec.ret < 0)


def _data(p, rec, buf: int) -> str:
    """What a read-like call filled in (as strace shows it at exit)."""
    if not _ok(rec):
        return addr(buf)
    return quote(p.read(buf, min(rec.ret, STRSIZE + 1)))


# Each formatter: (process, record) -> (args text, return text).
def _fmt_mmap(p, rec):
    a, ln, prot, flags, fd, off = rec.args
    flags &= 0xFFFF_FFFF
    typ = flags & F.MAP_TYPE
    kind = _MAP_TYPE.get(typ, f"{typ:#x} /* MAP_??? */" if typ else "")
    rest = flags_text(flags & ~F.MAP_TYPE, MAP_FLAG_NAMES, "")
    fl = "|".join(x for x in (kind, rest) if x) or "0"
    offset = f"{off:#x}" if off else "0"
    return (f"{addr(a)}, {ln}, {flags_text(prot & 0xFFFF_FFFF, PROT_NAMES, 'PROT_NONE')}, {fl}, "
            f"{int_arg(fd)}, {offset}"), ret_text(rec, "addr")


_FORMATS: dict[str, Callable] = {
    "brk": lambda p, r: (addr(r.args[0]), ret_text(r, "addr")),
    "mmap": _fmt_mmap,
    "munmap": lambda p, r: (f"{hex(r.args[0])}, {r.args[1]}", ret_text(r)),
    "mprotect": lambda p, r: (f"{hex(r.args[0])}, {r.args[1]}, {flags_text(r.args[2], PROT_NAMES, 'PROT_NONE')}",
                              ret_text(r)),
    "madvise": lambda p, r: (f"{hex(r.args[0])}, {r.args[1]}, {_MADV.get(r.args[2], hex(r.args[2]))}",
                             ret_text(r)),
    "access": lambda p, r: (f"{path(p, r.args[0])}, {flags_text(r.args[1] & 7, _ACCESS, 'F_OK')}", ret_text(r)),
    "openat": lambda p, r: (f"{dirfd(r.args[0])}, {path(p, r.args[1])}, {_open_flags(r.args[2])}"
                            + (f", {r.args[3]:#o}" if r.args[2] & 0o100 else ""), ret_text(r)),
    "open": lambda p, r: (f"{path(p, r.args[0])}, {_open_flags(r.args[1])}", ret_text(r)),
    "newfstatat": lambda p, r: (f"{dirfd(r.args[0])}, {path(p, r.args[1])}, "
                                f"{stat_text(r.data) if _ok(r) and r.data else hex(r.args[2])}, "
                                f"{_at_flags(r.args[3])}", ret_text(r)),
    "fstat": lambda p, r: (f"{signed(r.args[0])}, {stat_text(r.data) if _ok(r) and r.data else hex(r.args[1])}",
                           ret_text(r)),
    "read": lambda p, r: (f"{signed(r.args[0])}, {_data(p, r, r.args[1])}, {r.args[2]}", ret_text(r)),
    "pread64": lambda p, r: (f"{signed(r.args[0])}, {_data(p, r, r.args[1])}, {r.args[2]}, {r.args[3]}",
                             ret_text(r)),
    "write": lambda p, r: (f"{signed(r.args[0])}, {quote(r.data) if r.data else addr(r.args[1])}, {r.args[2]}",
                           ret_text(r)),
    "close": lambda p, r: (str(signed(r.args[0])), ret_text(r)),
    "arch_prctl": lambda p, r: (f"{_ARCH_PRCTL.get(r.args[0], hex(r.args[0]))}, {hex(r.args[1])}", ret_text(r)),
    "set_tid_address": lambda p, r: (addr(r.args[0]), ret_text(r)),
    "set_robust_list": lambda p, r: (f"{addr(r.args[0])}, {r.args[1]}", ret_text(r)),
    "rseq": lambda p, r: (f"{addr(r.args[0])}, {r.args[1]:#x}, {r.args[2]}, {r.args[3]:#x}", ret_text(r)),
    "prlimit64": lambda p, r: _fmt_prlimit(p, r),
    "rt_sigprocmask": lambda p, r: (f"{_HOW.get(r.args[0], str(r.args[0]))}, {_set_at(p, r.args[1])}, "
                                    f"{_set_at(p, r.args[2]) if _ok(r) else addr(r.args[2])}, {r.args[3]}",
                                    ret_text(r)),
    "rt_sigaction": lambda p, r: (f"{signame(r.args[0])}, {_sigaction_at(p, r.args[1])}, "
                                  f"{_sigaction_at(p, r.args[2]) if _ok(r) else addr(r.args[2])}, {r.args[3]}",
                                  ret_text(r)),
    "rt_sigreturn": lambda p, r: (f"{{mask={sigset(p.sig.blocked)}}}", ret_text(r)),
    "getrandom": lambda p, r: (f"{_data(p, r, r.args[0])}, {r.args[1]}, {flags_text(r.args[2], _GRND)}",
                               ret_text(r)),
    "exit_group": lambda p, r: (str(signed(r.args[0])), "?"),
    "exit": lambda p, r: (str(signed(r.args[0])), "?"),
    "readlinkat": lambda p, r: (f"{dirfd(r.args[0])}, {path(p, r.args[1])}, "
                                f"{quote(r.data, None) if _ok(r) else hex(r.args[2])}, {r.args[3]}", ret_text(r)),
    "pipe2": lambda p, r: _fmt_pipe2(p, r),
    "clone": lambda p, r: (f"child_stack={addr(r.args[1])}, flags={_clone_flags(r.args[0])}"
                           + (f", child_tidptr={hex(r.args[3])}" if r.args[0] & 0x01200000 else ""), ret_text(r)),
    "wait4": lambda p, r: (f"{signed(r.args[0])}, {_wstatus(r)}, {_wait_opts(r.args[2])}, {addr(r.args[3])}",
                           ret_text(r)),
    "getpid": lambda p, r: ("", ret_text(r)),
    "gettid": lambda p, r: ("", ret_text(r)),
    "getppid": lambda p, r: ("", ret_text(r)),
    "tgkill": lambda p, r: (f"{signed(r.args[0])}, {signed(r.args[1])}, {signame(r.args[2])}", ret_text(r)),
    "kill": lambda p, r: (f"{signed(r.args[0])}, {signame(r.args[1])}", ret_text(r)),
}


def _fmt_pipe2(p, r):
    fds = f"[{', '.join(map(str, struct.unpack('<ii', r.data)))}]" if _ok(r) and r.data else hex(r.args[0])
    return f"{fds}, {_open_flags(r.args[1]) if r.args[1] else 0}", ret_text(r)


def _open_flags(v: int) -> str:
    acc = ("O_RDONLY", "O_WRONLY", "O_RDWR", "O_ACCMODE")[v & 3]
    rest = flags_text(v & ~3 & 0xFFFF_FFFF, _OPEN_FLAGS, "")
    return acc + ("|" + rest if rest else "")


def _at_flags(v: int) -> str:
    return flags_text(v, ((0x100, "AT_SYMLINK_NOFOLLOW"), (0x800, "AT_NO_AUTOMOUNT"), (0x1000, "AT_EMPTY_PATH")))


def _set_at(p, a: int) -> str:
    if not a:
        return "NULL"
    return sigset(struct.unpack("<Q", p.read(a, 8))[0])


def _sigaction_at(p, a: int) -> str:
    if not a:
        return "NULL"
    h, fl, rest, mask = struct.unpack("<QQQQ", p.read(a, 32))
    hs = {0: "SIG_DFL", 1: "SIG_IGN"}.get(h, hex(h))
    s = f"{{sa_handler={hs}, sa_mask={sigset(mask)}, sa_flags={flags_text(fl, _SA)}"
    if fl & 0x04000000:
        s += f", sa_restorer={hex(rest)}"
    return s + "}"


def _fmt_prlimit(p, r):
    res = r.args[1]
    name = _RLIMITS[res] if res < len(_RLIMITS) else str(res)
    def lim(a: int) -> str:
        if not a:
            return "NULL"
        cur, mx = struct.unpack("<QQ", p.read(a, 16))
        return f"{{rlim_cur={_rlim(cur)}, rlim_max={_rlim(mx)}}}"
    old = lim(r.args[3]) if _ok(r) else addr(r.args[3])
    return f"{signed(r.args[0])}, {name}, {lim(r.args[2])}, {old}", ret_text(r)


def _rlim(v: int) -> str:
    if v == (1 << 64) - 1:
        return "RLIM64_INFINITY"
    if v and v % 1024 == 0:
        return f"{v // 1024}*1024"
    return str(v)


def _clone_flags(v: int) -> str:
    sig = v & 0xFF
    s = flags_text(v & ~0xFF, _CLONE, "")
    parts = [x for x in (s, signame(sig) if sig else "") if x]
    return "|".join(parts) or "0"


def _wstatus(r) -> str:
    if not _ok(r) or not r.data:
        return addr(r.args[1])
    st = struct.unpack("<i", r.data)[0]
    if st & 0x7F == 0:
        return f"[{{WIFEXITED(s) && WEXITSTATUS(s) == {(st >> 8) & 0xFF}}}]"
    return f"[{{WIFSIGNALED(s) && WTERMSIG(s) == {signame(st & 0x7F)}}}]"


def _wait_opts(v: int) -> str:
    return flags_text(v, ((1, "WNOHANG"), (2, "WSTOPPED"), (8, "WCONTINUED"), (0x40000000, "__WALL")))


def syscall_event(p: "Process", rec: "SyscallRecord") -> Event:
    fmt = _FORMATS.get(rec.name)
    if fmt is not None:
        args, ret = fmt(p, rec)
    else:
        args, ret = ", ".join(hex(a) for a in rec.args), ret_text(rec)
    return Event("syscall", rec.name, args, ret, raw=f"{rec.name}({args}) = {ret}")


def signal_event(p: "Process", k: "KSignal") -> Event:
    name = signame(k.signo)
    info = k.info
    code = _FAULT_CODES.get(name, {}).get(info.code) if info.addr is not None or name == "SIGCHLD" else None
    code = code or _SI_CODES.get(info.code, str(info.code))
    body = f"si_signo={name}, si_code={code}"
    if info.addr is not None:
        body += f", si_addr={addr(info.addr)}"
    elif name == "SIGCHLD":
        body += f", si_pid={info.pid}, si_uid={info.uid}, si_status={info.status}, si_utime=0, si_stime=0"
    elif info.code in (0, -6):
        body += f", si_pid={info.pid}, si_uid={info.uid}"
    return Event("signal", name, "{" + body + "}", raw=f"--- {name} {{{body}}} ---")


def exit_event(p: "Process") -> Event:
    if p.exit.signal is not None:
        return Event("exit", "killed", f"by {signame(p.exit.signal)}")
    return Event("exit", "exited", f"with {p.exit.code or 0}")
