"""Open files of an emulated process: the descriptor table (struct files_struct)
and the open-file objects it points at (struct file).

Kinds of open file:
- HostFile: a regular file of the host, read-only (emulator/vfs.py decides
  which); its pages are what mm maps for a file mapping (mm/file.py);
- HostDir: a directory, for fstat and as a dirfd;
- ProcFile: a /proc/self file, its text generated from the emulated
  process when opened;
- PipeEnd: one end of a pipe (pipe2), whose buffer both ends share;
- Console: faultpath's own stdin/stdout/stderr as fd 0/1/2.  They are
  pipes to the program (S_IFIFO, as when its output is captured), so its
  stdio buffers the same way whether faultpath writes to a terminal or not.

A fork's child gets a copy of the table pointing at the same open files
(dup_fd), so a pipe sees every process's ends close.
"""
from __future__ import annotations

import os
import stat
import struct
from dataclasses import dataclass, field
from itertools import count
from typing import TYPE_CHECKING, Protocol

from emulator.syscall_abi import EAGAIN, EBADF, EISDIR, EMFILE, EPIPE, ESPIPE, WaitQueue, WouldBlock
from mm.file import HostFile as MmHostFile

if TYPE_CHECKING:
    from emulator.sched import Console as ConsoleSink

O_ACCMODE = 0o3
O_RDONLY, O_WRONLY, O_RDWR = 0, 1, 2
O_CREAT = 0o100
O_TRUNC = 0o1000
O_APPEND = 0o2000
O_NONBLOCK = 0o4000
O_DIRECTORY = 0o200000
O_CLOEXEC = 0o2000000
FD_CLOEXEC = 1
NR_OPEN = 1024                  # RLIMIT_NOFILE's usual soft limit
PIPE_BUF_SIZE = 65536           # pipe_max_size default: 16 pages
PIPEFS_DEV = 0xC                # the anonymous pipefs superblock's st_dev
_pipe_inodes = count(1000)


class FileUser(Protocol):
    """What an open file sees of the process using it (emulator/process.py)."""
    pid: int

    def pipe_broken(self) -> None:
        """A write found no reader: SIGPIPE for the writer."""


@dataclass
class Stat:
    """struct stat (x86-64, 144 bytes)."""
    dev: int = 0
    ino: int = 0
    nlink: int = 1
    mode: int = 0
    uid: int = 0
    gid: int = 0
    rdev: int = 0
    size: int = 0
    blksize: int = 4096
    blocks: int = 0
    atime: tuple[int, int] = (0, 0)
    mtime: tuple[int, int] = (0, 0)
    ctime: tuple[int, int] = (0, 0)

    def pack(self) -> bytes:
        return struct.pack("<QQQIIIIQqqqqqqqqq24x", self.dev, self.ino, self.nlink, self.mode, self.uid,
                           self.gid, 0, self.rdev, self.size, self.blksize, self.blocks, *self.atime, *self.mtime,
                           *self.ctime)

    @classmethod
    def of_host(cls, st: os.stat_result) -> "Stat":
        def ts(sec: float, ns: int) -> tuple[int, int]:
            return (int(sec), ns % 1_000_000_000)
        return cls(st.st_dev, st.st_ino, st.st_nlink, st.st_mode, st.st_uid, st.st_gid, st.st_rdev, st.st_size,
                   st.st_blksize, st.st_blocks, ts(st.st_atime, st.st_atime_ns), ts(st.st_mtime, st.st_mtime_ns),
                   ts(st.st_ctime, st.st_ctime_ns))


class OpenFile:
    """struct file: what a descriptor points at."""
    kind = "file"
    host_path: str | None = None
    is_dir = False
    seekable = False

    def __init__(self, flags: int):
        self.flags = flags
        self.pos = 0
        self.refs = 0

    def read(self, p: "FileUser", n: int) -> bytes:
        return b""

    def pread(self, off: int, n: int) -> bytes | int:
        return -ESPIPE

    def write(self, p: "FileUser", data: bytes) -> int:
        return -EBADF

    def stat(self) -> Stat:
        return Stat()

    def mappable(self):
        """The mm.file.MappedFile behind it, or None (-ENODEV for mmap)."""
        return None

    def size(self) -> int:
        return 0

    def release(self) -> None:
        """The last descriptor went away."""

    def describe(self) -> str:
        return self.kind

    # A snapshot of the machine keeps what a descriptor's file changes as it
    # is used (its position, flags and references); the rest is fixed at open.
    def save_state(self) -> tuple:
        return (self.flags, self.pos, self.refs)

    def restore_state(self, st: tuple) -> None:
        self.flags, self.pos, self.refs = st


class HostFile(OpenFile):
    kind = "file"
    seekable = True

    def __init__(self, path: str, flags: int):
        super().__init__(flags)
        self.host_path = path
        self.file = MmHostFile.open(path)

    def read(self, p, n):
        data = self.file.read(self.pos, n)
        self.pos += len(data)
        return data

    def pread(self, off, n):
        return self.file.read(off, n)

    def stat(self):
        return Stat.of_host(os.stat(self.host_path))

    def mappable(self):
        return self.file

    def size(self):
        return self.file.size

    # No release(): a file mapping keeps its own reference to the file (as
    # a VMA holds its struct file), so closing the descriptor closes nothing
    # mm reads from; the host descriptor goes when the last user does.

    def describe(self):
        return self.host_path


class HostDir(OpenFile):
    kind = "dir"
    is_dir = True

    def __init__(self, path: str, flags: int):
        super().__init__(flags)
        self.host_path = path

    def read(self, p, n):
        return -EISDIR

    def stat(self):
        return Stat.of_host(os.stat(self.host_path))

    def describe(self):
        return self.host_path


class ProcFile(OpenFile):
    """A /proc/self file: regular, size 0 in stat (as procfs says), its text
    fixed when it was opened (the kernel generates it as it is read)."""
    kind = "proc"
    seekable = True

    def __init__(self, name: str, text: bytes, flags: int):
        super().__init__(flags)
        self.name = name
        self.text = text

    def read(self, p, n):
        data = self.text[self.pos:self.pos + n]
        self.pos += len(data)
        return data

    def pread(self, off, n):
        return self.text[off:off + n]

    def stat(self):
        return Stat(dev=0x16, ino=4026531840 + len(self.name), mode=stat.S_IFREG | 0o444, size=0, blksize=1024)

    def size(self):
        return len(self.text)

    def describe(self):
        return f"/proc/self/{self.name}"


@dataclass
class Pipe:
    """pipe_inode_info: the buffer and who still holds each end."""
    ino: int = field(default_factory=lambda: next(_pipe_inodes))
    buf: bytearray = field(default_factory=bytearray)
    readers: int = 0
    writers: int = 0
    rd_wait: WaitQueue = field(default_factory=lambda: WaitQueue("pipe_read"))
    wr_wait: WaitQueue = field(default_factory=lambda: WaitQueue("pipe_write"))

    def save_state(self) -> tuple:
        return (bytes(self.buf), self.readers, self.writers, list(self.rd_wait.sleepers),
                list(self.wr_wait.sleepers))

    def restore_state(self, st: tuple) -> None:
        buf, self.readers, self.writers, rd, wr = st
        self.buf = bytearray(buf)
        self.rd_wait.sleepers, self.wr_wait.sleepers = list(rd), list(wr)


class PipeEnd(OpenFile):
    kind = "pipe"

    def __init__(self, pipe: Pipe, write_end: bool, flags: int):
        super().__init__(flags)
        self.pipe = pipe
        self.write_end = write_end
        if write_end:
            pipe.writers += 1
        else:
            pipe.readers += 1

    def read(self, p, n):
        if self.write_end:
            return -EBADF
        pipe = self.pipe
        if not pipe.buf:
            if pipe.writers == 0:
                return b""                      # end of file
            if self.flags & O_NONBLOCK:
                return -EAGAIN
            raise WouldBlock(pipe.rd_wait, "read of an empty pipe")
        data = bytes(pipe.buf[:n])
        del pipe.buf[:len(data)]
        pipe.wr_wait.wake_up()
        return data

    def write(self, p, data):
        if not self.write_end:
            return -EBADF
        pipe = self.pipe
        if pipe.readers == 0:
            p.pipe_broken()                     # SIGPIPE
            return -EPIPE
        room = PIPE_BUF_SIZE - len(pipe.buf)
        if room <= 0:
            if self.flags & O_NONBLOCK:
                return -EAGAIN
            raise WouldBlock(pipe.wr_wait, "write to a full pipe")
        chunk = data[:room]
        pipe.buf += chunk
        pipe.rd_wait.wake_up()
        return len(chunk)

    def stat(self):
        return Stat(dev=PIPEFS_DEV, ino=self.pipe.ino, mode=stat.S_IFIFO | 0o600, blksize=4096)

    def release(self):
        if self.write_end:
            self.pipe.writers -= 1
        else:
            self.pipe.readers -= 1
        self.pipe.rd_wait.wake_up()
        self.pipe.wr_wait.wake_up()

    def describe(self):
        return f"pipe:[{self.pipe.ino}]"

    def save_state(self):
        return (super().save_state(), self.pipe.save_state())

    def restore_state(self, st):
        mine, pipe = st
        super().restore_state(mine)
        self.pipe.restore_state(pipe)


class Console(OpenFile):
    """fd 0, 1 or 2: faultpath's own streams, seen as pipes.  Reads give end
    of file (nothing is forwarded to the program's stdin)."""
    kind = "console"

    def __init__(self, fd: int, sink: "ConsoleSink"):
        super().__init__(O_RDONLY if fd == 0 else O_WRONLY)
        self.fd = fd
        self.sink = sink

    def read(self, p, n):
        return b"" if self.fd == 0 else -EBADF

    def write(self, p, data):
        if self.fd == 0:
            return -EBADF
        self.sink.write(self.fd, p.pid, data)
        return len(data)

    def stat(self):
        return Stat(dev=PIPEFS_DEV, ino=self.fd + 1, mode=stat.S_IFIFO | 0o600, blksize=4096)

    def describe(self):
        return ("stdin", "stdout", "stderr")[self.fd]


class FdTable:
    """struct files_struct: descriptor -> (open file, close-on-exec)."""

    def __init__(self):
        self.fds: dict[int, tuple[OpenFile, bool]] = {}

    def get(self, fd: int) -> OpenFile | None:
        e = self.fds.get(fd)
        return e[0] if e is not None else None

    def cloexec(self, fd: int) -> bool:
        return self.fds[fd][1]

    def set_cloexec(self, fd: int, on: bool) -> None:
        self.fds[fd] = (self.fds[fd][0], on)

    def install(self, f: OpenFile, cloexec: bool = False, lowest: int = 0) -> int:
        """get_unused_fd_flags + fd_install: the lowest free descriptor >= lowest."""
        fd = lowest
        while fd in self.fds:
            fd += 1
        if fd >= NR_OPEN:
            return -EMFILE
        f.refs += 1
        self.fds[fd] = (f, cloexec)
        return fd

    def install_at(self, fd: int, f: OpenFile, cloexec: bool) -> int:
        """dup2/dup3: replace whatever fd was."""
        if not 0 <= fd < NR_OPEN:
            return -EBADF
        self.close(fd)
        f.refs += 1
        self.fds[fd] = (f, cloexec)
        return fd

    def close(self, fd: int) -> int:
        e = self.fds.pop(fd, None)
        if e is None:
            return -EBADF
        f = e[0]
        f.refs -= 1
        if f.refs == 0:
            f.release()
        return 0

    def close_all(self) -> None:
        for fd in sorted(self.fds):
            self.close(fd)

    def snapshot(self) -> "FilesSnapshot":
        """The table and the state of every open file in it (a file shared
        with another process is saved by each: the same values)."""
        files = {id(f): f for f, _ in self.fds.values()}.values()       # dup'ed descriptors share one
        return FilesSnapshot(dict(self.fds), [(f, f.save_state()) for f in files])

    def restore(self, snap: "FilesSnapshot") -> None:
        """Back to the snapshot, any number of times: files opened since are
        dropped from the table (nothing the emulated program can still
        reach), closed ones come back with their references and positions."""
        self.fds = dict(snap.fds)
        for f, st in snap.files:
            f.restore_state(st)

    def dup_fd(self) -> "FdTable":
        """A fork's copy: the same open files, one more reference each."""
        t = FdTable()
        for fd, (f, ce) in self.fds.items():
            f.refs += 1
            t.fds[fd] = (f, ce)
        return t


@dataclass
class FilesSnapshot:
    """An FdTable and its open files' states (FdTable.snapshot)."""
    fds: dict[int, tuple[OpenFile, bool]]
    files: list[tuple[OpenFile, tuple]]
