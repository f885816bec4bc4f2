"""Files that can be mapped (the part of struct file / struct inode that mm uses).

mm knows nothing of file descriptors or paths: whoever opens a file (the
emulator's syscall layer) hands mm an object with this shape, and mm only ever
reads from it. Every file is treated as opened read-only (O_RDONLY), so the
emulated process cannot modify a host file through mm: a writable shared mapping
is refused with -EACCES, as the kernel refuses it for a read-only open.

Two implementations: HostFile reads a file of the host, BytesFile holds its
contents in memory (tests, synthesised images).
"""

from __future__ import annotations

import os
import stat
import weakref
from dataclasses import dataclass, field
from typing import Hashable, Protocol


class MappedFile(Protocol):
    """What mm needs of a file.

    key:  identity: files with equal keys share page-cache pages (the inode);
    name: the path smaps shows;  dev, ino: st_dev and st_ino (maps columns);
    mode: st_mode (an executable file's first page goes into core dumps);
    size: i_size in bytes, fixed for as long as the object is used;
    read(offset, n): up to n bytes at offset, short at end of file.
    """

    key: Hashable
    name: str
    dev: int
    ino: int
    mode: int
    size: int

    def read(self, offset: int, n: int) -> bytes: ...


@dataclass(eq=False)
class BytesFile:
    """An in-memory file. Its identity is the object itself."""

    name: str
    data: bytes = field(repr=False)
    mode: int = stat.S_IFREG | 0o644
    dev: int = 0
    ino: int = 0

    @property
    def key(self) -> Hashable:
        return self

    @property
    def size(self) -> int:
        return len(self.data)

    def read(self, offset: int, n: int) -> bytes:
        return bytes(self.data[offset:offset + n])


class HostFile:
    """A regular file of the host, opened read-only. Its size, device, inode and
    mode are taken when it is opened; its pages are read on demand. Page-cache
    pages already read are not refreshed if the host file changes later."""

    def __init__(self, path: str, fd: int, st: os.stat_result) -> None:
        self.name = path
        self._fd = fd
        self.dev = st.st_dev
        self.ino = st.st_ino
        self.mode = st.st_mode
        self.size = st.st_size
        self.key = ("host", st.st_dev, st.st_ino)
        self._closer = weakref.finalize(self, os.close, fd)

    @classmethod
    def open(cls, path: str | os.PathLike) -> "HostFile":
        """Open a regular file read-only; OSError as os.open raises it (a directory
        or other non-regular file is OSError(ENODEV), which mmap would say)."""
        path = os.fspath(path)
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                import errno
                raise OSError(errno.ENODEV, "not a regular file", path)
        except BaseException:
            os.close(fd)
            raise
        return cls(path, fd, st)

    def read(self, offset: int, n: int) -> bytes:
        if offset >= self.size:
            return b""
        return os.pread(self._fd, min(n, self.size - offset), offset)

    def close(self) -> None:
        self._closer()

    def __repr__(self) -> str:
        return f"HostFile({self.name!r}, size={self.size})"


__all__ = ["MappedFile", "BytesFile", "HostFile"]
