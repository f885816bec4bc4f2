"""Our assembled __vdso_getrandom against (a) a Python model of the 6.11+
algorithm built on vdso/chacha20.py and (b) the host kernel's own vDSO, both
run in the same throwaway Unicorn harness (the real Machine replaces it later).

The harness: the image at VDSO_BASE, the vvar page with struct vdso_rng_data
below it, a state page, a buffer, a stack, and a syscall hook that serves
getrandom (318) from a deterministic byte stream.
"""
from __future__ import annotations

import ctypes
import io
import random
import struct
from dataclasses import dataclass, field

import pytest
from unicorn import UC_ARCH_X86, UC_HOOK_CODE, UC_HOOK_INSN, UC_HOOK_MEM_READ, UC_MODE_64, Uc
from unicorn import UC_PROT_EXEC, UC_PROT_READ
from unicorn.x86_const import (UC_X86_INS_SYSCALL, UC_X86_REG_EFLAGS, UC_X86_REG_R8,
                               UC_X86_REG_R9, UC_X86_REG_R10, UC_X86_REG_R11,
                               UC_X86_REG_R12, UC_X86_REG_R13, UC_X86_REG_R14,
                               UC_X86_REG_R15, UC_X86_REG_RAX, UC_X86_REG_RBP,
                               UC_X86_REG_RBX, UC_X86_REG_RCX, UC_X86_REG_RDI,
                               UC_X86_REG_RDX, UC_X86_REG_RIP, UC_X86_REG_RSI,
                               UC_X86_REG_RSP)

from vdso.asm_build import build_image
from vdso.chacha20 import chacha20_blocks
from vdso.image import PAGE_SIZE, RNG_DATA_OFFSET_6_15, VDSO_BASE

NR_GETRANDOM = 318
EFAULT = 14
MAX_RW_COUNT = 0x7FFFF000
STATE_SIZE = 144

STATE_PAGE = 0x1000_0000
BUF_ADDR = 0x2000_0000
BUF_SIZE = 0x4000
STACK_TOP = 0x3001_0000
STACK_SIZE = 0x10000
RET_SENTINEL = 0x4000_0000            # a mapped page nobody executes: emu_start's `until`
FILL = 0xA5                           # the buffer's bytes before a call

SIZES = [0, 1, 4, 16, 63, 64, 65, 95, 96, 97, 127, 128, 129, 255, 256, 1024, 4095, 4096]

CALLEE_SAVED = (UC_X86_REG_RBX, UC_X86_REG_RBP, UC_X86_REG_R12, UC_X86_REG_R13,
                UC_X86_REG_R14, UC_X86_REG_R15)
SCRATCH_CLEARED = (UC_X86_REG_RCX, UC_X86_REG_RDX, UC_X86_REG_RSI, UC_X86_REG_RDI,
                   UC_X86_REG_R8, UC_X86_REG_R9, UC_X86_REG_R10, UC_X86_REG_R11)


class Kernel:
    """The emulated kernel's getrandom: a deterministic byte stream, with
    optional failures (returns -EAGAIN) for chosen call numbers."""

    def __init__(self, seed: int = 1, fail_calls: set[int] = frozenset()):
        self.rng = random.Random(seed)
        self.calls: list[tuple[int, int, int]] = []      # (buf, len, flags) as passed
        self.fail_calls = set(fail_calls)

    def getrandom(self, buf: int, length: int, flags: int) -> tuple[int, bytes]:
        self.calls.append((length, flags))
        if len(self.calls) - 1 in self.fail_calls:
            return -11, b""                              # -EAGAIN
        if not buf or length > BUF_SIZE:
            return -EFAULT, b""                          # copy_to_user would fault
        return length, self.rng.randbytes(length)


@dataclass
class CallResult:
    ret: int
    out: bytes                       # the buffer window after the call
    state: bytes
    syscalls: list = field(default_factory=list)    # (nr, buf offset, len, flags)
    # state->generation, pos, in_use as each syscall was entered
    syscall_states: list = field(default_factory=list)
    insns: int = 0
    regs: dict = field(default_factory=dict)


class Harness:
    def __init__(self, text: bytes, entry: int, kernel: Kernel, *, generation=1,
                 is_ready=True, rng_offset=RNG_DATA_OFFSET_6_15):
        self.kernel = kernel
        self.entry = VDSO_BASE + entry
        self.rng_addr = VDSO_BASE + rng_offset
        uc = self.uc = Uc(UC_ARCH_X86, UC_MODE_64)
        size = (len(text) + PAGE_SIZE - 1) // PAGE_SIZE * PAGE_SIZE
        uc.mem_map(VDSO_BASE, size, UC_PROT_READ | UC_PROT_EXEC)
        uc.mem_write(VDSO_BASE, text)
        # The vvar page is host memory we write directly (also from inside a
        # read hook, where calling mem_write into Unicorn is not safe).
        self.vvar = ctypes.create_string_buffer(PAGE_SIZE)
        self.vvar_start = self.rng_addr & ~(PAGE_SIZE - 1)
        uc.mem_map_ptr(self.vvar_start, PAGE_SIZE, UC_PROT_READ, ctypes.addressof(self.vvar))
        uc.mem_map(STATE_PAGE, PAGE_SIZE)
        uc.mem_map(BUF_ADDR, BUF_SIZE)
        uc.mem_map(STACK_TOP - STACK_SIZE, STACK_SIZE)
        uc.mem_map(RET_SENTINEL, PAGE_SIZE, UC_PROT_READ | UC_PROT_EXEC)
        uc.hook_add(UC_HOOK_INSN, self._on_syscall, None, 1, 0, UC_X86_INS_SYSCALL)
        self.set_rng(generation, is_ready)
        self._pending = None
        self._syscalls: list = []
        self.gen_reads = 0
        self.on_gen_read = None          # callback(n) before the n-th read of rng->generation
        uc.hook_add(UC_HOOK_MEM_READ, self._on_rng_read, None, self.rng_addr, self.rng_addr)

    def set_rng(self, generation: int, is_ready: bool = True) -> None:
        raw = struct.pack("<QB", generation, int(is_ready))
        ctypes.memmove(ctypes.addressof(self.vvar) + self.rng_addr - self.vvar_start, raw, len(raw))

    def state(self, off: int = 0) -> bytes:
        return bytes(self.uc.mem_read(STATE_PAGE + off, STATE_SIZE))

    def _on_rng_read(self, uc, access, address, size, value, data):
        if size == 8 and address == self.rng_addr:
            self.gen_reads += 1
            if self.on_gen_read:
                self.on_gen_read(self.gen_reads)

    def _on_syscall(self, uc, data):
        self._pending = tuple(uc.reg_read(r) for r in (
            UC_X86_REG_RAX, UC_X86_REG_RDI, UC_X86_REG_RSI, UC_X86_REG_RDX, UC_X86_REG_RIP))
        uc.emu_stop()

    def _serve(self):
        nr, buf, length, flags, rip = self._pending
        self._pending = None
        self._syscalls.append((nr, buf, length, flags & 0xFFFF_FFFF))
        self._syscall_states.append(bytes(self.uc.mem_read(self._state_addr + 128, 10)))
        assert nr == NR_GETRANDOM, f"unexpected syscall {nr}"
        ret, data = self.kernel.getrandom(buf, length, flags & 0xFFFF_FFFF)
        if data:
            self.uc.mem_write(buf, data)
        uc = self.uc
        uc.reg_write(UC_X86_REG_RAX, ret & 0xFFFF_FFFF_FFFF_FFFF)
        uc.reg_write(UC_X86_REG_RCX, rip + 2)                  # what SYSCALL does
        uc.reg_write(UC_X86_REG_R11, uc.reg_read(UC_X86_REG_EFLAGS))
        return rip + 2

    def call(self, length: int, flags: int = 0, *, buf: int = BUF_ADDR, state_off: int = 0,
             opaque_len: int = STATE_SIZE, window: int | None = None,
             count: bool = False) -> CallResult:
        uc = self.uc
        window = min(BUF_SIZE, length + 64) if window is None else window
        if buf:
            uc.mem_write(BUF_ADDR, bytes([FILL]) * BUF_SIZE)
        sp = STACK_TOP - 0x100
        uc.mem_write(sp, struct.pack("<Q", RET_SENTINEL))
        args = {UC_X86_REG_RDI: buf, UC_X86_REG_RSI: length, UC_X86_REG_RDX: flags,
                UC_X86_REG_RCX: STATE_PAGE + state_off,
                UC_X86_REG_R8: opaque_len, UC_X86_REG_RSP: sp}
        callee = {r: 0x1111_0000_0000 + i for i, r in enumerate(CALLEE_SAVED)}
        for r, v in {**args, **callee, UC_X86_REG_R9: 0x99, UC_X86_REG_R10: 0x1010,
                     UC_X86_REG_R11: 0x1111}.items():
            uc.reg_write(r, v)
        self._syscalls = []
        self._syscall_states = []
        self._state_addr = args[UC_X86_REG_RCX]
        self.gen_reads = 0
        counter = [0]
        hook = None
        if count:
            def on_code(uc, address, size, data):
                counter[0] += 1
            hook = uc.hook_add(UC_HOOK_CODE, on_code)
            uc.ctl_flush_tb()                 # blocks translated earlier lack the hook
        try:
            pc = self.entry
            for _ in range(100):
                uc.emu_start(pc, RET_SENTINEL)
                if self._pending is None:
                    break
                pc = self._serve()
            else:
                raise AssertionError("too many syscalls")
        finally:
            if hook is not None:
                uc.hook_del(hook)
                uc.ctl_flush_tb()
        assert uc.reg_read(UC_X86_REG_RIP) == RET_SENTINEL
        ret = uc.reg_read(UC_X86_REG_RAX)
        ret = ret - (1 << 64) if ret >> 63 else ret
        regs = {r: uc.reg_read(r) for r in CALLEE_SAVED + SCRATCH_CLEARED + (UC_X86_REG_RSP,)}
        assert all(regs[r] == v for r, v in callee.items()), "callee-saved register clobbered"
        assert regs[UC_X86_REG_RSP] == sp + 8
        out = bytes(uc.mem_read(BUF_ADDR, window)) if buf else b""
        sys = [(nr, (b - BUF_ADDR) if BUF_ADDR <= b < BUF_ADDR + BUF_SIZE else
                (b - STATE_PAGE - state_off + 0x1_0000 if STATE_PAGE <= b < STATE_PAGE + PAGE_SIZE
                 else b), n, f) for nr, b, n, f in self._syscalls]
        state = self.state(state_off) if state_off + STATE_SIZE <= PAGE_SIZE else b""
        return CallResult(ret, out, state, sys, self._syscall_states, counter[0], regs)


# ---------------------------------------------------------------------------
# A Python model of the algorithm (DESIGN.md, "vDSO getrandom (6.11+)")
# ---------------------------------------------------------------------------

class Model:
    """Same inputs as the harness; returns what the buffer, the state and the
    syscall log must look like.  `gen_at_read(n)` gives rng->generation at its
    n-th read during the call (defaults to the current value)."""

    def __init__(self, kernel: Kernel, generation=1, is_ready=True):
        self.kernel = kernel
        self.generation = generation
        self.is_ready = is_ready
        self.state = bytearray(STATE_SIZE)
        self.syscalls: list = []

    # struct accessors
    def _get(self, fmt, off):
        return struct.unpack_from(fmt, self.state, off)[0]

    def _put(self, fmt, off, v):
        struct.pack_into(fmt, self.state, off, v)

    def _fallback(self, buf: bytearray, length: int, flags: int) -> int:
        self.syscalls.append((NR_GETRANDOM, 0, length, flags))
        ret, data = self.kernel.getrandom(1, length, flags)
        buf[:len(data)] = data
        return ret

    def call(self, length: int, flags: int = 0, *, window=None, opaque_len=STATE_SIZE,
             gen_at_read=None, straddles=False) -> tuple[int, bytes, bytes, list]:
        self.syscalls = []
        window = min(BUF_SIZE, length + 64) if window is None else window
        buf = bytearray([FILL]) * window
        ret = self._call(buf, length, flags, opaque_len, gen_at_read, straddles)
        return ret, bytes(buf), bytes(self.state), self.syscalls

    def _call(self, buf, length, flags, opaque_len, gen_at_read, straddles):
        reads = [0]

        def read_gen():
            reads[0] += 1
            if gen_at_read is not None:
                g = gen_at_read(reads[0])
                if g is not None:
                    self.generation = g
            return self.generation

        ret = min(length, MAX_RW_COUNT)
        if straddles:
            return -EFAULT
        if flags & ~7 or opaque_len != STATE_SIZE or not self.is_ready:
            return self._fallback(buf, length, flags)
        if length == 0:
            return 0
        if self.state[137]:
            return self._fallback(buf, length, flags)
        self.state[137] = 1
        counter = 0
        retried = False
        while True:                                     # retry_generation
            g = read_gen()
            if self._get("<Q", 128) != g:
                self._put("<Q", 128, g)
                self.syscalls.append((NR_GETRANDOM, 0x1_0000 + 96, 32, 0))
                r, data = self.kernel.getrandom(1, 32, 0)
                self.state[96:96 + len(data)] = data
                if r != 32:
                    self._put("<Q", 128, 0)
                    self.state[137] = 0
                    return self._fallback(buf, length, flags)
                self.state[136] = 96
            left, at = ret, 0
            while True:
                pos = self.state[136]
                n = min(96 - pos, left)
                if n:
                    buf[at:at + n] = self.state[pos:pos + n]
                    self.state[pos:pos + n] = bytes(n)
                    self.state[136] = (pos + n) & 0xFF
                    at += n
                    left -= n
                if left == 0:
                    if self._get("<Q", 128) != read_gen():
                        if retried:
                            self.state[137] = 0
                            return self._fallback(buf, length, flags)
                        retried = True
                        break
                    self.state[137] = 0
                    return ret
                key = bytes(self.state[96:128])
                nblocks = left // 64
                if nblocks:
                    data, counter = chacha20_blocks(key, counter, nblocks)
                    buf[at:at + len(data)] = data
                    at += len(data)
                    left -= len(data)
                data, counter = chacha20_blocks(key, counter, 2)
                self.state[0:128] = data
                self.state[136] = 0


# ---------------------------------------------------------------------------
# Images
# ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def builtin():
    img = build_image("builtin")
    return img.text, img.symbols["__vdso_getrandom"]


@pytest.fixture(scope="module")
def builtin_v14():
    img = build_image("builtin-v14")
    return img.text, img.symbols["__vdso_getrandom"]


def _host_vdso() -> tuple[bytes, int] | None:
    """The running kernel's vDSO image and its __vdso_getrandom offset."""
    try:
        from elftools.elf.elffile import ELFFile
        libc = ctypes.CDLL(None)
        libc.getauxval.restype = ctypes.c_ulong
        libc.getauxval.argtypes = [ctypes.c_ulong]
        base = libc.getauxval(33)                        # AT_SYSINFO_EHDR
        if not base:
            return None
        head = ctypes.string_at(base, 64)
        phoff, = struct.unpack_from("<Q", head, 32)
        phentsize, phnum = struct.unpack_from("<HH", head, 54)
        end = 0
        for i in range(phnum):
            ph = ctypes.string_at(base + phoff + i * phentsize, phentsize)
            p_type, = struct.unpack_from("<I", ph, 0)
            vaddr, = struct.unpack_from("<Q", ph, 16)
            memsz, = struct.unpack_from("<Q", ph, 40)
            if p_type == 1:
                end = max(end, vaddr + memsz)
        # The mapping is page-granular; the section headers sit past the
        # PT_LOAD's end but inside its last page.
        image = ctypes.string_at(base, (end + PAGE_SIZE - 1) // PAGE_SIZE * PAGE_SIZE)
        elf = ELFFile(io.BytesIO(image))
        dynsym = elf.get_section_by_name(".dynsym")
        for sym in dynsym.iter_symbols():
            if sym.name == "__vdso_getrandom":
                return image, sym["st_value"]
    except Exception:
        return None
    return None


def _host_rng_offsets(image: bytes, entry: int) -> set[int]:
    """RIP-relative targets of __vdso_getrandom that lie below the image."""
    from capstone import CS_ARCH_X86, CS_MODE_64, Cs
    from capstone.x86 import X86_OP_MEM, X86_REG_RIP
    cs = Cs(CS_ARCH_X86, CS_MODE_64)
    cs.detail = True
    out = set()
    for insn in cs.disasm(image[entry:entry + 0x400], entry):
        for op in insn.operands:
            if op.type == X86_OP_MEM and op.mem.base == X86_REG_RIP:
                target = insn.address + insn.size + op.mem.disp
                if target < 0:
                    out.add(target)
        if insn.mnemonic == "ret" and insn.address > entry + 0x200:
            break
    return out


@pytest.fixture(scope="module")
def host():
    found = _host_vdso()
    if found is None:
        pytest.skip("the running kernel's vDSO has no __vdso_getrandom (before 6.11)")
    image, entry = found
    if not _host_rng_offsets(image, entry) <= {RNG_DATA_OFFSET_6_15, RNG_DATA_OFFSET_6_15 + 8}:
        pytest.skip("host vdso_rng_data is not at text - 4 pages (not the 6.15+ layout)")
    return image, entry


# ---------------------------------------------------------------------------
# Against the model
# ---------------------------------------------------------------------------

def _check_same(result: CallResult, expected):
    ret, out, state, syscalls = expected
    assert result.ret == ret
    assert result.out == out
    assert result.state == state
    assert result.syscalls == syscalls
    assert all(result.regs[r] == 0 for r in SCRATCH_CLEARED)


def test_every_size_from_a_fresh_state(builtin):
    text, entry = builtin
    for size in SIZES:
        h = Harness(text, entry, Kernel(seed=size))
        m = Model(Kernel(seed=size))
        _check_same(h.call(size), m.call(size))


def test_sequence_of_calls_shares_the_state(builtin):
    text, entry = builtin
    h, m = Harness(text, entry, Kernel(seed=7)), Model(Kernel(seed=7))
    sizes = SIZES + SIZES[::-1] + [1] * 100 + [37, 200, 5, 96, 3, 4096, 1]
    for size in sizes:
        _check_same(h.call(size), m.call(size))


def test_generation_bump_reseeds(builtin):
    text, entry = builtin
    h, m = Harness(text, entry, Kernel(seed=3)), Model(Kernel(seed=3))
    for i, size in enumerate([10, 100, 10, 500, 1]):
        if i in (2, 4):
            h.set_rng(10 + i)
            m.generation = 10 + i
        _check_same(h.call(size), m.call(size))


@pytest.mark.parametrize("bumps", [{2}, {2, 4}], ids=["retry-once", "retry-then-fallback"])
@pytest.mark.parametrize("size", [5, 200])
def test_generation_moving_during_the_call(builtin, bumps, size):
    text, entry = builtin
    h, m = Harness(text, entry, Kernel(seed=4)), Model(Kernel(seed=4))
    _check_same(h.call(size), m.call(size))             # warm state
    # Bump rng->generation just before its 2nd (and 4th) read in the call:
    # the end-of-request check sees a new generation.
    gens = iter(range(50, 60))

    def bump(n):
        if n in bumps:
            h.set_rng(next(gens))
    h.on_gen_read = bump
    got = h.call(size)
    gens = iter(range(50, 60))
    expected = m.call(size, gen_at_read=lambda n: next(gens) if n in bumps else None)
    _check_same(got, expected)


def test_fallbacks_and_early_returns(builtin):
    text, entry = builtin
    h, m = Harness(text, entry, Kernel(seed=5)), Model(Kernel(seed=5))
    _check_same(h.call(100), m.call(100))
    # unknown flags, foreign opaque_len: the whole request to the syscall
    _check_same(h.call(100, flags=8), m.call(100, flags=8))
    _check_same(h.call(100, flags=7), m.call(100, flags=7))
    _check_same(h.call(50, opaque_len=128), m.call(50, opaque_len=128))
    # len 0 after the checks
    _check_same(h.call(0), m.call(0))
    # in_use set: reentrancy falls back
    h.uc.mem_write(STATE_PAGE + 137, b"\x01")
    m.state[137] = 1
    _check_same(h.call(20), m.call(20))
    h.uc.mem_write(STATE_PAGE + 137, b"\x00")
    m.state[137] = 0
    # RNG not ready
    h.set_rng(1, is_ready=False)
    m.is_ready = False
    _check_same(h.call(20), m.call(20))
    _check_same(h.call(0), m.call(0))


def test_reseed_failure_falls_back(builtin):
    text, entry = builtin
    h, m = Harness(text, entry, Kernel(seed=6, fail_calls={0})), Model(Kernel(seed=6, fail_calls={0}))
    _check_same(h.call(40), m.call(40))                 # reseed fails -> generation 0
    assert h.state()[128:136] == bytes(8) and h.state()[137] == 0
    _check_same(h.call(40), m.call(40))                 # next call reseeds


def test_straddling_state_is_efault(builtin):
    text, entry = builtin
    h = Harness(text, entry, Kernel())
    r = h.call(16, state_off=PAGE_SIZE - STATE_SIZE + 8)
    assert r.ret == -EFAULT and r.syscalls == [] and r.out == bytes([FILL]) * 80
    assert h.call(16, state_off=PAGE_SIZE - STATE_SIZE).ret == 16


def test_params_query(builtin):
    text, entry = builtin
    h = Harness(text, entry, Kernel())
    h.uc.mem_write(STATE_PAGE, b"\xee" * 80)
    r = h.call(0, buf=0, opaque_len=2**64 - 1)
    assert r.ret == 0 and r.syscalls == []
    params = bytes(h.uc.mem_read(STATE_PAGE, 80))
    assert params[:64] == struct.pack("<III13I", 144, 3, 0x28, *([0] * 13))
    assert params[64:] == b"\xee" * 16
    # Not a query (len != 0): straddle check, then the fallback.
    r = h.call(8, buf=0, opaque_len=2**64 - 1)
    assert r.syscalls == [(NR_GETRANDOM, 0, 8, 0)]


def test_v14_entry_runs_the_same_body(builtin, builtin_v14):
    text, entry = builtin
    text14, entry14 = builtin_v14
    h, h14 = Harness(text, entry, Kernel(seed=9)), Harness(text14, entry14, Kernel(seed=9))
    for size in [1, 64, 100, 300]:
        a = h.call(size)
        b = h14.call(size, opaque_len=0xDEAD)          # r8 is not an argument in v14
        assert (a.ret, a.out, a.state, a.syscalls) == (b.ret, b.out, b.state, b.syscalls)


# ---------------------------------------------------------------------------
# Against the host kernel's vDSO
# ---------------------------------------------------------------------------

def _same_as_host(a: CallResult, b: CallResult):
    assert a.ret == b.ret
    assert a.out == b.out
    assert a.state == b.state
    assert a.syscalls == b.syscalls
    assert a.syscall_states == b.syscall_states      # e.g. generation written before the reseed
    assert {r: a.regs[r] for r in SCRATCH_CLEARED} == {r: b.regs[r] for r in SCRATCH_CLEARED}


@pytest.mark.host_vdso
def test_host_every_size_and_sequence(builtin, host):
    ours = Harness(*builtin, Kernel(seed=11))
    theirs = Harness(*host, Kernel(seed=11))
    for size in SIZES + SIZES[::-1] + [1] * 20 + [1263] * 3:
        _same_as_host(ours.call(size), theirs.call(size))
    for size in SIZES:                                  # fresh states too
        ours, theirs = Harness(*builtin, Kernel(seed=size)), Harness(*host, Kernel(seed=size))
        _same_as_host(ours.call(size), theirs.call(size))


@pytest.mark.host_vdso
def test_host_edge_paths(builtin, host):
    ours = Harness(*builtin, Kernel(seed=12, fail_calls={4}))
    theirs = Harness(*host, Kernel(seed=12, fail_calls={4}))
    both = (ours, theirs)

    def same(**kw):
        _same_as_host(ours.call(**kw), theirs.call(**kw))

    same(length=100)
    same(length=100, flags=8)
    same(length=100, flags=0xFFFF_FFF8)
    same(length=100, flags=5)
    same(length=33, opaque_len=145)
    same(length=0)
    for h in both:
        h.set_rng(2)
    same(length=10)                                     # reseed (syscall #4 fails) -> fallback
    same(length=10)                                     # reseed again
    for h in both:
        h.uc.mem_write(STATE_PAGE + 137, b"\x01")
    same(length=20)                                     # in_use
    for h in both:
        h.uc.mem_write(STATE_PAGE + 137, b"\x00")
        h.set_rng(2, is_ready=False)
    same(length=20)
    same(length=0)
    same(length=2**63 + 5, flags=8, buf=0)             # the fallback gets the unclamped len
    # A corrupted pos (> 96) reads past the batch the same way.
    for h in both:
        h.set_rng(4)
    same(length=10)
    for h in both:
        h.uc.mem_write(STATE_PAGE + 136, b"\xf0")
    same(length=10)
    # Straddling state and the params query.
    same(length=16, state_off=PAGE_SIZE - STATE_SIZE + 1, window=80)
    for h in both:
        h.uc.mem_write(STATE_PAGE, b"\xee" * 80)
    same(length=0, buf=0, opaque_len=2**64 - 1)
    assert ours.state() == theirs.state()
    same(length=8, buf=0, opaque_len=2**64 - 1)


@pytest.mark.host_vdso
@pytest.mark.parametrize("bumps", [{2}, {2, 4}], ids=["retry-once", "retry-then-fallback"])
def test_host_generation_moving_during_the_call(builtin, host, bumps):
    results = []
    for img in (builtin, host):
        h = Harness(*img, Kernel(seed=13))
        h.call(300)
        gens = iter(range(70, 80))
        h.on_gen_read = lambda n, h=h, gens=gens: h.set_rng(next(gens)) if n in bumps else None
        results.append([h.call(size) for size in (150, 7)])
    for a, b in zip(*results):
        _same_as_host(a, b)


def instruction_counts(image, sizes=(1, 4, 16, 64, 96, 128, 256, 1024, 4096)) -> dict[int, int]:
    """Steady-state instructions per call (state warmed up by one call of the
    same size)."""
    h = Harness(*image, Kernel(seed=21))
    out = {}
    for size in sizes:
        h.call(size)
        out[size] = h.call(size, count=True).insns
    return out


@pytest.mark.host_vdso
def test_instruction_counts_close_to_host(builtin, host):
    ours = instruction_counts(builtin, (1, 64, 256, 4096))
    theirs = instruction_counts(host, (1, 64, 256, 4096))
    for size in ours:
        assert ours[size] <= theirs[size] * 1.1, (size, ours, theirs)
        assert ours[size] >= theirs[size] * 0.6, (size, ours, theirs)
