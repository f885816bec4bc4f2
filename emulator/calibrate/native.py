"""Run machine code natively on this CPU: an executable mmap plus ctypes.

No compiler is involved: the bytes (for instance keystone output from asm/)
are copied into an anonymous mapping, which is then made read+execute, and
functions inside it are called through ctypes function pointers.  Used to
check our `__arch_chacha20_blocks_nostack` on real hardware against the
same bytes in Unicorn.

Only position-independent code can run this way: the mapping lands wherever
the kernel puts it, not at VDSO_BASE, so code with absolute references (or
RIP-relative references outside itself, like vdso_rng_data) must not be
called natively.
"""
from __future__ import annotations

import ctypes
import mmap

from emulator.errors import FaultpathError


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
