"""The one way out for every file faultpath writes (compare --json/--plot,
sweep --json, calibrate -o, diffcheck --json, trace files).

Two steps, so that a bad destination costs nothing and a failure leaves nothing:

1. `check_output(path, option)` as soon as the options are parsed, before any
   work: the path must be non-empty; '-' means stdout where the option allows
   it; an existing destination must be a regular file we may write (a
   directory, a device node, a FIFO, a socket is never replaced); a symlink is
   written *through*: its target must be an existing regular file, and the
   link stays a link (a dangling link is refused: we never create a file at a
   place nobody named); a missing file needs an existing, writable directory
   (a missing directory is refused, never created).  Writability is proven by
   creating and removing a temporary file in that directory, which also
   catches read-only file systems and /proc.

2. `write_outputs([(target, data), ...])` once the whole command succeeded:
   every file is first written to a temporary file in its own directory and
   fsync'ed; only when all of them are complete are they renamed over their
   destinations (then the directories are fsync'ed).  On any error (ENOSPC,
   EFBIG under a file-size limit, EIO, Ctrl-C) every temporary file is removed
   and no destination has changed: the outputs of one command come out all
   together or not at all.

Errors are UsageErrors of one line naming the option and the path.
"""
from __future__ import annotations

import os
import stat
import sys
import tempfile
from dataclasses import dataclass

from emulator.errors import UsageError
from vdso.files import file_kind

STDOUT = "-"
TMP_PREFIX = ".faultpath-"
TMP_SUFFIX = ".tmp"


@dataclass(frozen=True)
class OutputTarget:
    """A destination checked by check_output."""
    option: str          # the option that named it, for messages ("--json")
    path: str            # as the user gave it
    dest: str            # the file to replace: the path itself, or a symlink's final target; "-" for stdout

    @property
    def is_stdout(self) -> bool:
        return self.dest == STDOUT

    def label(self) -> str:
        return f"{self.option} {self.path}"


def _err(option: str, path: str, why: str) -> UsageError:
    return UsageError(f"{option} {path}: {why}")


def _why(e: OSError) -> str:
    return e.strerror or type(e).__name__


def check_output(path: str | None, option: str, *, allow_stdout: bool = True) -> OutputTarget:
    """Validate a destination before any work starts (see the module's doc)."""
    if path is None or path == "":
        raise UsageError(f"{option} '': an empty path (name a file{', or - for stdout' if allow_stdout else ''})")
    if path == STDOUT:
        if not allow_stdout:
            raise UsageError(f"{option} -: this output must go to a file")
        return OutputTarget(option, path, STDOUT)
    if "\0" in path:
        raise _err(option, repr(path), "the path contains a NUL byte")
    if path.endswith(os.sep) or os.path.basename(path) in (".", ".."):
        raise _err(option, path, "names a directory, not a file")
    dest = path
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        st = None
    except OSError as e:            # ENOTDIR (a path under a regular file), ENAMETOOLONG, EACCES, ELOOP
        raise _err(option, path, _why(e)) from None
    if st is not None and stat.S_ISLNK(st.st_mode):
        dest = os.path.realpath(path)
        try:
            st = os.stat(dest)
        except FileNotFoundError:
            raise _err(option, path, "a symlink to a missing file (refused: the target is not created "
                                     "through a link)") from None
        except OSError as e:
            raise _err(option, path, _why(e)) from None
    if st is not None:
        if not stat.S_ISREG(st.st_mode):
            raise _err(option, path, f"is {file_kind(st.st_mode)}; only a regular file is ever replaced")
        if not os.access(dest, os.W_OK):
            raise _err(option, path, "not writable")
    parent = os.path.dirname(os.path.abspath(dest))
    try:
        pst = os.stat(parent)
    except FileNotFoundError:
        raise _err(option, path, f"directory {parent} does not exist") from None
    except OSError as e:
        raise _err(option, path, _why(e)) from None
    if not stat.S_ISDIR(pst.st_mode):
        raise _err(option, path, f"{parent} is not a directory")
    _probe_directory(option, path, parent)
    return OutputTarget(option, path, dest)


def _probe_directory(option: str, path: str, parent: str) -> None:
    """Create and remove a temporary file where the output will be written:
    the only test that catches read-only mounts, /proc, quotas and ACLs alike."""
    try:
        fd, tmp = tempfile.mkstemp(prefix=TMP_PREFIX, suffix=TMP_SUFFIX, dir=parent)
    except OSError as e:
        raise _err(option, path, f"cannot create a file in {parent}: {_why(e)}") from None
    os.close(fd)
    try:
        os.unlink(tmp)
    except OSError:
        pass


def check_distinct(targets: list[OutputTarget]) -> None:
    """Two options naming the same file would have one overwrite the other."""
    seen: dict[str, OutputTarget] = {}
    for t in targets:
        if t.is_stdout:
            continue
        key = os.path.realpath(t.dest)
        if key in seen:
            raise UsageError(f"{t.option} {t.path}: the same file as {seen[key].option} {seen[key].path}")
        seen[key] = t


def write_outputs(items: list[tuple[OutputTarget, str | bytes]]) -> None:
    """Write every output, all together or not at all (see the module's doc).
    Stdout targets are printed after the files are in place."""
    files = [(t, d) for t, d in items if not t.is_stdout]
    check_distinct([t for t, _ in files])
    pending: dict[str, OutputTarget] = {}          # temporary file -> its destination, until renamed
    try:
        for t, data in files:
            pending[_write_temp(t, data)] = t
        for t in pending.values():
            _recheck(t)
        # Every file is complete on disk: from here on only renames, which fail
        # only if a destination changed under us (checked just above).
        for tmp, t in list(pending.items()):
            try:
                os.replace(tmp, t.dest)
            except OSError as e:
                raise _err(t.option, t.path, _why(e)) from None
            del pending[tmp]
        for d in {os.path.dirname(os.path.abspath(t.dest)) for t, _ in files}:
            _fsync_dir(d)
    finally:
        for tmp in pending:
            try:
                os.unlink(tmp)
            except OSError:
                pass
    for t, data in items:
        if t.is_stdout:
            text = data.decode() if isinstance(data, bytes) else data
            sys.stdout.write(text)
            sys.stdout.flush()


def write_output(target: OutputTarget, data: str | bytes) -> None:
    write_outputs([(target, data)])


def _write_temp(t: OutputTarget, data: str | bytes) -> str:
    raw = data.encode("utf-8") if isinstance(data, str) else bytes(data)
    parent = os.path.dirname(os.path.abspath(t.dest))
    try:
        fd, tmp = tempfile.mkstemp(prefix=TMP_PREFIX, suffix=TMP_SUFFIX, dir=parent)
    except OSError as e:
        raise _err(t.option, t.path, f"cannot create a file in {parent}: {_why(e)}") from None
    try:
        try:
            view = memoryview(raw)
            while view:
                n = os.write(fd, view)
                view = view[n:]
            os.fsync(fd)
            _keep_mode(t, fd)
        finally:
            os.close(fd)
    except BaseException as e:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        if isinstance(e, OSError):
            raise _err(t.option, t.path, f"writing failed: {_why(e)}") from None
        raise
    return tmp


def _keep_mode(t: OutputTarget, fd: int) -> None:
    """A replaced file keeps its permission bits; a new one gets the usual
    0666 & ~umask rather than mkstemp's 0600."""
    try:
        mode = stat.S_IMODE(os.stat(t.dest).st_mode)
    except OSError:
        mode = 0o666 & ~_umask()
    os.fchmod(fd, mode)


def _umask() -> int:
    """The process's umask, read without setting it (os.umask can only be
    read by changing it, which another thread could observe)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    return 0o022


def _recheck(t: OutputTarget) -> None:
    """The destination may have changed while the command ran: never replace
    what has become a non-regular file."""
    try:
        st = os.stat(t.dest)
    except FileNotFoundError:
        return
    except OSError as e:
        raise _err(t.option, t.path, _why(e)) from None
    if not stat.S_ISREG(st.st_mode):
        raise _err(t.option, t.path, f"is now {file_kind(st.st_mode)}; only a regular file is ever replaced")


def _fsync_dir(d: str) -> None:
    try:
        fd = os.open(d, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
