"""The one way in for every file faultpath reads: images, `.s`/`.patch`
sources, profiles, step scripts, skipcheck corpora, compare reports.

Every reader goes through `open_input`, which

- refuses an empty path, and anything that is not a regular file (directory,
  FIFO, socket, device node) with one line.  What is there is fstat'ed
  through an O_PATH descriptor, which opens nothing (a FIFO would block, a
  device's open can have effects); a regular file is then opened with
  O_NONBLOCK and must be the same inode, so nothing swapped in meanwhile is
  read either;
- caps the size before reading: the reported size is checked, then at most
  limit + 1 bytes are read, because /proc files report 0 and a file may grow
  while we read it;
- decodes text as UTF-8 and refuses NUL bytes (every text input we take is
  handed on as a C string somewhere: keystone, tomllib, the stepper);
- bounds JSON nesting (json's C scanner raises RecursionError at Python's
  recursion limit; the depth is bounded far below that, so code walking the
  parsed report cannot recurse out of its stack either).

Errors are FaultpathErrors of the class the caller names (ImageError for
images, AssemblyError for sources, UsageError for the rest), each one line.
It lives in vdso/ because the image loaders need it and vdso/ imports
nothing from emulator/; the emulator's tools use it from here.
"""
from __future__ import annotations

import json
import os
import stat
from typing import BinaryIO

from vdso.errors import FaultpathError, UsageError

MAX_JSON_DEPTH = 64

_KINDS = ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"),
          (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"))


def file_kind(mode: int) -> str:
    """What a non-regular file is, in words."""
    for test, name in _KINDS:
        if test(mode):
            return name
    return "a special file"


def _fail(error: type[FaultpathError], label: str, why: str) -> FaultpathError:
    return error(f"{label}: {why}")


def open_input(path: str, *, limit: int, label: str | None = None,
               error: type[FaultpathError] = UsageError) -> tuple[BinaryIO, os.stat_result]:
    """Open a regular file for reading: (unbuffered binary file, its fstat).
    The caller reads at most limit + 1 bytes (read_regular does)."""
    label = label or path
    if not path:
        raise error(f"{label.strip() + ' ' if label.strip() else ''}'': empty path")
    # First an O_PATH descriptor: it opens nothing (a device's open can have
    # effects: a tape rewinds, a watchdog starts), yet fstat tells what is there.
    try:
        probe = os.open(path, os.O_PATH | os.O_CLOEXEC)
    except ValueError:                                  # an embedded NUL byte
        raise _fail(error, label, "the path contains a NUL byte") from None
    except OSError as e:
        raise _fail(error, label, _strerror(e)) from None
    try:
        st = os.fstat(probe)
    finally:
        os.close(probe)
    if not stat.S_ISREG(st.st_mode):
        raise _fail(error, label, f"is {file_kind(st.st_mode)}, not a regular file")
    if st.st_size > limit:
        raise _fail(error, label, f"{st.st_size} bytes, more than the {limit} this input may have")
    # Then the real open, non-blocking in case something else was put there
    # meanwhile: it must be the same file.
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    except OSError as e:
        raise _fail(error, label, _strerror(e)) from None
    try:
        now = os.fstat(fd)
        if (now.st_dev, now.st_ino) != (st.st_dev, st.st_ino) or not stat.S_ISREG(now.st_mode):
            raise _fail(error, label, "changed while it was being opened")
        os.set_blocking(fd, True)        # a regular file: reads are plain
        f = os.fdopen(fd, "rb", buffering=0)
    except BaseException:
        os.close(fd)
        raise
    st = now
    return f, st


def read_regular(path: str, *, limit: int, label: str | None = None,
                 error: type[FaultpathError] = UsageError) -> tuple[bytes, os.stat_result]:
    """The whole content of a regular file of at most `limit` bytes, and the
    fstat of what was read (for callers that cache by identity)."""
    label = label or path
    f, st = open_input(path, limit=limit, label=label, error=error)
    with f:
        chunks, got = [], 0
        try:
            while got <= limit:
                b = f.read(limit + 1 - got)
                if not b:
                    break
                chunks.append(b)
                got += len(b)
        except OSError as e:
            raise _fail(error, label, _strerror(e)) from None
    if got > limit:
        raise _fail(error, label, f"more than the {limit} bytes this input may have")
    return b"".join(chunks), st


def read_bytes(path: str, *, limit: int, label: str | None = None,
               error: type[FaultpathError] = UsageError) -> bytes:
    """The whole content of a regular file of at most `limit` bytes."""
    return read_regular(path, limit=limit, label=label, error=error)[0]


def decode_text(raw: bytes, label: str, error: type[FaultpathError] = UsageError) -> str:
    """UTF-8 text without NUL bytes, or one line saying where it is not."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise _fail(error, label, f"not UTF-8 text (byte {raw[e.start]:#04x} at offset {e.start})") from None
    nul = text.find("\0")
    if nul >= 0:
        line = text.count("\n", 0, nul) + 1
        raise _fail(error, label, f"not a text file (a NUL byte on line {line})")
    return text


def read_text(path: str, *, limit: int, label: str | None = None,
              error: type[FaultpathError] = UsageError) -> str:
    label = label or path
    return decode_text(read_bytes(path, limit=limit, label=label, error=error), label, error)


def json_depth_exceeds(obj: object, max_depth: int) -> bool:
    """Whether obj nests lists/dicts deeper than max_depth (iterative: the
    check itself must not recurse)."""
    stack = [(obj, 1)]
    while stack:
        o, d = stack.pop()
        if isinstance(o, dict):
            children = o.values()
        elif isinstance(o, list):
            children = o
        else:
            continue
        if d > max_depth:
            return True
        stack.extend((c, d + 1) for c in children if isinstance(c, (dict, list)))
    return False


def parse_json(text: str, label: str, *, max_depth: int = MAX_JSON_DEPTH,
               error: type[FaultpathError] = UsageError) -> object:
    """JSON as Python objects; no NaN/Infinity (not JSON), bounded nesting."""
    def no_constant(name: str):
        raise ValueError(f"{name} is not a JSON value")
    try:
        obj = json.loads(text, parse_constant=no_constant)
    except RecursionError:
        raise _fail(error, label, f"JSON nested deeper than {max_depth} levels") from None
    except ValueError as e:                         # JSONDecodeError is one
        raise _fail(error, label, f"not valid JSON: {str(e).splitlines()[0]}") from None
    if json_depth_exceeds(obj, max_depth):
        raise _fail(error, label, f"JSON nested deeper than {max_depth} levels")
    return obj


def read_json(path: str, *, limit: int, label: str | None = None, max_depth: int = MAX_JSON_DEPTH,
              error: type[FaultpathError] = UsageError) -> object:
    label = label or path
    return parse_json(read_text(path, limit=limit, label=label, error=error), label,
                      max_depth=max_depth, error=error)


def _strerror(e: OSError) -> str:
    return e.strerror or type(e).__name__
