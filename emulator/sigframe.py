"""The x86-64 signal frame's layouts: struct rt_sigframe, ucontext, sigcontext,
siginfo and the FXSAVE image the FPU state is saved as.

Layouts only (emulator/signal.py is the logic that fills and reads them), as
they are in the uapi headers asm/sigcontext.h, asm/ucontext.h,
asm-generic/siginfo.h and the SDM's FXSAVE format:

    struct rt_sigframe {               offset
        char *pretcode;                   0   the handler's return address: sa_restorer
        struct ucontext uc;               8
        struct siginfo info;            312
    };                                  440 bytes
    struct ucontext {
        unsigned long uc_flags;           0
        struct ucontext *uc_link;         8
        stack_t uc_stack;                16   ss_sp, ss_flags (int + pad), ss_size
        struct sigcontext uc_mcontext;   40   256 bytes
        sigset_t uc_sigmask;            296   the kernel's 64-bit mask
    };                                  304 bytes

The FPU state goes separately, 64-byte aligned above the frame, and the
sigcontext's fpstate field points at it.  The CPU model has no XSAVE
(emulator/cpuid.py), so it is a bare 512-byte FXSAVE image, as the kernel
writes it on such a CPU (no FP_XSTATE_MAGIC words, uc_flags without
UC_FP_XSTATE).
"""
from __future__ import annotations

import struct
from dataclasses import dataclass, field

RT_SIGFRAME_SIZE = 440
UC_OFFSET = 8
UC_FLAGS = UC_OFFSET + 0
UC_LINK = UC_OFFSET + 8
UC_STACK = UC_OFFSET + 16
MCONTEXT = UC_OFFSET + 40
SIGMASK = UC_OFFSET + 296
SIGINFO = UC_OFFSET + 304
SIGINFO_SIZE = 128
SIGCONTEXT_SIZE = 256
FXSAVE_SIZE = 512

# uc_flags (asm/ucontext.h)
UC_FP_XSTATE = 0x1
UC_SIGCONTEXT_SS = 0x2
UC_STRICT_RESTORE_SS = 0x4

# struct sigcontext (64-bit): 18 quadwords, cs gs fs ss (u16 each), then
# err, trapno, oldmask, cr2, fpstate, 8 reserved quadwords.
SIGCONTEXT_GPRS = ("r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15", "rdi", "rsi", "rbp", "rbx", "rdx",
                   "rax", "rcx", "rsp", "rip", "eflags")
_SC_FMT = "<18Q4H5Q8Q"
assert struct.calcsize(_SC_FMT) == SIGCONTEXT_SIZE


@dataclass
class Sigcontext:
    gprs: dict[str, int]
    cs: int = 0x33
    ss: int = 0x2B
    err: int = 0
    trapno: int = 0
    oldmask: int = 0
    cr2: int = 0
    fpstate: int = 0

    def pack(self) -> bytes:
        return struct.pack(_SC_FMT, *(self.gprs[r] & (1 << 64) - 1 for r in SIGCONTEXT_GPRS),
                           self.cs, 0, 0, self.ss, self.err, self.trapno, self.oldmask, self.cr2, self.fpstate,
                           *([0] * 8))

    @classmethod
    def unpack(cls, raw: bytes) -> "Sigcontext":
        v = struct.unpack(_SC_FMT, raw[:SIGCONTEXT_SIZE])
        gprs = dict(zip(SIGCONTEXT_GPRS, v[:18]))
        cs, _gs, _fs, ss = v[18:22]
        err, trapno, oldmask, cr2, fpstate = v[22:27]
        return cls(gprs, cs, ss, err, trapno, oldmask, cr2, fpstate)


def pack_stack_t(sp: int, flags: int, size: int) -> bytes:
    """stack_t: void *ss_sp; int ss_flags; size_t ss_size."""
    return struct.pack("<QiiQ", sp, flags, 0, size)


def unpack_stack_t(raw: bytes) -> tuple[int, int, int]:
    sp, flags, _pad, size = struct.unpack("<QiiQ", raw[:24])
    return sp, flags, size


# --- siginfo -----------------------------------------------------------------
# si_signo, si_errno, si_code (int each), a pad int, then the union at 16:
#   kill/tkill/queue:  si_pid (int), si_uid (int)
#   SIGCHLD:           si_pid, si_uid, si_status (int), si_utime, si_stime (long at 24, 32)
#   SIGSEGV/SIGBUS...: si_addr (pointer)
@dataclass
class Siginfo:
    signo: int
    code: int
    errno: int = 0
    pid: int = 0
    uid: int = 0
    status: int = 0
    addr: int | None = None

    def pack(self) -> bytes:
        head = struct.pack("<iiii", self.signo, self.errno, self.code, 0)
        if self.addr is not None:
            body = struct.pack("<Q", self.addr)
        else:
            body = struct.pack("<iiiiQQ", self.pid, self.uid, self.status, 0, 0, 0)
        return (head + body).ljust(SIGINFO_SIZE, b"\0")


# --- the FPU state: FXSAVE's 512-byte format ---------------------------------
# fcw u16, fsw u16, ftw (abridged) u8, pad u8, fop u16, fip u64, fdp u64,
# mxcsr u32, mxcsr_mask u32; st0..st7 at 32 (16 bytes each, 10 used);
# xmm0..15 at 160; 416..463 reserved; 464..511 free for software.
_FX_HEAD = "<HHBBHQQII"
FX_ST = 32
FX_XMM = 160
FX_SW_BYTES = 464


@dataclass
class FxState:
    fcw: int = 0x37F
    fsw: int = 0
    ftw: int = 0          # abridged: bit i set when physical register i is not empty
    fop: int = 0
    fip: int = 0
    fdp: int = 0
    mxcsr: int = 0x1F80
    mxcsr_mask: int = 0xFFFF
    st: list[bytes] = field(default_factory=lambda: [bytes(10)] * 8)   # in stack order, ST(0) first
    xmm: list[int] = field(default_factory=lambda: [0] * 16)

    def pack(self) -> bytes:
        """The 464 bytes FXSAVE writes (the last 48 are the software's)."""
        out = bytearray(struct.pack(_FX_HEAD, self.fcw, self.fsw, self.ftw, 0, self.fop, self.fip, self.fdp,
                                    self.mxcsr, self.mxcsr_mask))
        for s in self.st:
            out += s[:10].ljust(16, b"\0")
        for x in self.xmm:
            out += x.to_bytes(16, "little")
        return bytes(out.ljust(FX_SW_BYTES, b"\0"))

    @classmethod
    def unpack(cls, raw: bytes) -> "FxState":
        fcw, fsw, ftw, _p, fop, fip, fdp, mxcsr, mask = struct.unpack_from(_FX_HEAD, raw, 0)
        st = [bytes(raw[FX_ST + 16 * i:FX_ST + 16 * i + 10]) for i in range(8)]
        xmm = [int.from_bytes(raw[FX_XMM + 16 * i:FX_XMM + 16 * i + 16], "little") for i in range(16)]
        return cls(fcw, fsw, ftw, fop, fip, fdp, mxcsr, mask, st, xmm)
