"""File syscalls of an emulated process: open, read, write, stat, close and
friends, over the read-only, confined view of emulator/vfs.py and the open
files of emulator/fdtable.py (fs/open.c, fs/read_write.c, fs/stat.c,
fs/namei.c, fs/pipe.c, fs/fcntl.c)."""
from __future__ import annotations

import functools
import os
import struct
from typing import TYPE_CHECKING

from emulator.fdtable import (FD_CLOEXEC, NR_OPEN, O_ACCMODE, O_CLOEXEC, O_CREAT, O_DIRECTORY, O_NONBLOCK,
                              O_RDONLY, O_TRUNC, HostDir, HostFile, OpenFile, Pipe, PipeEnd, ProcFile, Stat)
from emulator.records import CallContext, SyscallRecord
from emulator.syscall_abi import (EACCES, EBADF, EFAULT, EINVAL, EISDIR, ENAMETOOLONG, ENOENT, ENOTDIR,
                                      ENOTTY, ESPIPE, get_user, int_arg, put_user, read_cstring, signed)
from emulator.vfs import AT_EMPTY_PATH, AT_FDCWD, AT_SYMLINK_NOFOLLOW, EROFS, Lookup, path_lookup

if TYPE_CHECKING:
    from emulator.process import Process

MAX_RW_COUNT = 0x7FFFF000
R_OK, W_OK, X_OK = 4, 2, 1
SEEK_SET, SEEK_CUR, SEEK_END = 0, 1, 2
F_DUPFD, F_GETFD, F_SETFD, F_GETFL, F_SETFL, F_DUPFD_CLOEXEC = 0, 1, 2, 3, 4, 1030
IOV_MAX = 1024


def fdget(handler):
    """The kernel's fdget() for handlers whose first argument is a descriptor:
    they get its open file, or the call is -EBADF."""
    @functools.wraps(handler)
    def with_file(p: "Process", ctx: CallContext, rec: SyscallRecord) -> int:
        f = p.files.get(int_arg(rec.args[0]))
        return -EBADF if f is None else handler(p, ctx, rec, f)
    return with_file


def _path(p: "Process", addr: int) -> bytes | int:
    s = read_cstring(p, addr)
    if s is None:
        return -ENAMETOOLONG if get_user(p, addr, 1) is not None else -EFAULT
    return s


def _walk(p: "Process", dirfd: int, path_addr: int) -> Lookup | int:
    """A user path to where it leads, or -errno (a bad pointer, too long,
    missing, not allowed)."""
    path = _path(p, path_addr)
    if isinstance(path, int):
        return path
    lk = path_lookup(p, dirfd, path)
    return -lk.errno if lk.errno else lk


def _dirfd(v: int) -> int:
    return int_arg(v)


def proc_text(p: "Process", name: str) -> bytes:
    """The contents of /proc/self/NAME for the emulated process."""
    if name == "maps":
        from mm.smaps import vma_header
        return "".join(vma_header(v) + "\n" for v in p.mm.vma_tree).encode()
    if name == "smaps":
        return p.mm.smaps().encode()
    if name == "cmdline":
        return b"".join(a + b"\0" for a in p.argv)
    return b""


def _open(p: "Process", dirfd: int, path_addr: int, flags: int) -> int:
    lk = _walk(p, dirfd, path_addr)
    if isinstance(lk, int):
        return lk
    if flags & O_ACCMODE != O_RDONLY or flags & (O_CREAT | O_TRUNC):
        return -EROFS
    cloexec = bool(flags & O_CLOEXEC)
    if lk.proc is not None:
        if lk.proc in (".", "exe"):
            return -EACCES if lk.proc == "exe" else -EISDIR
        return p.files.install(ProcFile(lk.proc, proc_text(p, lk.proc), flags), cloexec)
    if os.path.isdir(lk.host):
        return p.files.install(HostDir(lk.host, flags), cloexec)
    if flags & O_DIRECTORY:
        return -ENOTDIR
    try:
        f = HostFile(lk.host, flags)
    except OSError as e:
        return -(e.errno or EACCES)
    return p.files.install(f, cloexec)


def sys_openat(p: "Process", ctx: CallContext, rec: SyscallRecord) -> int:
    return _open(p, _dirfd(rec.args[0]), rec.args[1], rec.args[2] & 0xFFFF_FFFF)


def sys_open(p: "Process", ctx: CallContext, rec: SyscallRecord) -> int:
    return _open(p, AT_FDCWD, rec.args[0], rec.args[1] & 0xFFFF_FFFF)


def sys_close(p: "Process", ctx: CallContext, rec: SyscallRecord) -> int:
    return p.files.close(int_arg(rec.args[0]))


def _deliver_read(p: "Process", ctx: CallContext, rec: SyscallRecord, buf: int, data: bytes | int) -> int:
    if isinstance(data, int):
        return data
    if data and not put_user(p, ctx, buf, data, rec.rip, f"{rec.name}:copy_to_user"):
        return -EFAULT
    rec.data_addr = buf
    return len(data)


@fdget
def sys_read(p: "Process", ctx: CallContext, rec: SyscallRecord, f: OpenFile) -> int:
    if f.is_dir:
        return -EISDIR
    return _deliver_read(p, ctx, rec, rec.args[1], f.read(p, min(rec.args[2], MAX_RW_COUNT)))


@fdget
def sys_pread64(p: "Process", ctx: CallContext, rec: SyscallRecord, f: OpenFile) -> int:
    off = signed(rec.args[3])
    if off < 0:
        return -EINVAL
    return _deliver_read(p, ctx, rec, rec.args[1], f.pread(off, min(rec.args[2], MAX_RW_COUNT)))


@fdget
def sys_write(p: "Process", ctx: CallContext, rec: SyscallRecord, f: OpenFile) -> int:
    n = min(rec.args[2], MAX_RW_COUNT)
    data = get_user(p, rec.args[1], n) if n else b""
    if data is None:
        return -EFAULT
    rec.data, rec.data_addr = data, rec.args[1]
    return f.write(p, data)


def _iovecs(p: "Process", addr: int, cnt: int) -> list[tuple[int, int]] | int:
    if cnt > IOV_MAX:
        return -EINVAL
    raw = get_user(p, addr, 16 * cnt) if cnt else b""
    if raw is None:
        return -EFAULT
    return [struct.unpack_from("<QQ", raw, 16 * i) for i in range(cnt)]


@fdget
def sys_writev(p: "Process", ctx: CallContext, rec: SyscallRecord, f: OpenFile) -> int:
    iov = _iovecs(p, rec.args[1], int_arg(rec.args[2]))
    if isinstance(iov, int):
        return iov
    data = bytearray()
    for base, ln in iov:
        chunk = get_user(p, base, ln) if ln else b""
        if chunk is None:
            return -EFAULT
        data += chunk
    rec.data = bytes(data)
    return f.write(p, bytes(data))


@fdget
def sys_readv(p: "Process", ctx: CallContext, rec: SyscallRecord, f: OpenFile) -> int:
    iov = _iovecs(p, rec.args[1], int_arg(rec.args[2]))
    if isinstance(iov, int):
        return iov
    total = 0
    for base, ln in iov:
        if not ln:
            continue
        got = f.read(p, ln)
        if isinstance(got, int):
            return got if total == 0 else total
        if got and not put_user(p, ctx, base, got, rec.rip, "readv:copy_to_user"):
            return -EFAULT if total == 0 else total
        total += len(got)
        if len(got) < ln:
            break
    return total


@fdget
def sys_lseek(p: "Process", ctx: CallContext, rec: SyscallRecord, f: OpenFile) -> int:
    if not f.seekable:
        return -ESPIPE
    off, whence = signed(rec.args[1]), int_arg(rec.args[2])
    base = {SEEK_SET: 0, SEEK_CUR: f.pos, SEEK_END: f.size()}.get(whence)
    if base is None or base + off < 0:
        return -EINVAL
    f.pos = base + off
    return f.pos


def _put_stat(p: "Process", ctx: CallContext, rec: SyscallRecord, addr: int, st: Stat) -> int:
    if not put_user(p, ctx, addr, st.pack(), rec.rip, f"{rec.name}:cp_new_stat"):
        return -EFAULT
    rec.data = st.pack()
    return 0


@fdget
def sys_fstat(p: "Process", ctx: CallContext, rec: SyscallRecord, f: OpenFile) -> int:
    return _put_stat(p, ctx, rec, rec.args[1], f.stat())


def _stat_path(p: "Process", dirfd: int, path_addr: int, flags: int) -> Stat | int:
    if flags & ~(AT_SYMLINK_NOFOLLOW | AT_EMPTY_PATH | 0x800 | 0x6000):   # + AT_NO_AUTOMOUNT, AT_STATX_*
        return -EINVAL
    path = _path(p, path_addr)
    if isinstance(path, int):
        return path
    if not path and flags & AT_EMPTY_PATH:
        if dirfd == AT_FDCWD:
            path = b"."
        else:
            f = p.files.get(dirfd)
            return f.stat() if f is not None else -EBADF
    lk = path_lookup(p, dirfd, path)
    if lk.errno:
        return -lk.errno
    if lk.proc is not None:
        import stat as _st
        mode = _st.S_IFDIR | 0o555 if lk.proc == "." else (_st.S_IFLNK | 0o777 if lk.proc == "exe"
                                                           else _st.S_IFREG | 0o444)
        return Stat(dev=0x16, ino=4026531840 + len(lk.proc), mode=mode, blksize=1024)
    try:
        st = os.lstat(lk.host) if flags & AT_SYMLINK_NOFOLLOW else os.stat(lk.host)
    except OSError as e:
        return -(e.errno or ENOENT)
    return Stat.of_host(st)


def sys_newfstatat(p: "Process", ctx: CallContext, rec: SyscallRecord) -> int:
    st = _stat_path(p, _dirfd(rec.args[0]), rec.args[1], rec.args[3] & 0xFFFF_FFFF)
    return st if isinstance(st, int) else _put_stat(p, ctx, rec, rec.args[2], st)


def sys_stat(p: "Process", ctx: CallContext, rec: SyscallRecord) -> int:
    st = _stat_path(p, AT_FDCWD, rec.args[0], 0)
    return st if isinstance(st, int) else _put_stat(p, ctx, rec, rec.args[1], st)


def sys_lstat(p: "Process", ctx: CallContext, rec: SyscallRecord) -> int:
    st = _stat_path(p, AT_FDCWD, rec.args[0], AT_SYMLINK_NOFOLLOW)
    return st if isinstance(st, int) else _put_stat(p, ctx, rec, rec.args[1], st)


def _access(p: "Process", dirfd: int, path_addr: int, mode: int) -> int:
    if mode & ~7:
        return -EINVAL
    lk = _walk(p, dirfd, path_addr)
    if isinstance(lk, int):
        return lk
    if mode & W_OK:
        return -EROFS
    if lk.host is not None and mode and not os.access(lk.host, mode):
        return -EACCES
    return 0


def sys_access(p: "Process", ctx: CallContext, rec: SyscallRecord) -> int:
    return _access(p, AT_FDCWD, rec.args[0], int_arg(rec.args[1]))


def sys_faccessat(p: "Process", ctx: CallContext, rec: SyscallRecord) -> int:
    return _access(p, _dirfd(rec.args[0]), rec.args[1], int_arg(rec.args[2]))


def _readlink(p: "Process", ctx: CallContext, rec: SyscallRecord, dirfd: int, path_addr: int, buf: int,
              size: int) -> int:
    if size <= 0:
        return -EINVAL
    lk = _walk(p, dirfd, path_addr)
    if isinstance(lk, int):
        return lk
    if lk.proc is not None:
        if lk.proc != "exe":
            return -EINVAL
        target = p.exe.encode()
    else:
        try:
            target = os.fsencode(os.readlink(lk.host))
        except OSError as e:
            return -(e.errno or EINVAL)
    data = target[:size]                   # no terminating NUL, truncated silently
    if not put_user(p, ctx, buf, data, rec.rip, "readlink:copy_to_user"):
        return -EFAULT
    rec.data, rec.data_addr = data, buf
    return len(data)


def sys_readlinkat(p: "Process", ctx: CallContext, rec: SyscallRecord) -> int:
    return _readlink(p, ctx, rec, _dirfd(rec.args[0]), rec.args[1], rec.args[2], int_arg(rec.args[3]))


def sys_readlink(p: "Process", ctx: CallContext, rec: SyscallRecord) -> int:
    return _readlink(p, ctx, rec, AT_FDCWD, rec.args[0], rec.args[1], int_arg(rec.args[2]))


def sys_getcwd(p: "Process", ctx: CallContext, rec: SyscallRecord) -> int:
    cwd = os.fsencode(p.cwd) + b"\0"
    if rec.args[1] < len(cwd):
        from emulator.syscall_abi import ERANGE
        return -ERANGE
    if not put_user(p, ctx, rec.args[0], cwd, rec.rip, "getcwd:copy_to_user"):
        return -EFAULT
    return len(cwd)


def sys_pipe2(p: "Process", ctx: CallContext, rec: SyscallRecord) -> int:
    flags = rec.args[1] & 0xFFFF_FFFF
    if flags & ~(O_CLOEXEC | O_NONBLOCK | 0o40000):      # + O_DIRECT
        return -EINVAL
    pipe = Pipe()
    rd, wr = PipeEnd(pipe, False, flags & O_NONBLOCK), PipeEnd(pipe, True, flags & O_NONBLOCK)
    ce = bool(flags & O_CLOEXEC)
    fr = p.files.install(rd, ce)
    if fr < 0:
        rd.release()
        wr.release()
        return fr
    fw = p.files.install(wr, ce)
    if fw < 0:
        p.files.close(fr)
        wr.release()
        return fw
    if not put_user(p, ctx, rec.args[0], struct.pack("<ii", fr, fw), rec.rip, "pipe2:copy_to_user"):
        p.files.close(fr)
        p.files.close(fw)
        return -EFAULT
    rec.data = struct.pack("<ii", fr, fw)
    return 0


def sys_pipe(p: "Process", ctx: CallContext, rec: SyscallRecord) -> int:
    rec.args = [rec.args[0], 0] + rec.args[2:]
    return sys_pipe2(p, ctx, rec)


def sys_dup(p: "Process", ctx: CallContext, rec: SyscallRecord) -> int:
    f = p.files.get(int_arg(rec.args[0]))
    return -EBADF if f is None else p.files.install(f)


def _dup3(p: "Process", old: int, new: int, flags: int) -> int:
    f = p.files.get(old)
    if f is None:
        return -EBADF
    if not 0 <= new < NR_OPEN:
        return -EBADF
    return p.files.install_at(new, f, bool(flags & O_CLOEXEC))


def sys_dup2(p: "Process", ctx: CallContext, rec: SyscallRecord) -> int:
    old, new = int_arg(rec.args[0]), int_arg(rec.args[1])
    if old == new:
        return old if p.files.get(old) is not None else -EBADF
    return _dup3(p, old, new, 0)


def sys_dup3(p: "Process", ctx: CallContext, rec: SyscallRecord) -> int:
    old, new, flags = int_arg(rec.args[0]), int_arg(rec.args[1]), rec.args[2] & 0xFFFF_FFFF
    if old == new or flags & ~O_CLOEXEC:
        return -EINVAL
    return _dup3(p, old, new, flags)


def sys_fcntl(p: "Process", ctx: CallContext, rec: SyscallRecord) -> int:
    fd, cmd, arg = int_arg(rec.args[0]), int_arg(rec.args[1]), rec.args[2]
    f = p.files.get(fd)
    if f is None:
        return -EBADF
    if cmd in (F_DUPFD, F_DUPFD_CLOEXEC):
        if int_arg(arg) < 0 or int_arg(arg) >= NR_OPEN:
            return -EINVAL
        return p.files.install(f, cmd == F_DUPFD_CLOEXEC, lowest=int_arg(arg))
    if cmd == F_GETFD:
        return FD_CLOEXEC if p.files.cloexec(fd) else 0
    if cmd == F_SETFD:
        p.files.set_cloexec(fd, bool(arg & FD_CLOEXEC))
        return 0
    if cmd == F_GETFL:
        return f.flags
    if cmd == F_SETFL:
        f.flags = (f.flags & ~O_NONBLOCK) | (arg & O_NONBLOCK)
        return 0
    return -EINVAL


def sys_ioctl(p: "Process", ctx: CallContext, rec: SyscallRecord) -> int:
    """No descriptor here is a terminal: every ioctl is -ENOTTY (what
    isatty() and the termios calls see on a pipe or a regular file)."""
    return -EBADF if p.files.get(int_arg(rec.args[0])) is None else -ENOTTY


def sys_chdir(p: "Process", ctx: CallContext, rec: SyscallRecord) -> int:
    lk = _walk(p, AT_FDCWD, rec.args[0])
    if isinstance(lk, int):
        return lk
    if lk.host is None or not os.path.isdir(lk.host):
        return -ENOTDIR
    p.cwd = lk.host
    return 0
