"""What an emulated program sees of the filesystem: the host's, read-only and
confined, plus the few /proc/self files a C library reads.

Confinement (ReadPolicy): a program may read its own file, its ELF
interpreter, the directories its loader searches for libraries (the
interpreter's directory and the program's DT_RUNPATH/DT_RPATH), and the
directories the user names with --allow-read.  Elsewhere, a path that
exists on the host is -EACCES and one that does not is -ENOENT, as the
host would say (ld.so probes /etc/ld.so.preload and glibc-hwcaps
directories that are not there: those answers must match a native run).
Nothing is ever opened for writing: O_WRONLY, O_RDWR, O_CREAT and O_TRUNC
are -EROFS, a read-only filesystem.

/proc/self (and /proc/<own pid>) is the emulated process's, not faultpath's:
exe, cmdline, maps and smaps come from the emulated mm.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Protocol

from emulator.syscall_abi import EACCES, ENOENT, ENOTDIR

EROFS = 30
AT_FDCWD = -100
AT_SYMLINK_NOFOLLOW = 0x100
AT_EMPTY_PATH = 0x1000


@dataclass
class ReadPolicy:
    """The files and directory trees an emulated program may read."""
    files: set[str] = field(default_factory=set)
    dirs: list[str] = field(default_factory=list)

    def allow_file(self, path: str) -> None:
        self.files.add(os.path.realpath(path))

    def allow_dir(self, path: str) -> None:
        real = os.path.realpath(path)
        if real not in self.dirs:
            self.dirs.append(real)

    def allows(self, real: str) -> bool:
        if real in self.files:
            return True
        return any(real == d or real.startswith(d.rstrip("/") + "/") for d in self.dirs)

    def describe(self) -> list[str]:
        return sorted(self.files) + [d + "/" for d in self.dirs]


class PathWalker(Protocol):
    """What a path walk sees of the process (emulator/process.py)."""
    pid: int
    cwd: str
    read_policy: ReadPolicy
    files: object          # emulator/fdtable.py's FdTable: get(fd) -> an open file or None


@dataclass
class Lookup:
    """Where a path led: a host path (readable under the policy), a /proc
    entry of the process itself, or an errno."""
    host: str | None = None
    proc: str | None = None      # "exe", "maps", "smaps", "cmdline", "self" (the directory)
    errno: int = 0


def proc_entry(p: "PathWalker", path: str) -> str | None:
    """'/proc/self/maps' -> 'maps' (and /proc/<pid>/..., /proc/thread-self/...)."""
    parts = path.split("/")
    if len(parts) < 3 or parts[1] != "proc":
        return None
    who = parts[2]
    if who not in ("self", "thread-self", str(p.pid)):
        return None
    rest = "/".join(x for x in parts[3:] if x)
    return rest or "."


PROC_FILES = ("exe", "maps", "smaps", "cmdline", ".")


def path_lookup(p: "PathWalker", dirfd: int, raw: bytes) -> Lookup:
    """do_filp_open's path walk, as far as the policy lets it go."""
    from emulator.syscall_abi import EBADF
    try:
        path = raw.decode()
    except UnicodeDecodeError:
        path = raw.decode("latin-1")
    if not path:
        return Lookup(errno=ENOENT)
    if not path.startswith("/"):
        if dirfd == AT_FDCWD:
            base = p.cwd
        else:
            f = p.files.get(dirfd)
            if f is None:
                return Lookup(errno=EBADF)
            if f.host_path is None or not f.is_dir:
                return Lookup(errno=ENOTDIR)
            base = f.host_path
        path = os.path.join(base, path)
    norm = os.path.normpath(path)
    if path.endswith("/") and norm != "/":
        norm_dir = True
    else:
        norm_dir = False
    entry = proc_entry(p, norm)
    if entry is not None:
        if entry not in PROC_FILES:
            return Lookup(errno=ENOENT)
        return Lookup(proc=entry)
    if not os.path.lexists(norm):
        return Lookup(errno=ENOENT)
    real = os.path.realpath(norm)
    if not p.read_policy.allows(real):
        return Lookup(errno=EACCES)
    if norm_dir and not os.path.isdir(real):
        return Lookup(errno=ENOTDIR)
    return Lookup(host=real)


