"""One traced process: start, registers, memory, stepping, injected syscalls,
fork, and a bounded run to the next int3 that records every syscall.

Only processes this module started (and their fork children, auto-attached
by PTRACE_O_TRACEFORK) are ever traced or signalled, by pid.  PTRACE_O_EXITKILL
makes the kernel kill them all should the tracer die; `kill()` reaps.
"""
from __future__ import annotations

import os
import signal
import time
from dataclasses import dataclass, field

import emulator.twin.ptrace as pt
from emulator.twin.errors import TraceeTimeout, TwinError as TraceeError
from emulator.twin.tracee_image import TraceeImage

OPTIONS = pt.PTRACE_O_EXITKILL | pt.PTRACE_O_TRACESYSGOOD | pt.PTRACE_O_TRACEFORK
AT_SYSINFO_EHDR = 33
NR_getrandom = 318
ENOSYS = 38
KPF_ZERO_PAGE = 24
SPIN_SECONDS = 0.002        # poll waitpid this long before sleeping between polls
POLL_SLEEP = 0.0005


@dataclass
class SyscallObs:
    """One system call the tracee made, as seen at its entry and exit stops."""
    nr: int
    args: tuple[int, ...]          # rdi, rsi, rdx, r10, r8, r9
    ret: int | None = None         # None: the process never came back from it
    data: bytes = b""              # getrandom: the bytes the kernel wrote (read at the exit stop)
    data_addr: int = 0
    rip: int = 0                   # address just past the syscall instruction
    step: int | None = None        # instruction boundary index when it was single-stepped over


@dataclass
class Stop:
    """Where a resumed tracee ended up."""
    kind: str                      # trap | signal | exited | killed | timeout
    sig: int = 0
    status: int = 0
    syscalls: list[SyscallObs] = field(default_factory=list)


def _signed(v: int) -> int:
    return v - (1 << 64) if v >> 63 else v


class Tracee:
    def __init__(self, pid: int, image: TraceeImage):
        self.pid = pid
        self.image = image
        self.alive = True
        self.pending: list[int] = []     # pids of fork children reported before their own stop

    # ---- life cycle -------------------------------------------------------------
    @classmethod
    def spawn(cls, image: TraceeImage) -> "Tracee":
        """fork + PTRACE_TRACEME + execve; returns stopped at the entry (the
        exec SIGTRAP), options set."""
        pid = os.fork()
        if pid == 0:                                    # the child: nothing but traceme and exec
            try:
                pt.traceme()
                os.execve(image.path, [image.path], {})
            finally:
                os._exit(127)
        t = cls(pid, image)
        try:
            _, status = pt.wait(pid)
            if pt.stop_sig(status) != signal.SIGTRAP:
                raise TraceeError(f"tracee {pid}: expected the exec SIGTRAP, got status {status:#x}")
            pt.set_options(pid, OPTIONS)
        except BaseException:
            t.kill()
            raise
        return t

    def kill(self) -> None:
        """SIGKILL and reap (a traced process must be waited for by us)."""
        for pid in self.pending:                  # fork children the call made itself, never resumed
            Tracee(pid, self.image).kill()
        self.pending = []
        if not self.alive:
            return
        self.alive = False
        try:
            os.kill(self.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        while True:
            try:
                p, status = pt.wait(self.pid)
            except ChildProcessError:
                return
            if os.WIFEXITED(status) or os.WIFSIGNALED(status):
                return

    # ---- registers and memory -----------------------------------------------------
    def regs(self) -> pt.UserRegs:
        return pt.get_regs(self.pid)

    def set_regs(self, r: pt.UserRegs) -> None:
        pt.set_regs(self.pid, r)

    def read(self, addr: int, n: int) -> bytes:
        return pt.read_mem(self.pid, addr, n)

    def write(self, addr: int, data: bytes) -> None:
        pt.write_mem(self.pid, addr, data)

    def auxv(self) -> dict[int, int]:
        raw = open(f"/proc/{self.pid}/auxv", "rb").read()
        out = {}
        for off in range(0, len(raw) - 15, 16):
            k, v = int.from_bytes(raw[off:off + 8], "little"), int.from_bytes(raw[off + 8:off + 16], "little")
            if k == 0:
                break
            out[k] = v
        return out

    def page_present(self, addr: int) -> bool:
        """Bit 63 of /proc/PID/pagemap: a PTE maps the page (the shared zero
        page included)."""
        return self.page_state(addr) != "absent"

    def page_state(self, addr: int) -> str:
        """absent (no PTE: never touched, or dropped), zero (the shared zero
        page, mapped by a read), or backed (a page of its own).  The zero page
        is told by KPF_ZERO_PAGE in /proc/kpageflags (root sees pfns); without
        pfns a present page is reported backed."""
        with open(f"/proc/{self.pid}/pagemap", "rb") as f:
            f.seek((addr >> 12) * 8)
            e = int.from_bytes(f.read(8), "little")
        if not e >> 63:
            return "absent"
        pfn = e & ((1 << 55) - 1)
        if pfn:
            try:
                with open("/proc/kpageflags", "rb") as f:
                    f.seek(pfn * 8)
                    if int.from_bytes(f.read(8), "little") >> KPF_ZERO_PAGE & 1:
                        return "zero"
            except OSError:
                pass
        return "backed"

    # ---- waiting ------------------------------------------------------------------
    def _wait(self, deadline: float | None, on_poll=None, pace: float | None = None) -> int:
        """Next status of this tracee (blocking without a deadline; polling with
        one, calling on_poll() between polls: a true result ends the wait as
        the deadline would).  pace: sleep exactly this long between polls from
        the start (a poller that must act within a few microseconds of the
        tracee's progress: oom:K lifting its limit, see oom.paced)."""
        spin_until = time.monotonic() + SPIN_SECONDS if deadline is not None else None
        while True:
            if deadline is None:
                p, status = pt.wait(self.pid)
            else:
                p, status = pt.wait(self.pid, os.WNOHANG)
                if p == 0:
                    now = time.monotonic()
                    if now > deadline:
                        raise TraceeTimeout(f"tracee {self.pid}: no stop within the time bound")
                    if on_poll is not None and on_poll():
                        raise TraceeTimeout(f"tracee {self.pid}: stopped waiting ({on_poll.__name__})")
                    if pace is not None:
                        time.sleep(pace)
                    elif now > spin_until:
                        time.sleep(POLL_SLEEP)
                    continue
            if os.WIFEXITED(status) or os.WIFSIGNALED(status):
                self.alive = False
            return status

    # ---- stepping -----------------------------------------------------------------
    def step(self) -> None:
        pt.singlestep(self.pid)
        status = self._wait(None)
        while pt.stop_sig(status) == signal.SIGCHLD:
            # A fork child of ours exited: SIGCHLD is ignored (the tracee's
            # disposition), but ptrace reports even ignored signals.  The step
            # has not run yet: suppress the signal and step again.
            pt.singlestep(self.pid)
            status = self._wait(None)
        if pt.stop_sig(status) != signal.SIGTRAP:
            raise TraceeError(f"tracee {self.pid}: single step ended with status {status:#x}")

    def run_to_trap(self, seconds: float, max_syscalls: int = 10_000, on_poll=None,
                    kill_on_timeout: bool = True, pace: float | None = None) -> Stop:
        """Resume with PTRACE_SYSCALL until an int3 (or a signal, exit, or the
        time bound), recording every syscall with its arguments, its return and,
        for getrandom, the bytes the kernel wrote.  On a timeout the tracee is
        killed and reaped, unless kill_on_timeout is False (it is then left
        running for the caller to inspect and kill)."""
        deadline = time.monotonic() + seconds
        calls: list[SyscallObs] = []
        cur: SyscallObs | None = None
        sig = 0
        while True:
            pt.cont_syscall(self.pid, sig)
            sig = 0
            try:
                status = self._wait(deadline, on_poll, pace)
            except TraceeTimeout:
                if cur is not None:
                    calls.append(cur)
                if kill_on_timeout:
                    self.kill()
                return Stop("timeout", syscalls=calls)
            if os.WIFEXITED(status):
                return Stop("exited", status=os.WEXITSTATUS(status), syscalls=calls + ([cur] if cur else []))
            if os.WIFSIGNALED(status):
                return Stop("killed", sig=os.WTERMSIG(status), syscalls=calls + ([cur] if cur else []))
            s = pt.stop_sig(status)
            if s == pt.SYSCALL_STOP:
                r = self.regs()
                if cur is None:                          # entry stop: rax is -ENOSYS, orig_rax the nr
                    cur = SyscallObs(r.orig_rax, (r.rdi, r.rsi, r.rdx, r.r10, r.r8, r.r9), rip=r.rip)
                else:                                    # exit stop
                    cur.ret = _signed(r.rax)
                    if cur.nr == NR_getrandom and cur.ret > 0:
                        cur.data_addr = cur.args[0]
                        cur.data = self.read(cur.args[0], cur.ret)
                    calls.append(cur)
                    cur = None
                    if len(calls) > max_syscalls:
                        self.kill()
                        return Stop("timeout", syscalls=calls)
                continue
            if pt.stop_event(status) == pt.PTRACE_EVENT_FORK:
                # A fork the call itself made (never in getrandom): keep the child
                # stopped for the caller to reap.
                self.pending.append(pt.event_msg(self.pid))
                continue
            if s == signal.SIGTRAP:
                return Stop("trap", sig=s, syscalls=calls)
            if s == signal.SIGCHLD:                      # see step(): suppressed, harmless
                continue
            # Any other signal: report it and leave the tracee at the
            # signal-delivery stop (the caller decides to deliver or kill).
            return Stop("signal", sig=s, syscalls=calls)

    # ---- injected operations ------------------------------------------------------
    def syscall(self, nr: int, *args: int, seconds: float = 5.0) -> int:
        """Make the tracee execute `syscall` with these arguments at the gadget;
        its registers are restored afterwards."""
        saved = self.regs()
        r = saved.copy()
        r.rip = self.image.syscall_gadget
        r.rax = nr
        for name, v in zip(("rdi", "rsi", "rdx", "r10", "r8", "r9"), args):
            setattr(r, name, v & 0xFFFF_FFFF_FFFF_FFFF)
        self.set_regs(r)
        stop = self.run_to_trap(seconds)
        if stop.kind != "trap":
            raise TraceeError(f"tracee {self.pid}: injected syscall {nr} ended with {stop.kind} {stop.sig}")
        ret = _signed(self.regs().rax)
        self.set_regs(saved)
        return ret

    def load64(self, addr: int) -> int:
        """A u64 load executed by the tracee itself (load_gadget)."""
        saved = self.regs()
        r = saved.copy()
        r.rip = self.image.load_gadget
        r.rdi = addr
        self.set_regs(r)
        stop = self.run_to_trap(5.0)
        if stop.kind != "trap":
            raise TraceeError(f"tracee {self.pid}: load from {addr:#x} ended with {stop.kind} {stop.sig}")
        v = self.regs().rax
        self.set_regs(saved)
        return v

    def fork(self, seconds: float = 5.0) -> "Tracee":
        """fork() injected at the current point.  Parent and child are left
        stopped with the parent's registers from before the injection (and the
        same FPU state, which fork copies): both continue from the same point.
        The child's memory is the kernel's fork image (VM_WIPEONFORK mappings
        empty)."""
        saved = self.regs()
        r = saved.copy()
        r.rip = self.image.syscall_gadget
        r.rax = pt.NR_fork
        self.set_regs(r)
        deadline = time.monotonic() + seconds
        pt.cont(self.pid)
        status = self._wait(deadline)
        while pt.stop_sig(status) == signal.SIGCHLD:
            pt.cont(self.pid)
            status = self._wait(deadline)
        if pt.stop_event(status) != pt.PTRACE_EVENT_FORK:
            raise TraceeError(f"tracee {self.pid}: injected fork: expected a fork event, got {status:#x}")
        cpid = pt.event_msg(self.pid)
        child = Tracee(cpid, self.image)
        # The auto-attached child reports a SIGSTOP stop of its own.
        _, cstatus = pt.wait(cpid)
        if pt.stop_sig(cstatus) != signal.SIGSTOP:
            child.kill()
            raise TraceeError(f"fork child {cpid}: expected its attach SIGSTOP, got {cstatus:#x}")
        # Parent: run on to the int3 after the syscall.
        pt.cont(self.pid)
        status = self._wait(deadline)
        while pt.stop_sig(status) == signal.SIGCHLD:
            pt.cont(self.pid)
            status = self._wait(deadline)
        if pt.stop_sig(status) != signal.SIGTRAP:
            child.kill()
            raise TraceeError(f"tracee {self.pid}: after the injected fork, status {status:#x}")
        self.set_regs(saved)
        child.set_regs(saved)
        return child
