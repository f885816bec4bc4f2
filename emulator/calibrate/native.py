"""Run machine code natively on this CPU: an executable mmap plus ctypes, and
real mappings of this process to run it on.

No compiler is involved: the bytes (for instance keystone output from asm/)
are copied into an anonymous mapping, which is then made read+execute, and
functions inside it are called through ctypes function pointers.  Used to
check our `__arch_chacha20_blocks_nostack` on real hardware against the
same bytes in Unicorn.

Only position-independent code can run this way: the mapping lands wherever
the kernel puts it, not at VDSO_BASE, so code with absolute references (or
RIP-relative references outside itself, like vdso_rng_data) must not be
called natively.  Mapping is a real mmap() of this process (anonymous,
droppable, a memfd, or at a fixed address) for such code to work on.
"""
from __future__ import annotations

import ctypes
import mmap
import os

from emulator.errors import FaultpathError

PAGE = 4096

MAP_PRIVATE = 0x02
MAP_ANONYMOUS = 0x20
MAP_DROPPABLE = 0x08
MAP_FIXED_NOREPLACE = 0x100000
PROT_READ, PROT_WRITE, PROT_EXEC = 1, 2, 4
MADV_DONTNEED = 4
MADV_NOHUGEPAGE = 15
MADV_PAGEOUT = 21


class NativeCode:
    """An executable copy of `code`.

    >>> nc = NativeCode(bytes.fromhex("4889f8c3"))        # mov rax, rdi; ret
    >>> nc.func(0, ctypes.c_uint64, [ctypes.c_uint64])(7)
    7
    """

    def __init__(self, code: bytes):
        if not code:
            raise FaultpathError("NativeCode: no code")
        self.size = (len(code) + mmap.PAGESIZE - 1) // mmap.PAGESIZE * mmap.PAGESIZE
        self._map = mmap.mmap(-1, self.size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS,
                              prot=mmap.PROT_READ | mmap.PROT_WRITE)
        self._map.write(code)
        self.address = ctypes.addressof(ctypes.c_char.from_buffer(self._map))
        # W^X: drop write before anything executes.
        libc = ctypes.CDLL(None, use_errno=True)
        libc.mprotect.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
        if libc.mprotect(self.address, self.size, mmap.PROT_READ | mmap.PROT_EXEC) != 0:
            err = ctypes.get_errno()
            raise FaultpathError(f"NativeCode: mprotect(PROT_EXEC) failed, errno {err}")
        self._funcs: list = []          # keep the function objects alive with the map

    def func(self, offset: int, restype=None, argtypes=()):
        """A callable for the function starting at `offset` in the code."""
        if not 0 <= offset < self.size:
            raise FaultpathError(f"NativeCode: offset {offset:#x} outside the code")
        proto = ctypes.CFUNCTYPE(restype, *argtypes)
        f = proto(self.address + offset)
        self._funcs.append(f)
        return f


def libc():
    """This process's libc through ctypes, with the prototypes the mappings use."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int,
                          ctypes.c_long]
    libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    libc.mprotect.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    libc.getauxval.restype = ctypes.c_ulong
    libc.getauxval.argtypes = [ctypes.c_ulong]
    return libc


class Mapping:
    """A real mmap() of this process (ctypes), unmapped on close."""

    def __init__(self, length: int, prot: int = PROT_READ | PROT_WRITE, flags: int = MAP_PRIVATE | MAP_ANONYMOUS,
                 fd: int = -1, addr: int = 0, nohuge: bool = True):
        self.libc = libc()
        self.length = length
        a = self.libc.mmap(addr or None, length, prot, flags, fd, 0)
        if a is None or a == ctypes.c_void_p(-1).value:
            err = ctypes.get_errno()
            raise FaultpathError(f"native: mmap(len={length}, flags={flags:#x}) failed: {os.strerror(err)}")
        if addr and a != addr:
            self.libc.munmap(a, length)
            raise FaultpathError(f"native: mmap at {addr:#x} landed at {a:#x}")
        self.addr = a
        if nohuge and not fd >= 0:
            self.libc.madvise(a, length, MADV_NOHUGEPAGE)

    def madvise(self, advice: int, off: int = 0, length: int | None = None) -> int:
        return self.libc.madvise(self.addr + off, self.length - off if length is None else length, advice)

    def close(self) -> None:
        if self.addr:
            self.libc.munmap(self.addr, self.length)
            self.addr = 0

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

