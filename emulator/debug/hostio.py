"""vFile: the remote file I/O gdb uses to read the target's files.

gdb reads through it what a debugger reads on a real system: the process's
executable (named by qXfer:exec-file:read), /proc/PID/task/PID/maps (to find
the vDSO's extent) and separate debug files under /usr/lib/debug/.build-id.
The stub serves a fixed set of read-only virtual files, looked up by a
resolver; nothing on the host's file system is ever opened for the client.

Replies follow gdb's File-I/O conventions: `F result[,errno]`, errno values
from gdb's own list (not the host's), struct stat big-endian.
"""
from __future__ import annotations

import struct
from typing import Callable

from emulator.debug.rsp import escape
from emulator.debug.target import ProtocolError, parse_hex

# gdb File-I/O errno values (gdb/doc: "Errno Values")
ENOENT, EBADF, EACCES, EINVAL, EMFILE, ENAMETOOLONG = 2, 9, 13, 22, 24, 91
O_ACCMODE = 3
MAX_OPEN = 16
MAX_PATH = 4096

Resolver = Callable[[str], "bytes | None"]


class HostIO:
    """Open files of one connection."""

    def __init__(self, resolve: Resolver):
        self.resolve = resolve
        self.files: dict[int, bytes] = {}
        self._next = 3

    def close_all(self) -> None:
        self.files.clear()

    def handle(self, pkt: bytes, max_data: int) -> bytes:
        """One vFile:OP:ARGS packet -> its F reply."""
        op, _, args = pkt[len(b"vFile:"):].partition(b":")
        fields = args.split(b",") if args else []
        if op == b"setfs":
            _expect(fields, 1)
            parse_hex(fields[0], "pid")
            return b"F0"               # one process: every pid sees the same files
        if op == b"open":
            _expect(fields, 3)
            path = _path(fields[0])
            flags = parse_hex(fields[1], "flags", 0xFFFFFFFF)
            parse_hex(fields[2], "mode", 0xFFFFFFFF)
            if flags & O_ACCMODE:
                return b"F-1,%x" % EACCES
            data = self.resolve(path) if len(path) < MAX_PATH else None
            if data is None:
                return b"F-1,%x" % (ENAMETOOLONG if len(path) >= MAX_PATH else ENOENT)
            if len(self.files) >= MAX_OPEN:
                return b"F-1,%x" % EMFILE
            fd = self._next
            self._next += 1
            self.files[fd] = data
            return b"F%x" % fd
        if op == b"pread":
            _expect(fields, 3)
            data = self._file(fields[0])
            if data is None:
                return b"F-1,%x" % EBADF
            count = parse_hex(fields[1], "count")
            off = parse_hex(fields[2], "offset")
            # the reply is escaped binary: keep it under PacketSize in the worst case
            chunk = data[off:off + min(count, (max_data - 32) // 2)]
            return b"F%x;" % len(chunk) + escape(chunk)
        if op == b"close":
            _expect(fields, 1)
            fd = parse_hex(fields[0], "fd")
            return b"F0" if self.files.pop(fd, None) is not None else b"F-1,%x" % EBADF
        if op == b"fstat":
            _expect(fields, 1)
            data = self._file(fields[0])
            if data is None:
                return b"F-1,%x" % EBADF
            st = _stat(len(data))
            return b"F%x;" % len(st) + escape(st)
        return b""                     # pwrite, unlink, readlink: not offered

    def _file(self, field: bytes) -> bytes | None:
        return self.files.get(parse_hex(field, "fd"))


def _expect(fields: list[bytes], n: int) -> None:
    if len(fields) != n:
        raise ProtocolError(f"vFile: {n} argument(s) expected, got {len(fields)}")


def _path(field: bytes) -> str:
    if len(field) % 2:
        raise ProtocolError("vFile:open: the file name is not hex-encoded")
    try:
        return bytes.fromhex(field.decode()).decode("utf-8", "replace")
    except ValueError:
        raise ProtocolError("vFile:open: the file name is not hex-encoded") from None


def _stat(size: int) -> bytes:
    """gdb's struct stat: all fields big-endian, a read-only regular file."""
    mode = 0o100444
    return struct.pack(">IIIIIIIQQQIII", 0, 0, mode, 1, 0, 0, 0, size, 4096, (size + 511) // 512, 0, 0, 0)
