"""Signals for an emulated process: actions, masks, delivery on the user stack
and rt_sigreturn (kernel/signal.c, arch/x86/kernel/signal.c, signal_64.c).

A signal is *generated* by send_signal() (kill, tgkill, a child's exit, an
injection, or force_sig for a fault), stays *pending* while blocked, and is
*delivered* by deliver_signals() when the task returns to user mode: after
a syscall, when it is scheduled in, or at once for a synchronous fault.
Delivery either takes the default action (ignore, or end the process) or
builds an rt_sigframe on the user stack (setup_rt_frame) and points the CPU
at the handler, whose return through sa_restorer ends in rt_sigreturn.

Not modelled: job control (SIGSTOP/SIGTSTP/SIGCONT stop nothing), real-time
signal queueing beyond one instance per signal, ptrace, and restartable
sequences' abort on delivery (glibc registers rseq but never uses a
critical section).
"""
from __future__ import annotations

import struct
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Protocol

from unicorn import x86_const as X

from emulator.sigframe import (FX_SW_BYTES, FXSAVE_SIZE, MCONTEXT, RT_SIGFRAME_SIZE, SIGCONTEXT_SIZE, SIGINFO,
                               SIGMASK, UC_FLAGS, UC_SIGCONTEXT_SS, UC_STACK, UC_STRICT_RESTORE_SS, FxState,
                               Sigcontext, Siginfo, pack_stack_t, unpack_stack_t)

if TYPE_CHECKING:
    from emulator.records import CallContext

# asm-generic/signal.h (x86-64 numbering)
SIGNUMS = {
    "SIGHUP": 1, "SIGINT": 2, "SIGQUIT": 3, "SIGILL": 4, "SIGTRAP": 5, "SIGABRT": 6, "SIGBUS": 7, "SIGFPE": 8,
    "SIGKILL": 9, "SIGUSR1": 10, "SIGSEGV": 11, "SIGUSR2": 12, "SIGPIPE": 13, "SIGALRM": 14, "SIGTERM": 15,
    "SIGSTKFLT": 16, "SIGCHLD": 17, "SIGCONT": 18, "SIGSTOP": 19, "SIGTSTP": 20, "SIGTTIN": 21, "SIGTTOU": 22,
    "SIGURG": 23, "SIGXCPU": 24, "SIGXFSZ": 25, "SIGVTALRM": 26, "SIGPROF": 27, "SIGWINCH": 28, "SIGIO": 29,
    "SIGPWR": 30, "SIGSYS": 31,
}
SIGNAMES = {v: k for k, v in SIGNUMS.items()}
NSIG = 64
SIGRTMIN = 32
SIGKILL, SIGSEGV, SIGCHLD, SIGSTOP, SIGPIPE = 9, 11, 17, 19, 13

SIG_DFL, SIG_IGN = 0, 1
SA_NOCLDSTOP = 0x1
SA_NOCLDWAIT = 0x2
SA_SIGINFO = 0x4
SA_RESTORER = 0x04000000
SA_ONSTACK = 0x08000000
SA_RESTART = 0x10000000
SA_NODEFER = 0x40000000
SA_RESETHAND = 0x80000000
SIG_BLOCK, SIG_UNBLOCK, SIG_SETMASK = 0, 1, 2
SS_ONSTACK, SS_DISABLE, SS_AUTODISARM = 1, 2, 1 << 31
MINSIGSTKSZ = 2048

# si_code values (asm-generic/siginfo.h)
SI_USER = 0
SI_KERNEL = 0x80
SI_TKILL = -6
CLD_EXITED, CLD_KILLED, CLD_DUMPED = 1, 2, 3

_TERM, _CORE, _IGN, _STOP, _CONT = "term", "core", "ignore", "stop", "continue"
DEFAULT_ACTION = {s: _TERM for s in range(1, NSIG + 1)}
DEFAULT_ACTION.update({n: _CORE for n in (3, 4, 5, 6, 7, 8, 11, 24, 25, 31)})
DEFAULT_ACTION.update({n: _IGN for n in (17, 23, 28)})
DEFAULT_ACTION.update({n: _STOP for n in (19, 20, 21, 22)})
DEFAULT_ACTION[18] = _CONT
# The kernel dequeues these first (SYNCHRONOUS_MASK): a fault's signal is
# handled before anything that was already pending.
SYNCHRONOUS = (11, 7, 4, 5, 8, 31)

EFLAGS_TF, EFLAGS_DF, EFLAGS_RF = 0x100, 0x400, 0x10000
# FIX_EFLAGS: the flags sigreturn may restore (AC OF DF TF SF ZF AF PF CF, RF).
FIX_EFLAGS = 0x40000 | 0x800 | 0x400 | 0x100 | 0x80 | 0x40 | 0x10 | 0x4 | 0x1 | 0x10000


def sigmask(sig: int) -> int:
    return 1 << (sig - 1)


UNBLOCKABLE = sigmask(SIGKILL) | sigmask(SIGSTOP)
ALL_SIGNALS = (1 << NSIG) - 1


def signame(sig: int) -> str:
    if sig in SIGNAMES:
        return SIGNAMES[sig]
    return f"SIGRT_{sig - SIGRTMIN}" if SIGRTMIN <= sig <= NSIG else str(sig)


def parse_signal(name: str) -> int | None:
    """SIGUSR1, USR1 or a number."""
    n = name.strip().upper()
    if n.isdigit():
        v = int(n)
        return v if 1 <= v <= NSIG else None
    return SIGNUMS.get(n if n.startswith("SIG") else "SIG" + n)


class SignalTarget(Protocol):
    """What signal delivery needs of a process (emulator/process.py)."""
    sig: "SignalState"
    uc: object

    def user_regs(self, ctx: "CallContext") -> dict[str, int]: ...
    def load_user_regs(self, ctx: "CallContext", regs: dict[str, int]) -> None: ...
    def fpu_state(self) -> FxState: ...
    def load_fpu_state(self, fx: FxState) -> None: ...
    def enter_handler(self, ctx: "CallContext", handler: int, frame: int, signo: int, info: int, uc_addr: int,
                      rflags: int) -> None: ...
    def put_user_bytes(self, ctx: "CallContext", addr: int, data: bytes, what: str) -> bool: ...
    def get_user_bytes(self, addr: int, n: int) -> bytes | None: ...
    def note_signal(self, k: "KSignal", what: str) -> None: ...
    def die_of_signal(self, k: "KSignal") -> None: ...
    def signal_wake_up(self) -> None: ...


@dataclass
class SigAction:
    """struct k_sigaction as rt_sigaction passes it: handler, flags, restorer, mask."""
    handler: int = SIG_DFL
    flags: int = 0
    restorer: int = 0
    mask: int = 0

    FORMAT = "<QQQQ"

    def pack(self) -> bytes:
        return struct.pack(self.FORMAT, self.handler, self.flags, self.restorer, self.mask)

    @classmethod
    def unpack(cls, raw: bytes) -> "SigAction":
        return cls(*struct.unpack(cls.FORMAT, raw[:32]))


@dataclass
class KSignal:
    """A generated signal: its number, the siginfo the handler sees, and for
    a CPU exception the trap number, error code and cr2 its sigcontext carries."""
    signo: int
    info: Siginfo
    trapno: int = 0
    err: int = 0
    cr2: int = 0
    why: str = ""


@dataclass
class SignalState:
    """sighand (actions), the blocked mask, pending signals and the alternate stack."""
    actions: list[SigAction] = field(default_factory=lambda: [SigAction() for _ in range(NSIG + 1)])
    blocked: int = 0
    pending: list[KSignal] = field(default_factory=list)
    altstack: tuple[int, int, int] = (0, 0, SS_DISABLE)     # sp, size, flags

    def fork_copy(self) -> "SignalState":
        """copy_sighand + the mask; a child starts with nothing pending."""
        return SignalState([replace(a) for a in self.actions], self.blocked, [], self.altstack)

    def copy(self) -> "SignalState":
        """All of it, pending signals included (a snapshot; queued KSignals
        are never changed, so the list is copied, not its entries)."""
        return SignalState([replace(a) for a in self.actions], self.blocked, list(self.pending), self.altstack)

    def ignored(self, sig: int) -> bool:
        """sig_ignored(): discarded when generated."""
        h = self.actions[sig].handler
        return h == SIG_IGN or (h == SIG_DFL and DEFAULT_ACTION[sig] == _IGN)

    def deliverable(self) -> bool:
        return any(not self.blocked & sigmask(k.signo) for k in self.pending)

    def peek(self) -> KSignal | None:
        """The next unblocked pending signal: synchronous ones first, then the
        lowest number."""
        ready = [k for k in self.pending if not self.blocked & sigmask(k.signo)]
        return min(ready, key=lambda k: (k.signo not in SYNCHRONOUS, k.signo), default=None)

    def dequeue(self) -> KSignal | None:
        k = self.peek()
        if k is not None:
            self.pending.remove(k)
        return k

    def restarts(self, k: KSignal) -> bool:
        """Does a syscall interrupted by k run again afterwards?  Yes unless a
        handler without SA_RESTART runs (-ERESTARTSYS becomes -EINTR)."""
        act = self.actions[k.signo]
        return act.handler in (SIG_DFL, SIG_IGN) or bool(act.flags & SA_RESTART)


def on_sig_stack(st: SignalState, sp: int) -> bool:
    base, size, flags = st.altstack
    return not flags & SS_DISABLE and size and base < sp <= base + size


def sas_ss_flags(st: SignalState, sp: int) -> int:
    base, size, flags = st.altstack
    if flags & SS_DISABLE or not size:
        return SS_DISABLE
    return SS_ONSTACK if on_sig_stack(st, sp) else 0


# ----------------------------------------------------------------- generation
def send_signal(p: "SignalTarget", k: KSignal) -> bool:
    """__send_signal(): queue k for p unless it is ignored or already pending
    (a standard signal is not queued twice).  Wakes p if it sleeps and can
    take the signal.  Returns whether it was queued."""
    st = p.sig
    if st.ignored(k.signo) and k.signo != SIGKILL:
        p.note_signal(k, "ignored")
        return False
    if k.signo < SIGRTMIN and any(q.signo == k.signo for q in st.pending):
        return False
    st.pending.append(k)
    if k.signo == SIGKILL or not st.blocked & sigmask(k.signo):
        p.signal_wake_up()
    return True


def force_sig(p: "SignalTarget", k: KSignal) -> None:
    """force_sig_info_to_task(): a signal the task caused (a fault).  Blocked
    or ignored, it would be lost or loop forever: the kernel unblocks it and
    resets the action to SIG_DFL, so the task dies of it."""
    st = p.sig
    act = st.actions[k.signo]
    if st.blocked & sigmask(k.signo) or act.handler == SIG_IGN:
        st.blocked &= ~sigmask(k.signo)
        if act.handler == SIG_IGN:
            st.actions[k.signo] = SigAction()
    st.pending.insert(0, k)


# ----------------------------------------------------------------- delivery
def deliver_signals(p: "SignalTarget", ctx: "CallContext") -> None:
    """exit_to_user_mode -> arch_do_signal_or_restart: deliver every pending
    unblocked signal.  Each handled one pushes a frame over the last, so the
    handler of the last signal runs first, as on Linux."""
    while not ctx.done:
        k = p.sig.dequeue()
        if k is None:
            return
        act = p.sig.actions[k.signo]
        if act.handler == SIG_IGN:
            continue
        if act.handler == SIG_DFL:
            what = DEFAULT_ACTION[k.signo]
            if what in (_IGN, _STOP, _CONT):
                p.note_signal(k, f"default action: {what}" + (" (job control is not modelled)"
                                                               if what != _IGN else ""))
                continue
            p.note_signal(k, "default action: " + ("terminate with core" if what == _CORE else "terminate"))
            p.die_of_signal(k)
            return
        p.note_signal(k, "handler")
        if not handle_signal(p, ctx, k, act):
            # The frame could not be written: force_sigsegv() (a SIGSEGV
            # that cannot be handled resets its action, so the task dies).
            if k.signo == SIGSEGV:
                p.sig.actions[SIGSEGV] = SigAction()
            force_sig(p, KSignal(SIGSEGV, Siginfo(SIGSEGV, SI_KERNEL), why="signal frame not writable"))


def handle_signal(p: "SignalTarget", ctx: "CallContext", k: KSignal, act: SigAction) -> bool:
    """setup_rt_frame, then the handler's mask.  False when the frame cannot
    be written (bad stack, or no SA_RESTORER: x86-64 has no vDSO sigreturn
    trampoline, so the kernel refuses)."""
    st = p.sig
    if not act.flags & SA_RESTORER:
        return False
    regs = p.user_regs(ctx)
    sp = regs["rsp"]
    onstack = on_sig_stack(st, sp)
    sp -= 128                                   # the red zone below rsp belongs to the interrupted code
    if act.flags & SA_ONSTACK and sas_ss_flags(st, sp) == 0:
        sp = st.altstack[0] + st.altstack[1]
    # fpu__alloc_mathframe: the FXSAVE image, 64-byte aligned.
    buf_fx = (sp - FXSAVE_SIZE) & ~63
    frame = ((buf_fx - RT_SIGFRAME_SIZE) & ~15) - 8    # align_sigframe: (sp + 8) % 16 == 0 at entry
    if onstack and not on_sig_stack(st, frame):
        return False
    fx = p.fpu_state()
    mask = st.blocked
    sc = Sigcontext(regs, err=k.err, trapno=k.trapno, oldmask=mask & 0xFFFF_FFFF_FFFF_FFFF, cr2=k.cr2,
                    fpstate=buf_fx)
    base, size, flags = st.altstack
    ss_flags = sas_ss_flags(st, regs["rsp"])
    uc = struct.pack("<QQ", UC_SIGCONTEXT_SS | UC_STRICT_RESTORE_SS, 0) + pack_stack_t(base, ss_flags, size)
    img = bytearray(RT_SIGFRAME_SIZE)
    img[0:8] = struct.pack("<Q", act.restorer)
    img[UC_FLAGS:UC_FLAGS + len(uc)] = uc
    img[MCONTEXT:MCONTEXT + SIGCONTEXT_SIZE] = sc.pack()
    img[SIGMASK:SIGMASK + 8] = struct.pack("<Q", mask)
    if act.flags & SA_SIGINFO:
        img[SIGINFO:SIGINFO + 128] = k.info.pack()
    # The FXSAVE image leaves its last 48 bytes as they were (the CPU does
    # not write them), so only the first 464 are copied.
    if not p.put_user_bytes(ctx, buf_fx, fx.pack()[:FX_SW_BYTES], "setup_rt_frame:fpstate"):
        return False
    if not p.put_user_bytes(ctx, frame, bytes(img), "setup_rt_frame"):
        return False
    new_mask = st.blocked | act.mask
    if not act.flags & SA_NODEFER:
        new_mask |= sigmask(k.signo)
    st.blocked = new_mask & ~UNBLOCKABLE
    if act.flags & SA_RESETHAND:
        st.actions[k.signo] = SigAction()
    if st.altstack[2] & SS_AUTODISARM:
        st.altstack = (0, 0, SS_DISABLE)
    rflags = regs["eflags"] & ~(EFLAGS_DF | EFLAGS_RF | EFLAGS_TF)
    p.enter_handler(ctx, act.handler, frame, k.signo, frame + SIGINFO, frame + UC_FLAGS, rflags)
    return True


def restore_sigframe(p: "SignalTarget", ctx: "CallContext") -> bool:
    """sys_rt_sigreturn: the frame is at rsp - 8 (the handler's `ret` popped
    pretcode).  Restores the mask, every register, the FPU state and the
    alternate stack; False for a frame that cannot be read (the kernel
    then sends SIGSEGV)."""
    rsp = p.uc.reg_read(X.UC_X86_REG_RSP)
    frame = rsp - 8
    raw = p.get_user_bytes(frame, RT_SIGFRAME_SIZE)
    if raw is None:
        return False
    mask = struct.unpack_from("<Q", raw, SIGMASK)[0]
    p.sig.blocked = mask & ~UNBLOCKABLE
    sc = Sigcontext.unpack(raw[MCONTEXT:MCONTEXT + SIGCONTEXT_SIZE])
    fx = None
    if sc.fpstate:
        fxraw = p.get_user_bytes(sc.fpstate, FX_SW_BYTES)
        if fxraw is None:
            return False
        fx = FxState.unpack(fxraw)
        if fx.mxcsr & ~0xFFFF:
            return False            # reserved MXCSR bits: the kernel refuses the frame
    cur_flags = p.uc.reg_read(X.UC_X86_REG_RFLAGS)
    sc.gprs["eflags"] = (cur_flags & ~FIX_EFLAGS) | (sc.gprs["eflags"] & FIX_EFLAGS)
    p.load_user_regs(ctx, sc.gprs)
    p.load_fpu_state(fx if fx is not None else FxState())
    sp, flags, size = unpack_stack_t(raw[UC_STACK:UC_STACK + 24])
    do_sigaltstack(p, sp, flags, size, rsp_now=sc.gprs["rsp"], quiet=True)
    return True


def do_sigaltstack(p: "SignalTarget", sp: int, flags: int, size: int, rsp_now: int, quiet: bool = False) -> int:
    """sigaltstack's set half: 0 or -errno (-EPERM while on the stack,
    -EINVAL for unknown flags, -ENOMEM below MINSIGSTKSZ)."""
    st = p.sig
    if on_sig_stack(st, rsp_now):
        return -1
    mode = flags & ~SS_AUTODISARM
    if mode not in (0, SS_ONSTACK, SS_DISABLE):
        return -22
    if mode == SS_DISABLE:
        st.altstack = (0, 0, SS_DISABLE)
        return 0
    if size < MINSIGSTKSZ:
        return -12
    st.altstack = (sp, size, flags & SS_AUTODISARM)
    return 0


def sigframe_size() -> int:
    """What AT_MINSIGSTKSZ reports: the kernel's get_sigframe_size(), i.e.
    the rt_sigframe, the FPU image (512 bytes of FXSAVE on a CPU without
    XSAVE) and the worst-case padding of their alignments (15 + 63),
    rounded up to 16."""
    n = RT_SIGFRAME_SIZE + 15 + FXSAVE_SIZE + 63
    return (n + 15) & ~15

