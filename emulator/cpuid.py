"""The CPU an emulated program is told it runs on: CPUID leaves, and a
time-stamp counter that follows the emulated cycles.

Why it matters: glibc's loader reads CPUID once (init_cpu_features) and
from then on picks every ifunc (memcpy, strlen, ...) and the glibc-hwcaps
subdirectories it searches from what it found.  Unicorn 2.1.4 runs VEX
(AVX, AVX2, FMA, BMI) and EVEX (AVX-512) code wrongly or not at all
(emulator/instrument.py refuses it before it runs), so a CPU that
advertises them would send glibc into code faultpath cannot run faithfully.

The model is data: the leaves of the machine faultpath is measured on (an
AMD EPYC, family 0x19 model 0x11, read with `cpuid` natively), minus every
feature bit in REMOVED, each with the reason.  What stays is what Unicorn
runs like the CPU, checked by the differential checker
(tests/test_exec_cpuid.py runs sample instructions of each kept extension
natively and emulated, emulator/diffcheck):

- SSE, SSE2 (the x86-64 baseline), SSE3, SSSE3, SSE4.1, POPCNT, CMPXCHG16B,
  LAHF/SAHF: integer results and flags equal the CPU's.  (MXCSR's sticky
  exception flags, e.g. PE after an inexact addsd, are never raised by
  Unicorn: a difference of the baseline itself, which no CPUID bit can
  hide, and which glibc's paths here never read.)
- SSE4.2 is *removed*: pcmpistri/pcmpestri/pcmpistrm/pcmpestrm give wrong
  indices, masks and CF for some inputs (measured: 7 of 1536 random string
  compares).  Without it glibc takes its SSE2 string functions, and since
  x86-64-v2 needs SSE4.2 the loader searches no glibc-hwcaps subdirectory
  (the native equivalent: GLIBC_TUNABLES=glibc.cpu.hwcaps=-AVX,-SSE4_2).
- XSAVE/OSXSAVE are removed: glibc then saves registers with fxsave in its
  lazy-binding trampoline, never executes xgetbv, and the signal frame
  holds a plain FXSAVE image (emulator/sigframe.py).
- Everything else a program could pick code by (AVX*, FMA, F16C, BMI1/2,
  MOVBE, AES, PCLMULQDQ, SHA, ERMS/FSRM, RDRAND/RDSEED, FSGSBASE ...) is
  removed; RDRAND would also break determinism.
"""
from __future__ import annotations

import ctypes
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING, Callable

from unicorn import UC_HOOK_INSN
from unicorn import x86_const as X
from unicorn.unicorn_py3.arch.intel import HOOK_INSN_CPUID_CFUNC

if TYPE_CHECKING:
    from emulator.task import Task

EAX, EBX, ECX, EDX = range(4)

# Measured on the project's reference machine (AMD EPYC 9004-class, family
# 0x19 model 0x11 stepping 1, under a Linux 6.18 guest): (leaf, subleaf) ->
# (eax, ebx, ecx, edx).  Leaves whose subleaf matters are listed per subleaf.
HOST_LEAVES: dict[tuple[int, int], tuple[int, int, int, int]] = {
    (0x0, 0): (0x0000000D, 0x68747541, 0x444D4163, 0x69746E65),       # max basic leaf (cut to 0xd), "AuthenticAMD"
    (0x1, 0): (0x00A10F11, 0x00020800, 0xFFFA3203, 0x178BFBFF),       # family/model, features
    (0x7, 0): (0x00000001, 0xF1BF07AB, 0x00405FC6, 0x00000010),
    (0x7, 1): (0x00000020, 0x00000000, 0x00000000, 0x00000000),
    (0x80000000, 0): (0x8000001D, 0x68747541, 0x444D4163, 0x69746E65),   # max extended leaf (cut to 0x8000001d)
    (0x80000001, 0): (0x00A10F11, 0x40000000, 0x004003F3, 0x2FD3FBFF),
    (0x80000002, 0): (0x20444D41, 0x43595045, 0x00000000, 0x00000000),   # brand string "AMD EPYC"
    (0x80000005, 0): (0xFF48FF40, 0xFF48FF40, 0x20080140, 0x20080140),   # L1 caches and TLBs
    (0x80000006, 0): (0x5C002200, 0x6C004200, 0x04006140, 0x0A009140),   # L2/L3
    (0x80000007, 0): (0x00000000, 0x00000000, 0x00000000, 0x00000100),   # invariant TSC
    (0x80000008, 0): (0x00303030, 0x50120005, 0x00007001, 0x00000000),   # address sizes
    # Cache topology (glibc's handle_amd reads it for sysconf(_SC_LEVEL1_DCACHE_LINESIZE),
    # which sizes its per-thread getrandom states: 64-byte lines give 21 states a page).
    (0x8000001D, 0): (0x00000121, 0x01C0003F, 0x0000003F, 0x00000000),   # L1d 32 KiB, 64 B lines
    (0x8000001D, 1): (0x00000122, 0x01C0003F, 0x0000003F, 0x00000000),   # L1i 32 KiB
    (0x8000001D, 2): (0x00000143, 0x01C0003F, 0x000007FF, 0x00000002),   # L2 1 MiB
    (0x8000001D, 3): (0x00004163, 0x03C0003F, 0x00007FFF, 0x00000001),   # L3 32 MiB
}
SUBLEAF_INDEXED = {0x4, 0x7, 0xB, 0xD, 0xF, 0x10, 0x12, 0x14, 0x17, 0x18, 0x1D, 0x1E, 0x8000001D, 0x80000020}


@dataclass(frozen=True)
class Removed:
    leaf: int
    subleaf: int
    reg: int
    bit: int
    name: str
    why: str


_VEX = "VEX/EVEX code: Unicorn 2.1.4 runs VEX.128 as legacy SSE (wrong results) and rejects VEX.256/EVEX"
_NOPICK = "not needed, not checked: nothing is advertised that the differential check has not confirmed"


def _bits(leaf: int, sub: int, reg: int, why: str, **bits: int) -> list[Removed]:
    return [Removed(leaf, sub, reg, b, n, why) for n, b in bits.items()]


REMOVED: tuple[Removed, ...] = tuple(
    _bits(0x1, 0, ECX, "pcmpXstrX give wrong results in Unicorn 2.1.4 (differential check)", SSE4_2=20)
    + _bits(0x1, 0, ECX, _VEX, FMA=12, AVX=28, F16C=29)
    + _bits(0x1, 0, ECX, "no XSAVE: glibc uses fxsave and never runs xgetbv; signal frames hold FXSAVE",
            XSAVE=26, OSXSAVE=27)
    + _bits(0x1, 0, ECX, "nondeterministic", RDRAND=30)
    + _bits(0x1, 0, ECX, _NOPICK, PCLMULQDQ=1, MONITOR=3, PCID=17, X2APIC=21, MOVBE=22, TSC_DEADLINE=24,
            AES=25, HYPERVISOR=31)
    + _bits(0x7, 0, EBX, _VEX, AVX2=5, BMI1=3, BMI2=8, AVX512F=16, AVX512DQ=17, AVX512IFMA=21, AVX512CD=28,
            AVX512BW=30, AVX512VL=31)
    + _bits(0x7, 0, EBX, "nondeterministic", RDSEED=18)
    + _bits(0x7, 0, EBX, "AT_HWCAP2 says FSGSBASE is off: user code must not use wrfsbase",
            FSGSBASE=0)
    + _bits(0x7, 0, EBX, _NOPICK, SMEP=7, ERMS=9, INVPCID=10, PQM=12, PQE=15, ADX=19, SMAP=20,
            CLFLUSHOPT=23, CLWB=24, SHA=29)
    + _bits(0x7, 0, ECX, _VEX, AVX512VBMI=1, AVX512VBMI2=6, VAES=9, VPCLMULQDQ=10, AVX512VNNI=11,
            AVX512BITALG=12, AVX512VPOPCNTDQ=14)
    + _bits(0x7, 0, ECX, _NOPICK, UMIP=2, PKU=3, OSPKE=4, CET_SS=7, GFNI=8, LA57=16, RDPID=22,
            MOVDIRI=27)
    + _bits(0x7, 0, EDX, _NOPICK, FSRM=4)
    + _bits(0x7, 1, EAX, _VEX, AVX512BF16=5)
    + _bits(0x80000001, 0, ECX, _NOPICK, SVM=2, ABM_LZCNT=5, SSE4A=6, MISALIGNSSE=7, PREFETCHW=8,
            OSVW=9, IBS=10, XOP=11, SKINIT=12, WDT=13, LWP=15, FMA4=16, TCE=17, TBM=21,
            PERFCTR_CORE=23)
    + _bits(0x80000001, 0, EDX, _NOPICK, MMXEXT=22, FFXSR=25, PAGE1GB=26, RDTSCP=27)
)

# Leaves kept whole: identification, caches, address sizes.  Anything not
# listed reads as zeros (AMD's answer for a leaf it does not implement).
MODEL_NAME = "faultpath-x86-64 (AMD EPYC family 0x19 without AVX/AVX-512/SSE4.2/XSAVE)"
TSC_HZ = 2_596_000_000              # the reference machine's TSC (DESIGN.md)
TSC_AT_EXEC = 1 << 40                # where the emulated TSC starts: well after boot


@dataclass(frozen=True)
class CpuModel:
    name: str
    leaves: dict[tuple[int, int], tuple[int, int, int, int]]

    def cpuid(self, leaf: int, subleaf: int) -> tuple[int, int, int, int]:
        key = (leaf, subleaf if leaf in SUBLEAF_INDEXED else 0)
        return self.leaves.get(key, (0, 0, 0, 0))

    def has(self, name: str) -> bool:
        """Whether a feature removed by REMOVED is (still) set; for tests."""
        for r in REMOVED:
            if r.name == name:
                return bool(self.cpuid(r.leaf, r.subleaf)[r.reg] >> r.bit & 1)
        raise KeyError(name)

    @property
    def hwcap(self) -> int:
        """AT_HWCAP on x86: CPUID.1:EDX."""
        return self.cpuid(1, 0)[EDX]


@lru_cache(maxsize=None)
def emulated_model() -> CpuModel:
    leaves = {k: list(v) for k, v in HOST_LEAVES.items()}
    for r in REMOVED:
        regs = leaves.get((r.leaf, r.subleaf))
        if regs is not None:
            regs[r.reg] &= ~(1 << r.bit)
    return CpuModel(MODEL_NAME, {k: tuple(v) for k, v in leaves.items()})


class CpuHooks:
    """CPUID and RDTSC/RDTSCP answered by the model, through Unicorn's
    instruction hooks (called from the helpers of those instructions only:
    no per-instruction cost, and no effect on lazy flags).  `tsc()` gives
    the counter's value when an rdtsc executes."""

    def __init__(self, task: "Task", model: CpuModel, tsc: Callable[[], int]):
        self.model = model
        self.tsc = tsc
        self.cpuid_count = 0
        self.rdtsc_count = 0
        self.error: BaseException | None = None
        uc = task.uc
        self._h_cpuid = uc.hook_add(UC_HOOK_INSN, self._on_cpuid, None, 1, 0, X.UC_X86_INS_CPUID)
        # The Python binding only wraps IN/OUT/SYSCALL/CPUID instruction
        # hooks; RDTSC and RDTSCP share CPUID's callback type.
        self._rdtsc_cb = HOOK_INSN_CPUID_CFUNC(self._on_rdtsc)
        self._rdtscp_cb = HOOK_INSN_CPUID_CFUNC(self._on_rdtscp)
        add = getattr(uc, "_Uc__do_hook_add")
        self._h_rdtsc = add(UC_HOOK_INSN, self._rdtsc_cb, 1, 0, ctypes.c_int(X.UC_X86_INS_RDTSC))
        self._h_rdtscp = add(UC_HOOK_INSN, self._rdtscp_cb, 1, 0, ctypes.c_int(X.UC_X86_INS_RDTSCP))
        self._uc = uc

    def _on_cpuid(self, uc, user_data) -> int:
        try:
            leaf = uc.reg_read(X.UC_X86_REG_EAX) & 0xFFFF_FFFF
            sub = uc.reg_read(X.UC_X86_REG_ECX) & 0xFFFF_FFFF
            a, b, c, d = self.model.cpuid(leaf, sub)
            # A 32-bit result clears the upper halves of the 64-bit registers.
            uc.reg_write(X.UC_X86_REG_RAX, a)
            uc.reg_write(X.UC_X86_REG_RBX, b)
            uc.reg_write(X.UC_X86_REG_RCX, c)
            uc.reg_write(X.UC_X86_REG_RDX, d)
            self.cpuid_count += 1
        except BaseException as e:          # Unicorn swallows exceptions raised in hooks
            self.error = e
            uc.emu_stop()
        return 1                            # skip QEMU's own CPUID

    def _set_tsc(self) -> None:
        v = self.tsc() & 0xFFFF_FFFF_FFFF_FFFF
        self._uc.reg_write(X.UC_X86_REG_RAX, v & 0xFFFF_FFFF)
        self._uc.reg_write(X.UC_X86_REG_RDX, v >> 32)
        self.rdtsc_count += 1

    def _on_rdtsc(self, uch, key) -> int:
        try:
            self._set_tsc()
        except BaseException as e:
            self.error = e
            self._uc.emu_stop()
        return 1

    def _on_rdtscp(self, uch, key) -> int:
        try:
            self._set_tsc()
            self._uc.reg_write(X.UC_X86_REG_RCX, 0)    # IA32_TSC_AUX: cpu 0, node 0
        except BaseException as e:
            self.error = e
            self._uc.emu_stop()
        return 1
