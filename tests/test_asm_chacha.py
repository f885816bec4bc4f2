"""asm/chacha20_blocks.s: natively on this CPU (emulator/calibrate/native.py) and in
Unicorn, against each other and the Python reference (vdso/chacha20.py).
Re-derives the kernel's vdso_test_chacha: random keys, 128-block runs split
in two calls at every point, a counter crossing 2**32 that must carry into the
high word and be written back."""
from __future__ import annotations

import ctypes
import os
import platform
import random
import struct

import pytest
from unicorn import UC_ARCH_X86, UC_MODE_64, UC_PROT_EXEC, UC_PROT_READ, Uc
from unicorn.x86_const import (UC_X86_REG_RCX, UC_X86_REG_RDI, UC_X86_REG_RDX,
                               UC_X86_REG_RIP, UC_X86_REG_RSI, UC_X86_REG_RSP)
import unicorn.x86_const as x86c

from emulator.calibrate.native import NativeCode
from vdso.asm_build import build_image
from vdso.chacha20 import chacha20_blocks
from vdso.image import PAGE_SIZE, VDSO_BASE

NBLOCKS = 128
DATA = 0x1000_0000            # key at DATA, counter at DATA + 0x40, dst at DATA + 0x1000
STACK_TOP = 0x2001_0000
SENTINEL = 0x3000_0000
XMM = [getattr(x86c, f"UC_X86_REG_XMM{i}") for i in range(16)]
USED_XMM = {0, 1, 2, 3, 4, 8, 9, 10, 11, 12}


@pytest.fixture(scope="module")
def image():
    return build_image("builtin")


@pytest.fixture(scope="module")
def native(image):
    if platform.machine() not in ("x86_64", "AMD64"):
        pytest.skip("native run needs an x86-64 CPU")
    code = NativeCode(image.text)
    f = code.func(image.symbols["__arch_chacha20_blocks_nostack"], None,
                  [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t])

    def run(key: bytes, counter: int, nblocks: int) -> tuple[bytes, int]:
        dst = ctypes.create_string_buffer(64 * nblocks)
        k = ctypes.create_string_buffer(key, 32)
        c = ctypes.c_uint64(counter)
        f(dst, k, ctypes.byref(c), nblocks)
        return dst.raw, c.value
    run.code = code                  # keep the mapping alive
    return run


class UnicornChaCha:
    """A bare Uc with the image mapped; a call returns to a sentinel."""

    def __init__(self, image):
        uc = self.uc = Uc(UC_ARCH_X86, UC_MODE_64)
        uc.mem_map(VDSO_BASE, image.size, UC_PROT_READ | UC_PROT_EXEC)
        uc.mem_write(VDSO_BASE, image.text)
        uc.mem_map(DATA, 0x1000 + 64 * NBLOCKS + PAGE_SIZE)
        uc.mem_map(STACK_TOP - 0x1000, 0x1000)
        uc.mem_map(SENTINEL, PAGE_SIZE, UC_PROT_READ | UC_PROT_EXEC)
        self.entry = image.symbol("__arch_chacha20_blocks_nostack")

    def call(self, dst: int, key_addr: int, ctr_addr: int, nblocks: int) -> None:
        uc = self.uc
        sp = STACK_TOP - 0x80
        uc.mem_write(sp, struct.pack("<Q", SENTINEL))
        for reg, v in ((UC_X86_REG_RDI, dst), (UC_X86_REG_RSI, key_addr),
                       (UC_X86_REG_RDX, ctr_addr), (UC_X86_REG_RCX, nblocks),
                       (UC_X86_REG_RSP, sp)):
            uc.reg_write(reg, v)
        uc.emu_start(self.entry, SENTINEL)
        assert uc.reg_read(UC_X86_REG_RIP) == SENTINEL
        assert uc.reg_read(UC_X86_REG_RSP) == sp + 8
        # Nothing but the return address was touched on the stack.
        assert bytes(uc.mem_read(STACK_TOP - 0x1000, 0x1000 - 0x80)) == bytes(0x1000 - 0x80)

    def run(self, key: bytes, counter: int, nblocks: int) -> tuple[bytes, int]:
        self.uc.mem_write(DATA, key)
        self.uc.mem_write(DATA + 0x40, struct.pack("<Q", counter))
        self.call(DATA + 0x1000, DATA, DATA + 0x40, nblocks)
        out = bytes(self.uc.mem_read(DATA + 0x1000, 64 * nblocks))
        return out, struct.unpack("<Q", self.uc.mem_read(DATA + 0x40, 8))[0]


@pytest.fixture(scope="module")
def emulated(image):
    return UnicornChaCha(image)


def _split_runs(run, key: bytes, start: int, expected: bytes, expected_counter: int):
    whole, counter = run(key, start, NBLOCKS)
    assert whole == expected and counter == expected_counter
    for split in range(1, NBLOCKS):
        first, mid = run(key, start, split)
        assert mid == (start + split) % 2**64
        second, end = run(key, mid, NBLOCKS - split)
        assert first + second == expected, f"split at {split}"
        assert end == expected_counter


STARTS = [("zero", 0), ("carry", 2**32 - 126), ("wrap", 2**64 - 3), ("random", None)]


@pytest.mark.parametrize("name,start", STARTS, ids=[s[0] for s in STARTS])
def test_split_runs_native_unicorn_reference(native, emulated, name, start):
    rnd = random.Random(name)
    key = rnd.randbytes(32)
    if start is None:
        start = rnd.getrandbits(64)
    expected, expected_counter = chacha20_blocks(key, start, NBLOCKS)
    _split_runs(native, key, start, expected, expected_counter)
    _split_runs(emulated.run, key, start, expected, expected_counter)


def test_counter_carries_into_the_high_word(native, emulated):
    key = os.urandom(32)
    start = 2**32 - 126
    for run in (native, emulated.run):
        out, counter = run(key, start, NBLOCKS)
        assert counter == 2**32 + 2                   # low word wrapped, high word 1
        assert out[126 * 64:127 * 64] == chacha20_blocks(key, 2**32, 1)[0]


def test_random_keys_and_lengths(native, emulated):
    rnd = random.Random(99)
    for _ in range(20):
        key = rnd.randbytes(32)
        counter = rnd.getrandbits(64)
        n = rnd.randint(1, 9)
        expected = chacha20_blocks(key, counter, n)
        assert native(key, counter, n) == expected
        assert emulated.run(key, counter, n) == expected


def test_dst_may_overlap_the_key(image, emulated):
    """The refill writes batch_key (128 bytes) over state->key: the key must
    be read completely before the first store."""
    uc = emulated.uc
    key = bytes(range(1, 33))
    state = DATA + 0x1000
    uc.mem_write(state + 96, key)
    uc.mem_write(DATA + 0x40, struct.pack("<Q", 5))
    emulated.call(state, state + 96, DATA + 0x40, 2)
    assert bytes(uc.mem_read(state, 128)) == chacha20_blocks(key, 5, 2)[0]


def test_registers_after_return(image, emulated):
    uc = emulated.uc
    junk = [int.from_bytes(bytes([0x10 + i]) * 16, "little") for i in range(16)]
    for reg, v in zip(XMM, junk):
        uc.reg_write(reg, v)
    key = os.urandom(32)
    uc.mem_write(DATA, key)
    uc.mem_write(DATA + 0x40, struct.pack("<Q", 1))
    emulated.call(DATA + 0x1000, DATA, DATA + 0x40, 3)
    for i, reg in enumerate(XMM):
        if i in USED_XMM:
            assert uc.reg_read(reg) == 0, f"xmm{i} not cleared"
        else:
            assert uc.reg_read(reg) == junk[i], f"xmm{i} clobbered"
    assert uc.reg_read(UC_X86_REG_RSI) == DATA
    assert uc.reg_read(UC_X86_REG_RDX) == DATA + 0x40
    assert uc.reg_read(UC_X86_REG_RCX) == 0


def test_sse2_only(image):
    """No SSSE3+ (pshufb, palignr...) and no VEX anywhere in the routine."""
    from capstone import CS_ARCH_X86, CS_MODE_64, Cs
    cs = Cs(CS_ARCH_X86, CS_MODE_64)
    off = image.symbols["__arch_chacha20_blocks_nostack"]
    mnemonics = set()
    for insn in cs.disasm(image.text[off:], off):
        mnemonics.add(insn.mnemonic)
        if insn.mnemonic == "ret":
            break
    assert "ret" in mnemonics
    sse2_and_base = {"movdqu", "movdqa", "movq", "mov", "movabs", "punpcklqdq", "paddd",
                     "pxor", "pshuflw", "pshufhw", "pslld", "psrld", "por", "pshufd",
                     "paddq", "dec", "jne", "add", "ret"}
    assert mnemonics <= sse2_and_base, mnemonics - sse2_and_base
