"""Setting up the process under test and making calls in it.

A *parked parent* is a tracee stopped at `serve` with everything a getrandom
caller needs: the vDSO's __vdso_getrandom resolved from the vDSO mapped in
that process (AT_SYSINFO_EHDR, its ELF dynsym), the opaque params queried
from the vDSO itself (opaque_len == ~0), a state mapping made with the
returned prot/flags (MAP_DROPPABLE, a mapping type), and buffers and a stack
already resident.  Its state was never written.  Every walker is a fork of it
that then makes the warm calls: a fork child's droppable state starts empty
(VM_WIPEONFORK), exactly like a fresh mmap, so the walker's history is a
fresh process's history.
"""
from __future__ import annotations

import os
import signal
import struct
from dataclasses import dataclass

import emulator.twin.ptrace as pt
from emulator.twin.errors import TwinError, TwinUnavailable
from emulator.twin.records import NativeCall
from emulator.twin.tracee import Tracee
from emulator.twin.tracee_image import BUFFERS, DATA_BASE, DATA_SIZE, FN_SLOT, PARAMS, TraceeImage, build
from vdso.abi import PARAMS_SIZE, STATE_SIZE, OpaqueParams
from vdso.elf_image import GETRANDOM_SYMBOL, load_elf_bytes
from vdso.errors import ImageError
from vdso.image import PAGE_SIZE

PLACEMENTS = {"start": 0, "end": PAGE_SIZE - STATE_SIZE, "straddle": PAGE_SIZE - STATE_SIZE // 2}
AT_SYSINFO_EHDR = 33
STATE_MAP_PAGES = 2               # room for a state straddling two pages
STACK_GAP = 0x4000                # the calls run this far below the exec-time stack pointer
STACK_RESIDENT = 0x4000           # ... with this much stack below that made resident first
NR_rt_sigaction = 13
NR_prctl = 157
PR_SET_NAME = 15
SIG_IGN = 1
SA_RESTORER = 0x04000000
MAP_FAILED_LIMIT = -4096


@dataclass(frozen=True)
class TwinConfig:
    size: int
    placement: str = "start"      # start | end | straddle (where the state sits in its page)
    calls_before: int = 1         # warm calls before the swept one
    flags: int = 0
    after: int = 1                # further calls after the swept one, in every process
    warm_size: int | None = None  # size of the warm calls (None: size)
    nested_size: int | None = None  # size of a re-entered (signal handler's) call (None: size)
    after_size: int | None = None   # size of the further calls (None: size)
    seconds: float = 5.0          # bound on one resumed stretch (a call, an injected syscall)
    step_limit: int = 2_000_000   # bound on single steps for one call

    def __post_init__(self):
        if self.placement not in PLACEMENTS:
            raise TwinError(f"placement {self.placement!r}: one of {', '.join(PLACEMENTS)}")
        limit = (DATA_SIZE - (BUFFERS - DATA_BASE)) // 2 - PAGE_SIZE
        for what in ("size", "warm_size", "nested_size", "after_size"):
            v = getattr(self, what)
            if v is not None and not 0 <= v <= limit:
                raise TwinError(f"{what} {v}: the tracee's buffers hold at most {limit} bytes")

    @property
    def max_size(self) -> int:
        return max(v for v in (self.size, self.warm_size, self.nested_size, self.after_size) if v is not None)


@dataclass(frozen=True)
class Layout:
    """Addresses in the tracee (the same in every fork of the parked parent)."""
    vdso_base: int
    vdso_size: int
    func: int                     # __vdso_getrandom
    rng_data: int                 # struct vdso_rng_data (generation u64, is_ready u8)
    state_map: int                # the droppable mapping
    state_map_len: int
    state: int
    buffer: int                   # the caller's buffer (every call of the caller)
    hbuffer: int                  # a signal handler's buffer (reenter)
    rsp: int                      # rsp at call_site: 16-aligned, so (rsp at entry + 8) % 16 == 0
    params: OpaqueParams

    def state_pages(self) -> list[int]:
        first = self.state & ~(PAGE_SIZE - 1)
        last = (self.state + STATE_SIZE - 1) & ~(PAGE_SIZE - 1)
        return list(range(first, last + PAGE_SIZE, PAGE_SIZE))


def check_ptrace() -> None:
    """Raise TwinUnavailable with a one-line reason if this process cannot
    trace a child (seccomp, a container without CAP_SYS_PTRACE under Yama 3)."""
    scope = "/proc/sys/kernel/yama/ptrace_scope"
    if os.path.exists(scope) and open(scope).read().strip() == "3":
        raise TwinUnavailable("native twin: ptrace is disabled (kernel.yama.ptrace_scope = 3)")
    try:
        t = Tracee.spawn(build())
    except (OSError, TwinError) as e:
        raise TwinUnavailable(f"native twin: cannot trace a child here ({e})") from None
    t.kill()


def _vdso_range(pid: int) -> tuple[int, int]:
    with open(f"/proc/{pid}/maps") as f:
        for line in f:
            if line.rstrip().endswith("[vdso]"):
                lo, hi = (int(x, 16) for x in line.split()[0].split("-"))
                return lo, hi
    raise TwinUnavailable("native twin: the tracee has no [vdso] mapping")


def resolve_vdso(t: Tracee) -> tuple[int, int, int, bytes]:
    """(vDSO base, __vdso_getrandom, vdso_rng_data, the vDSO's bytes) in the
    tracee, from its own auxv and the vDSO mapped in it."""
    base = t.auxv().get(AT_SYSINFO_EHDR, 0)
    if not base:
        raise TwinUnavailable("native twin: the tracee has no vDSO (AT_SYSINFO_EHDR is 0)")
    lo, hi = _vdso_range(t.pid)
    if lo != base:
        raise TwinError(f"tracee {t.pid}: AT_SYSINFO_EHDR {base:#x} is not the [vdso] mapping at {lo:#x}")
    raw = t.read(lo, hi - lo)
    try:
        img = load_elf_bytes(raw, "host (tracee)")
    except ImageError as e:
        raise TwinUnavailable(f"native twin: {e}") from None
    return base, base + img.symbols[GETRANDOM_SYMBOL], base + img.rng_data_offset, raw


class Caller:
    """Makes calls in a tracee the way a C caller would: registers zeroed
    except the arguments (deterministic entry), rsp at the layout's stack."""

    def __init__(self, image: TraceeImage, layout: Layout, cfg: TwinConfig):
        self.image = image
        self.layout = layout
        self.cfg = cfg

    def args(self, buffer: int | None = None, size: int | None = None) -> tuple[int, ...]:
        L = self.layout
        return (L.buffer if buffer is None else buffer, self.cfg.size if size is None else size, self.cfg.flags,
                L.state, L.params.size_of_opaque_state)

    def enter(self, t: Tracee, args: tuple[int, ...]) -> None:
        """Registers for a call from call_site (the `call` not yet executed)."""
        r = t.regs()
        for name in ("r15", "r14", "r13", "r12", "rbp", "rbx", "r11", "r10", "r9", "r8", "rax", "rcx", "rdx",
                     "rsi", "rdi"):
            setattr(r, name, 0)
        for name, v in zip(("rdi", "rsi", "rdx", "rcx", "r8", "r9"), args):
            setattr(r, name, v & 0xFFFF_FFFF_FFFF_FFFF)
        r.rsp = self.layout.rsp
        r.rip = self.image.call_site
        t.set_regs(r)

    def state_bytes(self, t: Tracee) -> bytes:
        """The state's bytes, read without changing the tracee: a page with no
        PTE is zeros by definition (anonymous memory) and is not read, since
        process_vm_readv would fault the shared zero page in (a dropped page
        would then differ from a reclaimed one in how its next write faults)."""
        out = b""
        addr, end = self.layout.state, self.layout.state + STATE_SIZE
        while addr < end:
            chunk = min(end, (addr & ~(PAGE_SIZE - 1)) + PAGE_SIZE) - addr
            out += t.read(addr, chunk) if t.page_present(addr) else bytes(chunk)
            addr += chunk
        return out

    def finish(self, t: Tracee, label: str, role: str, buffer: int | None = None,
               state_before: bytes | None = None, prior: list | None = None, size: int | None = None,
               **run_kw) -> NativeCall:
        """Run a started call (at call_site or anywhere inside it) to the int3
        after its return, and record it.  run_kw go to Tracee.run_to_trap."""
        buf = self.layout.buffer if buffer is None else buffer
        stop = t.run_to_trap(self.cfg.seconds, **run_kw)
        c = NativeCall(label, role, self.cfg.size if size is None else size, "returned", buffer=buf,
                       state=self.layout.state,
                       state_before=state_before, syscalls=list(prior or []) + stop.syscalls)
        return self.conclude(t, c, stop, after_addr=self.image.after_call)

    def conclude(self, t: Tracee, c: NativeCall, stop, after_addr: int) -> NativeCall:
        if stop.kind == "trap":
            r = t.regs()
            if r.rip != after_addr + 1:
                c.outcome, c.detail = "signal", f"SIGTRAP at {r.rip - 1:#x}, not at the return"
                c.signal = signal.SIGTRAP
                return c
            ret = r.rax - (1 << 64) if r.rax >> 63 else r.rax
            c.ret = ret
            if ret > 0:
                c.output = t.read(c.buffer, min(ret, c.size))
            c.state_after = self.state_bytes(t)
            return c
        c.outcome, c.signal = stop.kind, stop.sig
        if stop.kind == "signal":
            c.detail = f"{signal.Signals(stop.sig).name} at {t.regs().rip:#x}"
        return c

    def call(self, t: Tracee, label: str, role: str, buffer: int | None = None, size: int | None = None,
             **run_kw) -> NativeCall:
        before = self.state_bytes(t)
        self.enter(t, self.args(buffer, size))
        return self.finish(t, label, role, buffer, before, size=size, **run_kw)


class Parked:
    """The parked parent (see the module docstring).  Close it (or use it as
    a context manager) to kill and reap it."""

    def __init__(self, cfg: TwinConfig):
        self.cfg = cfg
        self.image = build()
        self.t = Tracee.spawn(self.image)
        try:
            self.layout = self._set_up()
        except BaseException:
            self.t.kill()
            raise
        self.caller = Caller(self.image, self.layout, cfg)

    def __enter__(self) -> "Parked":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self.t.kill()

    def _set_up(self) -> Layout:
        t, img, cfg = self.t, self.image, self.cfg
        base, func, rng, self.vdso_text = resolve_vdso(t)
        t.write(FN_SLOT, func.to_bytes(8, "little"))
        exec_rsp = t.regs().rsp
        rsp = (exec_rsp - STACK_GAP) & ~0xF
        # Resident stack below rsp (a nested call runs some 1.2 KiB further down)
        # and resident buffers: first touches are not what is under test.
        t.write(rsp - STACK_RESIDENT, bytes(STACK_RESIDENT))
        # A recognisable name in ps and in OOM reports (exec through a memfd's
        # /proc/self/fd/N named it "N").
        t.write(PARAMS + 0x200, b"faultpath-twin\0")
        t.syscall(NR_prctl, PR_SET_NAME, PARAMS + 0x200)
        # SIGCHLD ignored: the kernel then reaps this process's fork children
        # itself once we, their tracer, have collected them.
        act = struct.pack("<QQQQ", SIG_IGN, SA_RESTORER, 0, 0)
        t.write(PARAMS + 0x100, act)
        ret = t.syscall(NR_rt_sigaction, signal.SIGCHLD, PARAMS + 0x100, 0, 8)
        if ret != 0:
            raise TwinError(f"tracee {t.pid}: rt_sigaction(SIGCHLD, SIG_IGN) = {ret}")
        # The params query: (NULL, 0, 0, &params, ~0).
        vsize = len(self.vdso_text)
        probe = Layout(base, vsize, func, rng, 0, 0, 0, 0, 0, rsp, OpaqueParams(STATE_SIZE, 3, 0x28, (0,) * 13))
        q = Caller(img, probe, cfg)
        q.enter(t, (0, 0, 0, PARAMS, 0xFFFF_FFFF_FFFF_FFFF))
        stop = t.run_to_trap(cfg.seconds)
        r = t.regs()
        if stop.kind != "trap" or r.rip != img.after_call + 1 or r.rax != 0:
            raise TwinError(f"tracee {t.pid}: the params query failed ({stop.kind}, rax {r.rax:#x})")
        params = OpaqueParams.unpack(t.read(PARAMS, PARAMS_SIZE))
        length = STATE_MAP_PAGES * PAGE_SIZE
        state_map = t.syscall(pt.NR_mmap, 0, length, params.mmap_prot, params.mmap_flags,
                              0xFFFF_FFFF_FFFF_FFFF, 0)
        if MAP_FAILED_LIMIT < state_map < 0:
            raise TwinError(f"tracee {t.pid}: mmap(state, prot {params.mmap_prot:#x}, flags "
                            f"{params.mmap_flags:#x}) = {state_map}")
        span = max(cfg.max_size, 1) + PAGE_SIZE - 1 & ~(PAGE_SIZE - 1)
        buffer = BUFFERS
        hbuffer = BUFFERS + span
        t.write(buffer, bytes(2 * span))
        return Layout(base, vsize, func, rng, state_map, length, state_map + PLACEMENTS[cfg.placement], buffer, hbuffer,
                      rsp, params)

    def fork(self) -> Tracee:
        return self.t.fork(self.cfg.seconds)

    def generation(self, t: Tracee | None = None) -> int:
        """vdso_rng_data.generation, loaded by the tracee itself."""
        return (t or self.t).load64(self.layout.rng_data)

    def is_ready(self, t: Tracee | None = None) -> bool:
        return bool((t or self.t).load64(self.layout.rng_data + 8) & 0xFF)

    def walker(self) -> tuple[Tracee, list[NativeCall]]:
        """A fork of the parked parent that has made the warm calls and stands
        at call_site with the swept call's arguments set (its `call` not yet
        executed).  Returns it with the warm calls' records."""
        t = self.fork()
        try:
            warm = [self.caller.call(t, f"call {k + 1} [parent]", "warm", size=self.cfg.warm_size)
                    for k in range(self.cfg.calls_before)]
            for c in warm:
                if c.outcome != "returned":
                    raise TwinError(f"warm {c.label}: {c.outcome} {c.detail}")
            self.caller.enter(t, self.caller.args())
        except BaseException:
            t.kill()
            raise
        return t, warm


def host_generation_reader():
    """A function returning vdso_rng_data.generation as this process sees it
    (the vvar page is one kernel page mapped into every process, so the
    tracer can watch the global generation without stopping anyone)."""
    import ctypes

    from vdso.elf_image import load_host
    libc = ctypes.CDLL(None)
    libc.getauxval.restype = ctypes.c_ulong
    libc.getauxval.argtypes = [ctypes.c_ulong]
    base = libc.getauxval(33)
    if not base:
        raise TwinUnavailable("native twin: this process has no vDSO")
    addr = base + load_host().rng_data_offset
    word = ctypes.c_uint64.from_address(addr)
    return lambda: word.value
