"""Run sequences on this CPU: the reference side of diffcheck.

The code page, the data pages, the harness (harness.py) and the signal
stack are real mappings of this process at the fixed addresses of
layout.py.  For each sequence the data pages are remapped fresh and given the
native protection of their state; the sequence runs through dc_entry; page
faults on resolvable pages are resolved by the assembled handler and the
instruction restarts; anything else ends the sequence with its signal.

Around every run (`armed()`) the process's previous actions for the five
signals, its alternate signal stack and its signal mask are saved and put
back afterwards: pytest's faulthandler has its own SIGSEGV handler, and an
asynchronous signal must not land on the sequence's stack while it runs.
"""
from __future__ import annotations

import contextlib
import ctypes
import os
import platform
import signal
import struct

from emulator.diffcheck import harness as H
from emulator.diffcheck.layout import (ALTSTACK_ADDR, ALTSTACK_SIZE, CODE_ADDR, CODE_SIZE, DATA_ADDR, DATA_SIZE,
                                       GPRS, HARNESS_ADDR, HARNESS_DATA, HAS_CONTENT, PAGE, RESOLVABLE,
                                       data_page)
from emulator.diffcheck.records import Fault, NativeUnavailable, RunState, Sequence, Signal

PROT_NONE, PROT_READ, PROT_WRITE, PROT_EXEC = 0, 1, 2, 4
MAP_PRIVATE, MAP_ANONYMOUS, MAP_FIXED, MAP_FIXED_NOREPLACE = 0x02, 0x20, 0x10, 0x100000
SA_SIGINFO, SA_ONSTACK = 0x4, 0x08000000
AT_HWCAP2, HWCAP2_FSGSBASE = 26, 1 << 1
HANDLED = (signal.SIGSEGV, signal.SIGBUS, signal.SIGILL, signal.SIGFPE, signal.SIGTRAP)
_NATIVE_PROT = {"present": PROT_READ | PROT_WRITE, "first-touch": PROT_NONE, "dropped": PROT_NONE,
                "zero-page": PROT_READ, "cow": PROT_READ, "snapshot": PROT_READ, "readonly": PROT_READ}


def unavailable_reason() -> str | None:
    """Why sequences cannot run natively here, or None."""
    if platform.system() != "Linux":
        return f"native sequences need Linux (this is {platform.system()})"
    if platform.machine() not in ("x86_64", "AMD64"):
        return f"native sequences need an x86-64 CPU (this is {platform.machine()})"
    return None


class _Sigaction(ctypes.Structure):
    # glibc's struct sigaction on x86-64 (its sigaction() adds the SA_RESTORER trampoline)
    _fields_ = [("handler", ctypes.c_void_p), ("mask", ctypes.c_uint64 * 16), ("flags", ctypes.c_int),
                ("restorer", ctypes.c_void_p)]


class _StackT(ctypes.Structure):
    _fields_ = [("sp", ctypes.c_void_p), ("flags", ctypes.c_int), ("size", ctypes.c_size_t)]


def _libc():
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
    libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    libc.mprotect.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    libc.sigaction.argtypes = [ctypes.c_int, ctypes.POINTER(_Sigaction), ctypes.POINTER(_Sigaction)]
    libc.sigaltstack.argtypes = [ctypes.POINTER(_StackT), ctypes.POINTER(_StackT)]
    libc.getauxval.restype = ctypes.c_ulong
    libc.getauxval.argtypes = [ctypes.c_ulong]
    return libc


class NativeRunner:
    """The native side: owns its mappings; `run()` one sequence (armed), or
    many inside one `with runner.armed():`."""

    def __init__(self):
        why = unavailable_reason()
        if why:
            raise NativeUnavailable(why)
        from vdso.asm_build import assemble_snippet
        self.libc = _libc()
        self.fsgsbase = bool(self.libc.getauxval(AT_HWCAP2) & HWCAP2_FSGSBASE)
        self._maps: list[tuple[int, int]] = []
        try:
            code = assemble_snippet(H.harness_source(), HARNESS_ADDR, "<diffcheck harness>")
            trailer = code[-8 * len(H.SYMBOLS):]
            self.sym = {s: struct.unpack_from("<Q", trailer, 8 * i)[0] for i, s in enumerate(H.SYMBOLS)}
            if len(code) > HARNESS_DATA - HARNESS_ADDR:
                raise NativeUnavailable("diffcheck harness: code does not fit its page")
            self._map(HARNESS_ADDR, PAGE + H.DATA_BLOCK_SIZE, PROT_READ | PROT_WRITE)
            ctypes.memmove(HARNESS_ADDR, code, len(code))
            self._protect(HARNESS_ADDR, PAGE, PROT_READ | PROT_EXEC)
            self._map(ALTSTACK_ADDR, ALTSTACK_SIZE, PROT_READ | PROT_WRITE)
            self._map(CODE_ADDR, CODE_SIZE, PROT_READ | PROT_WRITE)
            self._map(DATA_ADDR, DATA_SIZE, PROT_READ | PROT_WRITE)
        except BaseException:
            self.close()
            raise
        self._entry = ctypes.CFUNCTYPE(None)(self.sym["dc_entry"])
        self._armed = False

    # ------------------------------------------------------------------ mappings
    def _map(self, addr: int, length: int, prot: int, fixed: int = MAP_FIXED_NOREPLACE) -> None:
        a = self.libc.mmap(addr, length, prot, MAP_PRIVATE | MAP_ANONYMOUS | fixed, -1, 0)
        if a != addr:
            err = ctypes.get_errno()
            if a not in (None, ctypes.c_void_p(-1).value):
                self.libc.munmap(a, length)
            raise NativeUnavailable(f"diffcheck: cannot map {length:#x} bytes at {addr:#x} "
                                    f"({os.strerror(err) if err else 'taken'})")
        if fixed == MAP_FIXED_NOREPLACE:
            self._maps.append((addr, length))

    def _protect(self, addr: int, length: int, prot: int) -> None:
        if self.libc.mprotect(addr, length, prot) != 0:
            raise NativeUnavailable(f"diffcheck: mprotect({addr:#x}, {length:#x}) failed: "
                                    f"{os.strerror(ctypes.get_errno())}")

    def close(self) -> None:
        for addr, length in self._maps:
            self.libc.munmap(addr, length)
        self._maps = []

    # ------------------------------------------------------------------ signals
    @contextlib.contextmanager
    def armed(self):
        """Our handler for the five signals, on our stack, asynchronous signals
        blocked; the previous actions, stack and mask restored on the way out."""
        if self._armed:
            yield self
            return
        act = _Sigaction()
        act.handler = self.sym["dc_handler"]
        act.flags = SA_SIGINFO | SA_ONSTACK
        for i in range(16):
            act.mask[i] = 0xFFFF_FFFF_FFFF_FFFF     # nothing interrupts the handler
        old = {s: _Sigaction() for s in HANDLED}
        stack, old_stack = _StackT(ALTSTACK_ADDR, 0, ALTSTACK_SIZE), _StackT()
        blocked = set(signal.valid_signals()) - set(HANDLED) - {signal.SIGKILL, signal.SIGSTOP}
        old_mask = signal.pthread_sigmask(signal.SIG_BLOCK, blocked)
        installed = []
        try:
            if self.libc.sigaltstack(ctypes.byref(stack), ctypes.byref(old_stack)) != 0:
                raise NativeUnavailable(f"diffcheck: sigaltstack failed: {os.strerror(ctypes.get_errno())}")
            try:
                for s in HANDLED:
                    if self.libc.sigaction(s, ctypes.byref(act), ctypes.byref(old[s])) != 0:
                        raise NativeUnavailable(f"diffcheck: sigaction({s.name}) failed")
                    installed.append(s)
                self._armed = True
                yield self
            finally:
                self._armed = False
                for s in installed:
                    self.libc.sigaction(s, ctypes.byref(old[s]), None)
                self.libc.sigaltstack(ctypes.byref(old_stack), None)
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)

    # ------------------------------------------------------------------ one sequence
    def supports(self, seq: Sequence) -> str | None:
        """Why this sequence cannot run natively here, or None."""
        if (seq.regs.get("fs_base") or seq.regs.get("gs_base")) and not self.fsgsbase:
            return "needs FSGSBASE (wrfsbase) to move the fs/gs base natively"
        if len(seq.code) > CODE_SIZE:
            return f"code of {len(seq.code)} bytes does not fit {CODE_SIZE}"
        return None

    def run(self, seq: Sequence) -> RunState:
        why = self.supports(seq)
        if why:
            raise NativeUnavailable(f"{seq.reproduce()}: {why}")
        self._load(seq)
        with self.armed():
            self._entry()
        return self._capture(seq)

    def _load(self, seq: Sequence) -> None:
        code = bytearray(seq.code) + b"\xcc" * (CODE_SIZE - len(seq.code))
        struct.pack_into("<Q", code, seq.exit_slot, self.sym["dc_exit"])
        self._protect(CODE_ADDR, CODE_SIZE, PROT_READ | PROT_WRITE)
        ctypes.memmove(CODE_ADDR, bytes(code), CODE_SIZE)
        self._protect(CODE_ADDR, CODE_SIZE, PROT_READ | PROT_EXEC)
        # Fresh data pages (never touched), then each page's state.
        self._map(DATA_ADDR, DATA_SIZE, PROT_READ | PROT_WRITE, fixed=MAP_FIXED)
        for i, state in enumerate(seq.pages):
            addr = data_page(i)
            if state in HAS_CONTENT:             # written: the page is present, as in the emulator
                ctypes.memmove(addr, seq.content[i] or bytes(PAGE), PAGE)
            if state == "unmapped":
                self.libc.munmap(addr, PAGE)
                continue
            self._protect(addr, PAGE, _NATIVE_PROT[state])
            if state == "zero-page":
                ctypes.string_at(addr, 1)          # a read: the shared zero page is mapped
        blob = bytearray(H.OFF_OUT_GPR)                 # the in-block, rebuilt whole
        for i, r in enumerate(GPRS):
            struct.pack_into("<Q", blob, H.OFF_IN_GPR + 8 * i, seq.regs.get(r, 0) & (1 << 64) - 1)
        use_fsgs = 1 if (seq.regs.get("fs_base") or seq.regs.get("gs_base")) else 0
        struct.pack_into("<QQQQIxxxxQ", blob, H.OFF_IN_RFLAGS, seq.regs.get("rflags", 0x202), CODE_ADDR,
                         seq.regs.get("fs_base", 0), seq.regs.get("gs_base", 0), seq.mxcsr, use_fsgs)
        for i, x in enumerate(seq.xmm):
            blob[H.OFF_IN_XMM + 16 * i:H.OFF_IN_XMM + 16 * i + 16] = x.to_bytes(16, "little")
        for i, x in enumerate(seq.mm):
            struct.pack_into("<Q", blob, H.OFF_IN_MM + 8 * i, x)
        d = HARNESS_DATA
        ctypes.memmove(d, bytes(blob), len(blob))
        ctypes.memset(d + H.OFF_OUT_GPR, 0, H.OFF_SAVED_RSP - H.OFF_OUT_GPR)
        ctypes.memmove(d + H.OFF_DATA_LO, struct.pack("<QI", DATA_ADDR, 0), 12)   # and the fault count
        resolve = bytes(1 if s in RESOLVABLE else 0 for s in seq.pages)
        ctypes.memmove(d + H.OFF_RESOLVE, resolve, len(resolve))

    def _capture(self, seq: Sequence) -> RunState:
        d = HARNESS_DATA
        out = ctypes.string_at(d, H.DATA_BLOCK_SIZE)
        q = lambda off: struct.unpack_from("<Q", out, off)[0]     # noqa: E731
        kind = q(H.OFF_OUT_KIND)
        gprs = {r: q(H.OFF_OUT_GPR + 8 * i) for i, r in enumerate(GPRS)}
        xmm = [int.from_bytes(out[H.OFF_OUT_XMM + 16 * i:H.OFF_OUT_XMM + 16 * i + 16], "little") for i in range(16)]
        mxcsr = struct.unpack_from("<I", out, H.OFF_OUT_MXCSR)[0]
        nlog = struct.unpack_from("<I", out, H.OFF_FCOUNT)[0]
        log = [struct.unpack_from("<QqQQQQ", out, H.OFF_FLOG + H.FLOG_ENTRY * k) for k in range(nlog)]
        if kind == 1:
            log = log[:-1]                  # the last entry is the signal that ended the run
        faults = [Fault(rip=rip, address=addr, access=_access(err), error_code=err & 0x1F)
                  for _sig, _code, addr, rip, err, _trap in log]
        sig = None
        if kind in (1, 2):
            signo = q(H.OFF_OUT_SIG)
            name = signal.Signals(signo).name if kind == 1 else "too-many-faults"
            sig = Signal(name=name, si_code=struct.unpack_from("<q", out, H.OFF_OUT_CODE)[0],
                         address=q(H.OFF_OUT_ADDR), rip=q(H.OFF_OUT_RIP), trapno=q(H.OFF_OUT_TRAPNO),
                         error_code=q(H.OFF_OUT_ERR))
        # Memory: make every mapped data page readable, then read it.
        pages = []
        for i, state in enumerate(seq.pages):
            addr = data_page(i)
            if state == "unmapped":
                pages.append(bytes(PAGE))
                continue
            self._protect(addr, PAGE, PROT_READ)
            pages.append(ctypes.string_at(addr, PAGE))
        return RunState(gprs=gprs, rflags=q(H.OFF_OUT_RFLAGS), xmm=xmm, mxcsr=mxcsr, pages=pages,
                        faults=faults, signal=sig)


def _access(err: int) -> str:
    if err & 0x10:
        return "exec"
    return "write" if err & 0x2 else "read"
