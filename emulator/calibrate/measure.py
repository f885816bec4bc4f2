"""`faultpath calibrate`: measure this machine natively and write a profile.

No C compiler is involved.  A timing harness is written in assembly here,
assembled with keystone (vdso.asm_build.assemble_snippet, never keystone
directly: its radix is process-global state), copied into an executable
mapping (emulator/calibrate/native.py) and called through ctypes.  Every figure is TSC
ticks read with `lfence; rdtsc` ... `rdtscp; lfence`.

What is measured (each a median of several repeats, so one noisy repeat on
this VM does not move it):

* the core-clock/TSC ratio: dependency chains of known latency (`add r,r` is
  1 core cycle on every x86 core since the Pentium 4; `imul r,r` is 3), and
  the latency of the handful of SIMD forms the ChaCha20 loop is made of;
* `__vdso_getrandom` at each size, called natively through its real address
  (AT_SYSINFO_EHDR + symbol offset) with a real MAP_DROPPABLE state
  (mmap(..., MAP_ANONYMOUS | MAP_DROPPABLE = 0x28)) and opaque_len 144,
  averaged over a long run of calls exactly like a C benchmark loop: the batch
  position, and with it the per-call work, cycles through all its values;
* the vDSO's ChaCha20 block function alone (1..64 blocks), which fixes the
  out-of-order overlap at the loop exit (profile core.window_uops);
* the getrandom syscall at each size, and an unknown syscall (-ENOSYS: the
  bare entry/exit path);
* anonymous page faults, one page at a time with rdtsc around the touching
  instruction: read (maps the zero page), first write (zero-fill), write
  after read (COW from the zero page), write to a re-armed (MADV_DONTNEED)
  MAP_DROPPABLE page, write to a MAP_PRIVATE page of a memfd (a real COW
  copy, no fork needed); THP is switched off for the test mappings;
* clear_page/copy_page stand-ins (`rep stosb`/`rep movsb` of 4 KiB), the
  per-page cost of MADV_PAGEOUT on droppable pages (reclaim), and fork().

Where the running kernel has no __vdso_getrandom, the builtin image is run
natively instead: it is mapped at VDSO_BASE (MAP_FIXED_NOREPLACE) with a vvar
page below it holding a vdso_rng_data of our own (generation 1, ready); its
reseed syscall is the real one.  If that address is taken the vDSO figures are
skipped with a note, and the profile keeps the defaults for them.

The profile is written atomically: a temporary file in the same directory,
then rename(); on any error nothing is left behind.
"""
from __future__ import annotations

import ctypes
import os
import platform
import statistics
import time
from dataclasses import dataclass, field

from emulator.errors import FaultpathError

U64 = ctypes.c_uint64
PAGE = 4096

MAP_PRIVATE = 0x02
MAP_ANONYMOUS = 0x20
MAP_DROPPABLE = 0x08
MAP_FIXED_NOREPLACE = 0x100000
PROT_READ, PROT_WRITE, PROT_EXEC = 1, 2, 4
MADV_DONTNEED = 4
MADV_NOHUGEPAGE = 15
MADV_PAGEOUT = 21
NR_getrandom = 318
NR_memfd_create = 319
VDSO_SIZES = (1, 4, 16, 32, 64, 96, 128, 256, 512, 1024, 4096)
OPAQUE_LEN = 144

# ---------------------------------------------------------------------------
# The harness, in assembly.  Every timed routine brackets its loop with
#   lfence; rdtsc ... rdtscp; lfence
# and returns the TSC delta in rax.  Callee-saved registers are preserved.
# ---------------------------------------------------------------------------

_PRO = "push rbp\npush rbx\npush r12\npush r13\npush r14\npush r15\nsub rsp, 8\n"
_EPI = "add rsp, 8\npop r15\npop r14\npop r13\npop r12\npop rbx\npop rbp\nret\n"
_T0 = "lfence\nrdtsc\nshl rdx, 32\nor rax, rdx\nmov r14, rax\n"
_T1 = "rdtscp\nlfence\nshl rdx, 32\nor rax, rdx\nsub rax, r14\n"

# u64 time_calls(u64 *p): p = {fn, a0, a1, a2, a3, a4, iters}; calls fn(a0..a4) iters times.
_TIME_CALLS = _PRO + "mov r12, rdi\nmov r13, qword ptr [r12 + 48]\n" + _T0 + """
.Lcall:
    mov rdi, qword ptr [r12 + 8]
    mov rsi, qword ptr [r12 + 16]
    mov rdx, qword ptr [r12 + 24]
    mov rcx, qword ptr [r12 + 32]
    mov r8, qword ptr [r12 + 40]
    call qword ptr [r12]
    dec r13
    jnz .Lcall
""" + _T1 + _EPI


def _touch(access: str) -> str:
    """void touch(u64 *p): p = {addr, n, stride, out}: out[i] = ticks of one access."""
    op = "movzx eax, byte ptr [r12]" if access == "read" else "mov byte ptr [r12], 0x5a"
    return _PRO + """
    mov r12, qword ptr [rdi]
    mov r13, qword ptr [rdi + 8]
    mov rbp, qword ptr [rdi + 16]
    mov r15, qword ptr [rdi + 24]
.Ltouch:
""" + _T0 + op + "\n" + _T1 + """
    mov qword ptr [r15], rax
    add r15, 8
    add r12, rbp
    dec r13
    jnz .Ltouch
""" + _EPI


def _chain(body: str, reps: int, init: str = "") -> str:
    """u64 chain(u64 iters): `body` repeated `reps` times inside a counted loop."""
    return (_PRO + "mov r13, rdi\n" + init + _T0 + ".Lchain:\n" + (body + "\n") * reps
            + "dec r13\njnz .Lchain\n" + _T1 + _EPI)


# Latency chains: each op depends on the previous one through one register.
# (name, body, ops per body, init)
CHAINS = {
    "add": ("add rax, rcx", 1),
    "imul": ("imul rax, rcx", 1),
    "paddd": ("paddd xmm0, xmm1", 1),
    "pxor": ("pxor xmm0, xmm1", 1),
    "por": ("por xmm0, xmm1", 1),
    "pslld": ("pslld xmm0, 0x7", 1),
    "pshufd": ("pshufd xmm0, xmm0, 0x39", 1),
    "pshuflw": ("pshuflw xmm0, xmm0, 0xb1", 1),
    "load": ("mov rbx, qword ptr [rbx]", 1),     # pointer chase through a self-pointing qword (rbx = arg 2)
}
# Throughput kernels: independent operations (ops per body).
THROUGHPUT = {
    "add_x8": ("add rax, 0x1\nadd rbx, 0x1\nadd rcx, 0x1\nadd rdx, 0x1\n"
               "add rsi, 0x1\nadd r8, 0x1\nadd r9, 0x1\nadd r10, 0x1", 8),
    "paddd_x8": ("paddd xmm0, xmm8\npaddd xmm1, xmm8\npaddd xmm2, xmm8\npaddd xmm3, xmm8\n"
                 "paddd xmm4, xmm8\npaddd xmm5, xmm8\npaddd xmm6, xmm8\npaddd xmm7, xmm8", 8),
    "pslld_x8": ("pslld xmm0, 0x1\npslld xmm1, 0x1\npslld xmm2, 0x1\npslld xmm3, 0x1\n"
                 "pslld xmm4, 0x1\npslld xmm5, 0x1\npslld xmm6, 0x1\npslld xmm7, 0x1", 8),
}

_FUNCS: dict[str, str] = {
    "ret": "ret\n",
    "time_calls": _TIME_CALLS,
    "touch_read": _touch("read"),
    "touch_write": _touch("write"),
    # long sys5(nr, a0, a1, a2, a3): a bare syscall.
    "sys5": "mov rax, rdi\nmov rdi, rsi\nmov rsi, rdx\nmov rdx, rcx\nmov r10, r8\nsyscall\nret\n",
    # long getrandom(buf, len, flags): the libc-free syscall path, as a caller would make it.
    "sys_getrandom": "mov eax, 0x13e\nsyscall\nret\n",
    # void rep_stosb(dst, n) / rep_movsb(dst, n, src): clear_page / copy_page stand-ins.
    "rep_stosb": "mov rcx, rsi\nxor eax, eax\nrep stosb\nret\n",
    "rep_movsb": "mov rcx, rsi\nmov rsi, rdx\nrep movsb\nret\n",
    # u64 time_fork(u64 *pid): raw fork(); the child exits at once (exit_group(0)).
    "time_fork": _PRO + "mov r12, rdi\n" + _T0 + """
    mov eax, 0x39
    syscall
    test rax, rax
    jnz .Lparent
    mov eax, 0xe7
    xor edi, edi
    syscall
.Lparent:
    mov qword ptr [r12], rax
""" + _T1 + _EPI,
}
_CHAIN_OPS: dict[str, int] = {}
for _name, (_body, _n) in {**CHAINS, **THROUGHPUT}.items():
    _reps = max(1, 96 // _n)
    _FUNCS["chain_" + _name] = _chain(_body, _reps, "mov rbx, rsi\n")
    _CHAIN_OPS[_name] = _reps * _n


def _libc():
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
        self.libc = _libc()
        self.length = length
        a = self.libc.mmap(addr or None, length, prot, flags, fd, 0)
        if a is None or a == ctypes.c_void_p(-1).value:
            err = ctypes.get_errno()
            raise FaultpathError(f"calibrate: mmap(len={length}, flags={flags:#x}) failed: {os.strerror(err)}")
        if addr and a != addr:
            self.libc.munmap(a, length)
            raise FaultpathError(f"calibrate: mmap at {addr:#x} landed at {a:#x}")
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


class Harness:
    """The assembled timing routines in one executable mapping."""

    def __init__(self):
        if platform.machine() not in ("x86_64", "AMD64"):
            raise FaultpathError("calibrate: native measurement needs an x86-64 CPU")
        from emulator.calibrate.native import NativeCode
        from vdso.asm_build import assemble_snippet
        code = b""
        self.offsets: dict[str, int] = {}
        for name, src in _FUNCS.items():
            self.offsets[name] = len(code)
            code += bytes(assemble_snippet(src, 0, f"<calibrate:{name}>"))
            code += b"\xcc" * ((-len(code)) % 64)
        self.code = NativeCode(code)
        self._p = (U64 * 8)()
        self._calls = self.func("time_calls", U64, [ctypes.c_void_p])
        self._chains = {n: self.func("chain_" + n, U64, [U64, U64]) for n in _CHAIN_OPS}
        self._load_cell = (U64 * 8)()
        self._load_cell[0] = ctypes.addressof(self._load_cell)

    def addr(self, name: str) -> int:
        return self.code.address + self.offsets[name]

    def func(self, name: str, restype, argtypes):
        return self.code.func(self.offsets[name], restype, argtypes)

    # --- timed loops --------------------------------------------------------
    def time_calls(self, fn: int, args, iters: int) -> float:
        """TSC ticks per call of fn(*args) in a tight loop (harness included)."""
        p = self._p
        p[0] = fn
        for i in range(5):
            p[1 + i] = args[i] if i < len(args) else 0
        p[6] = iters
        return self._calls(ctypes.addressof(p)) / iters

    def chain(self, name: str, iters: int = 20000) -> float:
        """TSC ticks per operation of a chain or throughput kernel."""
        return self._chains[name](iters, ctypes.addressof(self._load_cell)) / (iters * _CHAIN_OPS[name])

    def touch(self, access: str, addr: int, n: int, stride: int = PAGE) -> list[int]:
        out = (U64 * n)()
        p = (U64 * 4)(addr, n, stride, ctypes.addressof(out))
        f = getattr(self, "_touch_" + access, None)
        if f is None:
            f = self.func("touch_" + access, None, [ctypes.c_void_p])
            setattr(self, "_touch_" + access, f)
        f(ctypes.addressof(p))
        return list(out)

    def syscall(self, nr: int, *args: int) -> int:
        f = getattr(self, "_sys5", None)
        if f is None:
            f = self._sys5 = self.func("sys5", ctypes.c_long, [U64] * 5)
        a = list(args) + [0] * (4 - len(args))
        return f(nr, *a)

    def time_syscall(self, nr: int, *args: int) -> tuple[float, int]:
        """(ticks, return value) of one bare syscall."""
        t = self.time_calls(self.addr("sys5"), [nr, *args], 1)
        return t, 0


def median(xs) -> float:
    xs = [x for x in xs if x is not None]
    return float(statistics.median(xs)) if xs else float("nan")


def repeat(fn, n: int) -> float:
    """The best of n repeats of a timed loop.  Each repeat already averages many
    calls; on a shared VM interference only ever adds time, so the minimum is
    the stable figure (what timeit recommends too)."""
    xs = [fn() for _ in range(n)]
    return float(min(xs))


# ---------------------------------------------------------------------------
# The vDSO, natively
# ---------------------------------------------------------------------------

@dataclass
class NativeVdso:
    """A callable __vdso_getrandom in this process, plus its ChaCha20 block function."""
    name: str
    getrandom: int                  # absolute address
    chacha: int | None              # absolute address of __arch_chacha20_blocks_nostack, if found
    keep: list = field(default_factory=list)
    note: str = ""


def _chacha_from_calls(img, base: int) -> int | None:
    """The first direct call target inside __vdso_getrandom: the ChaCha20 block function."""
    if "__arch_chacha20_blocks_nostack" in img.symbols:
        return base + img.symbols["__arch_chacha20_blocks_nostack"]
    from capstone import CS_ARCH_X86, CS_MODE_64, Cs
    off = img.symbols.get("__vdso_getrandom")
    if off is None:
        return None
    md = Cs(CS_ARCH_X86, CS_MODE_64)
    for ins in md.disasm(img.text[off:off + 0x800], off):
        if ins.mnemonic == "call":
            try:
                return base + int(ins.op_str, 16)
            except ValueError:
                return None
    return None


def host_native_vdso() -> NativeVdso | None:
    from vdso.elf_image import load_host
    try:
        img = load_host()
    except FaultpathError:
        return None
    base = _libc().getauxval(33)        # AT_SYSINFO_EHDR
    if not base:
        return None
    return NativeVdso("host", base + img.symbols["__vdso_getrandom"], _chacha_from_calls(img, base))


def builtin_native_vdso() -> NativeVdso:
    """Our own image mapped natively at VDSO_BASE with a vvar area below it."""
    from vdso.asm_build import build_image
    img = build_image("builtin")
    vv = img.vvar_start
    length = img.base - vv + img.size
    m = Mapping(length, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE,
                addr=vv, nohuge=False)
    ctypes.memmove(img.rng_data_addr, (ctypes.c_char * 9).from_buffer_copy(
        (1).to_bytes(8, "little") + b"\x01"), 9)
    ctypes.memmove(img.base, img.text, len(img.text))
    if m.libc.mprotect(img.base, img.size, PROT_READ | PROT_EXEC) != 0 or \
            m.libc.mprotect(vv, img.base - vv, PROT_READ) != 0:
        m.close()
        raise FaultpathError("calibrate: mprotect of the native builtin image failed")
    return NativeVdso("builtin", img.symbol("__vdso_getrandom"), _chacha_from_calls(img, img.base), [m],
                      "builtin image run natively at VDSO_BASE with our own vvar page")


def native_vdso(image: str = "auto") -> NativeVdso:
    if image in ("auto", "host"):
        v = host_native_vdso()
        if v is not None:
            return v
        if image == "host":
            raise FaultpathError("calibrate: the running kernel has no __vdso_getrandom (needs 6.11+)")
    try:
        return builtin_native_vdso()
    except FaultpathError as e:
        raise FaultpathError(f"calibrate: no host __vdso_getrandom and the builtin image cannot be mapped "
                             f"natively ({e})") from None


def vdso_period(size: int) -> int:
    """Calls after which the batch position repeats (96-byte batch)."""
    from math import gcd
    r = size % 96
    return 1 if r == 0 else 96 // gcd(r, 96)


def calls_for(size: int, quick: bool) -> int:
    target = 5_000_000 if not quick else 300_000      # TSC ticks per repeat (~2 ms)
    est = 20 + 3.7 * size
    n = max(vdso_period(size) * 8, int(target / est))
    p = vdso_period(size)
    return (n + p - 1) // p * p


class Measurer:
    """All native measurements; each method returns plain numbers (TSC ticks)."""

    def __init__(self, quick: bool = False, log=None):
        self.h = Harness()
        self.quick = quick
        self.reps = 3 if quick else 9
        self.log = log or (lambda s: None)
        self.libc = _libc()

    # --- clock and instruction forms -------------------------------------------
    def chains(self) -> dict[str, float]:
        iters = 2000 if self.quick else 20000
        out = {}
        for name in list(CHAINS) + list(THROUGHPUT):
            out[name] = min(self.h.chain(name, iters) for _ in range(self.reps))
        return out

    def tsc_per_core_cycle(self, chains: dict[str, float] | None = None) -> float:
        """add r,r has a latency of exactly one core cycle; imul r,r of three."""
        c = chains or self.chains()
        a, m = c["add"], c["imul"] / 3.0
        return (a + m) / 2 if abs(a - m) / a < 0.05 else a

    # --- vDSO --------------------------------------------------------------------
    def vdso(self, v: NativeVdso, sizes=VDSO_SIZES) -> dict[int, float]:
        st = Mapping(PAGE, flags=MAP_ANONYMOUS | MAP_DROPPABLE, nohuge=False)
        buf = Mapping(1 << 16)
        try:
            ctypes.memset(buf.addr, 0, buf.length)
            # Repeats go round-robin over the sizes: a stretch of interference on
            # this shared VM then spoils one repeat of every size, not all of one.
            out: dict[int, float] = {}
            for s in sizes:
                self.h.time_calls(v.getrandom, [buf.addr, s, 0, st.addr, OPAQUE_LEN], vdso_period(s) * 4)  # warm
            for _ in range(self.reps):
                for s in sizes:
                    t = self.h.time_calls(v.getrandom, [buf.addr, s, 0, st.addr, OPAQUE_LEN], calls_for(s, self.quick))
                    out[s] = min(out.get(s, t), t)
            ret = ctypes.CFUNCTYPE(ctypes.c_long, U64, U64, U64, U64, U64)(v.getrandom)(
                buf.addr, 32, 0, st.addr, OPAQUE_LEN)
            if ret != 32:
                raise FaultpathError(f"calibrate: native __vdso_getrandom(32) returned {ret}")
            return out
        finally:
            st.close()
            buf.close()

    def chacha_blocks(self, v: NativeVdso, counts=(1, 2, 4, 16, 64)) -> dict[int, float]:
        if v.chacha is None:
            return {}
        dst = Mapping(64 * max(counts) + PAGE)
        key = (ctypes.c_uint8 * 32)(*range(32))
        ctr = U64(0)
        try:
            ctypes.memset(dst.addr, 0, dst.length)
            out = {}
            for n in counts:
                iters = max(50, (400 if self.quick else 4000) // n)
                args = [dst.addr, ctypes.addressof(key), ctypes.addressof(ctr), n]
                self.h.time_calls(v.chacha, args, 10)
                out[n] = repeat(lambda: self.h.time_calls(v.chacha, args, iters), self.reps)
            return out
        finally:
            dst.close()

    def empty_call(self) -> float:
        return repeat(lambda: self.h.time_calls(self.h.addr("ret"), [0] * 5, 100_000 if not self.quick else 20_000),
                      self.reps)

    # --- syscalls ------------------------------------------------------------------
    def syscalls(self, sizes=VDSO_SIZES) -> dict[int, float]:
        buf = Mapping(1 << 16)
        try:
            ctypes.memset(buf.addr, 0, buf.length)
            f = self.h.addr("sys_getrandom")
            out: dict[int, float] = {}
            for s in sizes:
                self.h.time_calls(f, [buf.addr, s, 0], 20)
            # Many short bursts (~50 us each), the best one per size: long requests
            # are sometimes slowed for milliseconds at a time on this VM.
            for _ in range(self.reps * (2 if self.quick else 4)):
                for s in sizes:
                    n = max(4, 130_000 // int(1000 + 7 * s))
                    t = self.h.time_calls(f, [buf.addr, s, 0], n)
                    out[s] = min(out.get(s, t), t)
            return out
        finally:
            buf.close()

    def enosys(self) -> float:
        n = 5000 if self.quick else 50000
        return repeat(lambda: self.h.time_calls(self.h.addr("sys5"), [500], n), self.reps)

    # --- page faults ---------------------------------------------------------------
    def _per_page(self, access: str, addr: int, n: int) -> list[int]:
        return self.h.touch(access, addr, n)

    def faults(self) -> dict[str, float]:
        npages = 64 if self.quick else 128
        rounds = 5 if self.quick else 15
        length = npages * PAGE
        res: dict[str, list[float]] = {k: [] for k in
                                       ("overhead", "read_zero_page", "write_zero_fill", "write_after_zero_page",
                                        "write_droppable_dropped", "cow_copy")}
        for _ in range(rounds):
            with Mapping(length) as m:
                r = self._per_page("read", m.addr, npages)
                w = self._per_page("write", m.addr, npages)        # COW from the zero page
                again = self._per_page("write", m.addr, npages)    # mapped: the harness overhead
                res["overhead"].append(median(again))
                res["read_zero_page"].append(median(r))
                res["write_after_zero_page"].append(median(w))
            with Mapping(length) as m:
                res["write_zero_fill"].append(median(self._per_page("write", m.addr, npages)))
            with Mapping(length, flags=MAP_ANONYMOUS | MAP_DROPPABLE) as m:
                self._per_page("write", m.addr, npages)
                m.madvise(MADV_DONTNEED)                            # drop: the pages are gone
                res["write_droppable_dropped"].append(median(self._per_page("write", m.addr, npages)))
            res["cow_copy"].append(self._cow_copy(npages))
        # Each round's figure is the median over its pages; across rounds the
        # lowest, like the loops' best repeat: on this shared VM a round either
        # runs alone or next to a busy sibling thread (~25% slower, all pages).
        out = {k: min(x for x in v if x == x) if any(x == x for x in v) else float("nan")
               for k, v in res.items()}
        ov = out.pop("overhead")
        out = {k: max(0.0, v - ov) for k, v in out.items()}
        out["harness_overhead"] = ov
        return out

    def _cow_copy(self, npages: int) -> float:
        """Write to MAP_PRIVATE pages of a memfd already mapped read-only: wp_page_copy copies."""
        name = b"faultpath-calibrate\0"
        fd = self.h.syscall(NR_memfd_create, ctypes.addressof(ctypes.create_string_buffer(name)), 0)
        if fd < 0:
            return float("nan")
        try:
            os.ftruncate(fd, npages * PAGE)
            os.pwrite(fd, b"\x11" * (npages * PAGE), 0)
            with Mapping(npages * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE, fd=fd) as m:
                self._per_page("read", m.addr, npages)       # maps the page-cache pages read-only
                return median(self._per_page("write", m.addr, npages))
        finally:
            os.close(fd)

    def page_ops(self) -> dict[str, float]:
        """clear_page / copy_page stand-ins and reclaim (MADV_PAGEOUT) per page."""
        out = {}
        with Mapping(2 * PAGE) as m:
            ctypes.memset(m.addr, 1, 2 * PAGE)
            out["rep_stosb_4k"] = repeat(lambda: self.h.time_calls(self.h.addr("rep_stosb"), [m.addr, PAGE], 200),
                                         self.reps)
            out["rep_movsb_4k"] = repeat(lambda: self.h.time_calls(self.h.addr("rep_movsb"),
                                                                   [m.addr, PAGE, m.addr + PAGE], 200), self.reps)
            out["rep_stosb_64"] = repeat(lambda: self.h.time_calls(self.h.addr("rep_stosb"), [m.addr, 64], 2000),
                                         self.reps)
            out["rep_stosb_1k"] = repeat(lambda: self.h.time_calls(self.h.addr("rep_stosb"), [m.addr, 1024], 1000),
                                         self.reps)
        npages = 64 if self.quick else 256
        per = []
        for _ in range(3 if self.quick else 5):
            with Mapping(npages * PAGE, flags=MAP_ANONYMOUS | MAP_DROPPABLE) as m:
                self._per_page("write", m.addr, npages)
                t = self.h.time_calls(self.h.addr("sys5"), [28, m.addr, npages * PAGE, MADV_PAGEOUT], 1)
                per.append(t / npages)
        out["pageout_per_page"] = median(per)
        return out

    def fork(self) -> float:
        f = self.h.func("time_fork", U64, [ctypes.c_void_p])
        pid = U64(0)
        ts = []
        for _ in range(3 if self.quick else 7):
            t = f(ctypes.addressof(pid))
            p = ctypes.c_int64(pid.value).value
            if p <= 0:
                raise FaultpathError("calibrate: fork() failed")
            os.waitpid(p, 0)
            ts.append(t)
        return min(ts)

    def fork_model(self) -> tuple[float, float, int]:
        """(base, per resident page, resident pages): fork() timed at the current
        size and again with 64 MiB more populated memory."""
        rss0 = self.rss_pages()
        t0 = self.fork()
        extra = 16384
        with Mapping(extra * PAGE) as m:
            ctypes.memset(m.addr, 1, extra * PAGE)
            rss1 = self.rss_pages()
            t1 = self.fork()
        per = max(0.0, (t1 - t0) / max(1, rss1 - rss0))
        return max(0.0, t0 - per * rss0), per, rss0

    def rss_pages(self) -> int:
        """Resident anonymous pages (the ones fork copies PTEs for)."""
        try:
            with open("/proc/self/status") as f:
                for line in f:
                    if line.startswith("RssAnon:"):
                        return int(line.split()[1]) // 4
        except OSError:
            pass
        return 0


# ---------------------------------------------------------------------------
# Profile writing
# ---------------------------------------------------------------------------

def toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if v != v:
            return "nan"
        return repr(round(v, 4))
    if isinstance(v, str):
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{ " + ", ".join(f"{_key(k)} = {toml_value(x)}" for k, x in v.items()) + " }"
    raise TypeError(f"cannot write {type(v).__name__} to TOML")


def _key(k) -> str:
    k = str(k)
    return k if k.replace("_", "").replace("-", "").isalnum() and k.isascii() else toml_value(k)


def dump_toml(sections: dict, header: str = "", comments: dict | None = None) -> str:
    """Sections of scalars/lists/inline tables, with an optional comment per key."""
    comments = comments or {}
    out = [("# " + line).rstrip() for line in header.splitlines()] if header else []
    for sec, items in sections.items():
        out.append("")
        out.append(f"[{sec}]")
        for k, v in items.items():
            c = comments.get(f"{sec}.{k}")
            out.append(f"{_key(k)} = {toml_value(v)}" + (f"   # {c}" if c else ""))
    return "\n".join(out) + "\n"


def write_atomic(path: str, text: str) -> None:
    """Write text to path via a temporary file in the same directory and rename()."""
    import tempfile
    import tomllib
    tomllib.loads(text)                 # never write something we could not read back
    d = os.path.dirname(os.path.abspath(path)) or "."
    fd, tmp = tempfile.mkstemp(prefix=".profile-", suffix=".tmp", dir=d)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def now() -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S %Z")


# ---------------------------------------------------------------------------
# One calibration run: measure everything, then fit a profile
# ---------------------------------------------------------------------------

def tsc_mhz() -> float:
    """TSC frequency: ticks over a wall-clock interval (or the kernel's figure)."""
    h = Harness()
    f = h.func("chain_add", U64, [U64, U64])
    t0 = time.perf_counter_ns()
    ticks = f(200_000, 0)
    t1 = time.perf_counter_ns()
    return ticks / ((t1 - t0) / 1000.0)


def measure_all(quick: bool = False, image: str = "auto", log=None) -> dict:
    """Every native figure calibrate and bench need, in TSC ticks."""
    log = log or (lambda s: None)
    M = Measurer(quick=quick, log=log)
    out: dict = {"quick": quick, "host": platform.node(), "kernel": platform.release(), "when": now()}
    log("clock and instruction forms")
    out["chains"] = M.chains()
    out["tsc_per_core_cycle"] = M.tsc_per_core_cycle(out["chains"])
    out["tsc_mhz"] = tsc_mhz()
    out["empty_call"] = M.empty_call()
    try:
        v = native_vdso(image)
        out["vdso_image"] = v.name
        out["vdso_note"] = v.note
        log(f"__vdso_getrandom ({v.name}) at each size")
        out["vdso"] = M.vdso(v)
        out["chacha"] = M.chacha_blocks(v)
    except FaultpathError as e:
        out["vdso_image"] = None
        out["vdso_note"] = str(e)
        out["vdso"] = {}
        out["chacha"] = {}
    log("getrandom syscall")
    out["syscall"] = M.syscalls()
    out["enosys"] = M.enosys()
    log("page faults")
    out["faults"] = M.faults()
    out["page_ops"] = M.page_ops()
    log("fork")
    base, per, rss = M.fork_model()
    out["fork"] = {"base": base, "per_page": per, "rss_pages": rss}
    return out


def _lstsq(rows: list[tuple[float, ...]]) -> list[float]:
    """Least squares y = sum(c_i * x_i) over rows (x_1..x_k, y), coefficients kept
    non-negative by dropping a negative one and refitting (k is tiny)."""
    k = len(rows[0]) - 1
    active = list(range(k))
    while True:
        n = len(active)
        a = [[sum(r[i] * r[j] for r in rows) for j in active] for i in active]
        b = [sum(r[i] * r[-1] for r in rows) for i in active]
        # Gaussian elimination with partial pivoting
        for c in range(n):
            piv = max(range(c, n), key=lambda r_: abs(a[r_][c]))
            if abs(a[piv][c]) < 1e-12:
                return [0.0] * k
            a[c], a[piv] = a[piv], a[c]
            b[c], b[piv] = b[piv], b[c]
            for r_ in range(c + 1, n):
                f = a[r_][c] / a[c][c]
                for j in range(c, n):
                    a[r_][j] -= f * a[c][j]
                b[r_] -= f * b[c]
        x = [0.0] * n
        for c in range(n - 1, -1, -1):
            x[c] = (b[c] - sum(a[c][j] * x[j] for j in range(c + 1, n))) / a[c][c]
        neg = [i for i, v in enumerate(x) if v < 0]
        if not neg or n == 1:
            out = [0.0] * k
            for i, v in zip(active, x):
                out[i] = max(0.0, v)
            return out
        active.pop(neg[0])


def fit_events(meas: dict, base_event: dict) -> tuple[dict, dict]:
    """Event costs (TSC ticks) from native measurements; (values, comments)."""
    ev: dict[str, float] = {}
    com: dict[str, str] = {}
    call = float(meas.get("empty_call", 4.0))      # the harness loop around an empty function
    ee = max(1.0, float(meas["enosys"]) - call)
    ev["syscall_entry_exit"] = ee
    com["syscall_entry_exit"] = "an unknown syscall (-ENOSYS): the bare entry/exit path"
    sc = {int(k): float(v) for k, v in meas.get("syscall", {}).items()}
    key_bytes = int(base_event.get("getrandom_key_bytes", 32))
    if sc:
        # getrandom(n) = call + entry/exit + flat + blocks(n) * per_block + n * per_byte,
        # blocks(n) = 0 up to 32 B (served from the key area), else ceil(n / 64).
        rows = [(1.0, float((s + 63) // 64 if s > key_bytes else 0), float(s), v - call - ee) for s, v in sc.items()]
        flat, pb, pB = _lstsq(rows)
        ev["getrandom_call"] = flat
        ev["getrandom_per_block"] = pb
        ev["getrandom_per_byte"] = pB
        com["getrandom_call"] = "least squares over every size: the per-call part beyond entry/exit"
        com["getrandom_per_block"] = "same fit: per 64-byte ChaCha20 block (none up to 32 B: the key area)"
        com["getrandom_per_byte"] = "same fit: per byte (copy_to_user)"
    f = meas.get("faults", {})
    po = meas.get("page_ops", {})
    if f:
        entry = 0.6 * ee
        ret = 0.4 * ee
        ev["fault_entry"], ev["fault_return"] = entry, ret
        com["fault_entry"] = "0.6 x the bare syscall round trip (exception entry is not separable natively)"
        com["fault_return"] = "0.4 x the bare syscall round trip"
        lookup = float(base_event.get("vma_lookup", 60))
        fixed = entry + ret + lookup + float(base_event.get("vma_check", 0))
        ev["map_zero_page"] = max(0.0, f["read_zero_page"] - fixed)
        com["map_zero_page"] = "read fault on a fresh anonymous page, minus entry/return/lookup"
        clear = max(0.0, po.get("rep_stosb_4k", base_event.get("zero_fill", 0) + call) - call)
        ev["zero_fill"] = min(clear, max(0.0, f["write_zero_fill"] - fixed))
        com["zero_fill"] = "4 KiB rep stosb natively (clear_page_erms stand-in)"
        ev["alloc"] = max(0.0, f["write_zero_fill"] - fixed - ev["zero_fill"])
        com["alloc"] = "first-write fault minus entry/return/lookup/zero_fill: allocator, memcg, rmap, PTE"
        ev["wp_zero_page"] = max(0.0, f["write_after_zero_page"] - f["write_zero_fill"])
        com["wp_zero_page"] = "write after read (COW from the zero page) minus a first-write fault"
        if f.get("cow_copy") == f.get("cow_copy"):       # not NaN
            ev["cow_copy"] = max(0.0, f["cow_copy"] - fixed - ev["alloc"])
            com["cow_copy"] = "write to a read-mapped MAP_PRIVATE memfd page (wp_page_copy) minus the rest"
    if po.get("pageout_per_page"):
        ev["drop_page"] = po["pageout_per_page"]
        com["drop_page"] = "MADV_PAGEOUT of written MAP_DROPPABLE pages, per page"
    fk = meas.get("fork")
    if fk:
        small = 64
        ev["fork"] = fk["base"] + fk["per_page"] * small
        com["fork"] = (f"raw fork() at two sizes: {fk['base']:.0f} + {fk['per_page']:.1f} per resident page, "
                       f"for a {small}-page process")
    return ev, com


def fit_profile(meas: dict, base: str = "zen4", name: str | None = None,
                image_hint: str | None = None) -> tuple[dict, dict]:
    """The calibrated profile as TOML sections (a variant of `base`) and comments."""
    from emulator.cycles.profile import load_profile
    bp = load_profile(base)
    ratio = float(meas["tsc_per_core_cycle"])
    sections: dict[str, dict] = {}
    com: dict[str, str] = {}
    sections["meta"] = {
        "name": name or f"calibrated-{meas.get('host') or 'host'}",
        "base": base,
        "tsc_mhz": round(float(meas.get("tsc_mhz") or bp.tsc_mhz), 1),
        "tsc_per_core_cycle": ratio,
        "source": f"faultpath calibrate on {meas.get('host')} (Linux {meas.get('kernel')}), {meas.get('when')}"
                  + (" [quick]" if meas.get("quick") else ""),
    }
    com["meta.tsc_per_core_cycle"] = "add r,r (1 cycle) and imul r,r (3 cycles) dependency chains"
    forms = {}
    for name_, key in (("add", "add"), ("imul", "imul"), ("paddd", "paddd"), ("pxor", "pxor"), ("por", "por"),
                       ("pslld", "pslld"), ("pshufd", "pshufd"), ("pshuflw", "pshuflw")):
        if name_ in meas.get("chains", {}):
            lat = meas["chains"][name_] / ratio
            forms[key] = {"lat": round(lat, 2)}
            com[f"forms.{key}"] = "measured dependency chain"
    # psrld shares pslld's pipe and latency; por's stands for pand/pandn.
    for twin, src in (("psrld", "pslld"), ("pand", "por"), ("pshufhw", "pshuflw"), ("paddq", "paddd")):
        if src in forms:
            forms[twin] = dict(forms[src])
            com[f"forms.{twin}"] = f"as {src}"
    sections["forms"] = forms
    core: dict[str, float] = {}
    ch = meas.get("chains", {})
    if "load" in ch:
        core["load_latency"] = round(ch["load"] / ratio, 2)
        com["core.load_latency"] = "pointer-chasing chain mov rbx,[rbx]"
    po = meas.get("page_ops", {})
    call = float(meas.get("empty_call", 0))
    if po.get("rep_stosb_4k") and po.get("rep_stosb_1k"):
        t4 = (po["rep_stosb_4k"] - call) / ratio
        t1 = (po["rep_stosb_1k"] - call) / ratio
        if t4 > t1 > 0:
            bpc = 3072.0 / (t4 - t1)
            core["rep_bytes_per_cycle"] = round(bpc, 2)
            core["rep_startup"] = round(max(0.0, t1 - 1024.0 / bpc), 2)
            com["core.rep_bytes_per_cycle"] = "rep stosb of 1 KiB and 4 KiB"
            com["core.rep_startup"] = "same fit: intercept"
    ch_meas = {int(k): float(v) for k, v in (meas.get("chacha") or {}).items()}
    if len(ch_meas) >= 2 and meas.get("vdso_image"):
        from vdso.loader import load_image
        from emulator.calibrate.predict import fit_window_uops
        import dataclasses
        lo, hi = min(ch_meas), max(ch_meas)
        slope = (ch_meas[hi] - ch_meas[lo]) / (hi - lo)
        prof = dataclasses.replace(bp, tsc_per_core_cycle=ratio, core={**bp.core, **core})
        w = fit_window_uops(load_image(meas["vdso_image"]), prof, slope)
        if w is not None:
            core["window_uops"] = round(w, 1)
            com["core.window_uops"] = (f"fitted: the vDSO's ChaCha20 block function natively costs {slope:.0f} "
                                       f"TSC ticks a block (1..{hi} blocks)")
    sections["core"] = core
    ev, ecom = fit_events(meas, bp.event)
    sections["event"] = {k: round(v, 2) for k, v in ev.items()}
    for k, c in ecom.items():
        com[f"event.{k}"] = c
    m: dict = {"tsc_mhz": round(float(meas.get("tsc_mhz", 0)), 1), "empty_call": round(call, 2)}
    if meas.get("vdso"):
        m["vdso_image"] = meas.get("vdso_image") or ""
        m["vdso"] = {str(k): round(v, 1) for k, v in meas["vdso"].items()}
    if meas.get("chacha"):
        m["chacha"] = {str(k): round(v, 1) for k, v in meas["chacha"].items()}
    m["syscall"] = {str(k): round(v, 1) for k, v in meas.get("syscall", {}).items()}
    m["faults"] = {k: round(v, 1) for k, v in meas.get("faults", {}).items()}
    m["chains"] = {k: round(v, 4) for k, v in meas.get("chains", {}).items()}
    sections["measured"] = m
    return sections, com


def check_measurements(meas: dict) -> list[str]:
    """Sanity of the native figures; a list of problems (empty: fine)."""
    bad = []
    v = {int(k): float(x) for k, x in meas.get("vdso", {}).items()}
    sizes = sorted(v)
    for a, b in zip(sizes, sizes[1:]):
        if v[b] < v[a] * 0.97:
            bad.append(f"vDSO cycles not monotonic in size: {a} B {v[a]:.0f} > {b} B {v[b]:.0f}")
    for s, x in v.items():
        lo, hi = 2.0, 40.0 + 50.0 * s
        if not lo <= x <= hi:
            bad.append(f"vDSO {s} B: {x:.0f} TSC ticks outside the sane range {lo:.0f}..{hi:.0f}")
    r = meas.get("tsc_per_core_cycle", 0)
    if not 0.1 <= r <= 4:
        bad.append(f"core-clock/TSC ratio {r:.3f} is implausible")
    return bad


def calibrate(out_path: str, quick: bool = False, image: str = "auto", base: str = "zen4", log=None,
              name: str | None = None) -> tuple[dict, dict]:
    """Measure, fit and write the profile atomically; returns (measurements, sections)."""
    meas = measure_all(quick=quick, image=image, log=log)
    problems = check_measurements(meas)
    if problems:
        raise FaultpathError("calibrate: " + "; ".join(problems))
    sections, com = fit_profile(meas, base=base, name=name)
    header = ("faultpath cycle profile written by `faultpath calibrate` (a variant of the\n"
              f"'{base}' profile: only what was measured here is listed; the rest comes from it).\n"
              "Units: [forms]/[core] core cycles, [event]/[measured] TSC ticks.\n"
              + (f"vDSO measured: {meas.get('vdso_image')} {meas.get('vdso_note') or ''}".rstrip() + "\n"))
    text = dump_toml(sections, header, com)
    write_atomic(out_path, text)
    return meas, sections
