"""The native timing harness: routines written in assembly here, assembled with
keystone (vdso.asm_build.assemble_snippet, never keystone directly: its radix
is process-global state), copied into an executable mapping
(emulator/calibrate/native.py) and called through ctypes.  Every figure is TSC
ticks read with `lfence; rdtsc` ... `rdtscp; lfence`.

No C compiler is involved.  Besides the call loop (time_calls: any native
function with up to five arguments, called in a tight loop), the harness holds
per-page touch loops for faults, bare syscalls, rep-string page stand-ins,
fork, and latency/throughput chains of known instruction forms.
"""
from __future__ import annotations

import ctypes
import platform
import statistics

from emulator.calibrate.native import PAGE, NativeCode
from emulator.errors import FaultpathError

U64 = ctypes.c_uint64

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
# Scheduler pools (profile [window], emulator/cycles/window.py): a chain loop of one pool,
# `u64 f(u64 n, u8 *buf)`, called over and over.  The next call's chain starts while the
# last one drains, as many iterations early as the pool holds waiting uops.
# (pool, body, init, chain uops an iteration)
WINDOW_LOOPS = {
    "int": ("add rax, rcx\nadd rax, rcx\nadd rax, rcx\nadd rax, rcx", "xor eax, eax", 4),
    "load": ("mov rax, qword ptr [rax]", "mov qword ptr [rsi], rsi\nmov rax, rsi", 1),
    "shift": ("shl rax, 0x1\nshl rax, 0x1\nshl rax, 0x1\nshl rax, 0x1", "mov eax, 0x1", 4),
    "mul": ("imul rax, rax", "mov eax, 0x3", 1),
    "vec": ("paddd xmm0, xmm0\npxor xmm0, xmm1", "pxor xmm0, xmm0", 2),
}
for _name, (_body, _init, _n) in WINDOW_LOOPS.items():
    _FUNCS["window_" + _name] = _init + "\n.Lwin:\n" + _body + "\ndec rdi\njnz .Lwin\nret\n"

_CHAIN_OPS: dict[str, int] = {}
for _name, (_body, _n) in {**CHAINS, **THROUGHPUT}.items():
    _reps = max(1, 96 // _n)
    _FUNCS["chain_" + _name] = _chain(_body, _reps, "mov rbx, rsi\n")
    _CHAIN_OPS[_name] = _reps * _n


class Harness:
    """The assembled timing routines in one executable mapping."""

    def __init__(self):
        if platform.machine() not in ("x86_64", "AMD64"):
            raise FaultpathError("calibrate: native measurement needs an x86-64 CPU")
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

