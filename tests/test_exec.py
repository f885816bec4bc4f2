"""`faultpath exec`: real glibc 2.41 programs in the emulated machine, held to
what they do natively.

The programs are tests/clients/*.c built against Debian 13's glibc 2.41
(`make glibc`); natively they run under strace -f on this machine's kernel
with GLIBC_TUNABLES masking what the emulated CPU lacks (emulator/cpuid.py:
no AVX, no SSE4.2), so that both glibcs choose alike.  Both syscall
sequences are normalised the same way (emulator/exec/strace.py) and must be
equal line for line; where the emulator legitimately differs, the test says
which line and why.
"""
from __future__ import annotations

import os
import re

import pytest

from exec_helpers import glibc_programs
from emulator.exec import strace
from emulator.exec.native import differences, native_env, run_native
from emulator.exec.run import run_program
from emulator.execve import ExecConfig
from mm import flags as F
from vdso.loader import load_image

pytestmark = pytest.mark.skipif(os.uname().machine != "x86_64", reason="x86-64 programs")

needs_strace = pytest.mark.skipif(not strace.have_strace(),
                                  reason="strace not found: the native syscall sequence needs it")

LOOP_OK = "calls={n} bytes={b} short=0 failed=0 zero_words=0\n"
U64 = (1 << 64) - 1


@pytest.fixture(scope="module")
def progs():
    return glibc_programs()


@pytest.fixture(scope="module")
def image():
    return load_image("builtin")


_RUNS: dict = {}


def emulate(progs, image, name: str, *args, inject=(), watch=False, seed=0):
    """One emulated run per distinct request, shared by the tests of this module."""
    key = (name, args, tuple(inject), watch, seed)
    if key not in _RUNS:
        cfg = ExecConfig(image=image, program=str(progs[name]), args=[str(a) for a in args], seed=seed,
                         passthrough=False)
        _RUNS[key] = (cfg, run_program(cfg, inject, watch_vdso=watch))
    return _RUNS[key][1]


_NATIVE: dict = {}


def native(progs, image, name: str, *args):
    from vdso.elf_image import host_has_vgetrandom
    if not host_has_vgetrandom():
        pytest.skip("the running kernel's vDSO has no __vdso_getrandom: native glibc would make a syscall per call")
    key = (name, args)
    if key not in _NATIVE:
        cfg = ExecConfig(image=image, program=str(progs[name]), args=[str(a) for a in args])
        _NATIVE[key] = run_native(cfg)
    return _NATIVE[key]


def getrandom_syscalls(trace, pid=None):
    return [tuple(e.args.split(", ")[1:]) + (e.ret,) for e in trace.calls("getrandom", pid)]


# ------------------------------------------------------------------ static
def test_static_program_runs_to_exit_group(progs, image):
    r = emulate(progs, image, "getrandom_loop_static", 20)
    assert r.main.outcome == "exit" and r.main.exit_code == 0, r.main.detail
    assert r.stdout.decode() == LOOP_OK.format(n=20, b=20 * 64)
    # libc.a never binds the vDSO (it queries its params before it has the
    # pointer): a syscall per call, plus malloc's tcache key.
    assert getrandom_syscalls(r.trace) == [("8", "GRND_NONBLOCK", "8")] + [("64", "0", "64")] * 20
    assert r.trace.calls("exit_group") and not r.main.unimplemented and not r.main.refusals


@needs_strace
def test_static_program_sequence_equals_native(progs, image):
    r = emulate(progs, image, "getrandom_loop_static", 20)
    nat = native(progs, image, "getrandom_loop_static", 20)
    assert nat.stdout == r.stdout.decode()
    assert differences(nat, r.trace) == []


# ------------------------------------------------------------------ the 1000-call loop
def test_dynamic_loop_runs_to_exit_group(progs, image):
    r = emulate(progs, image, "getrandom_loop", 1000, watch=True)
    assert r.main.outcome == "exit" and r.main.exit_code == 0, r.main.detail
    assert r.stdout.decode() == LOOP_OK.format(n=1000, b=64000)
    assert r.exit_status() == 0


def test_dynamic_loop_binds_the_vdso_through_auxv(progs, image):
    """glibc's loader found __vdso_getrandom@LINUX_2.6 in the image at
    AT_SYSINFO_EHDR: 1001 calls enter it (the params query, then 1000), each
    with its 5 arguments, the state being the last of the page's 21."""
    r = emulate(progs, image, "getrandom_loop", 1000, watch=True)
    calls = r.vdso_calls
    assert len(calls) == 1001
    buf, ln, flags, state, opaque_len = calls[0].args
    assert (buf, ln, flags, opaque_len) == (0, 0, 0, U64)          # the params query
    states = {c.args[3] for c in calls[1:]}
    assert len(states) == 1
    st = states.pop()
    mapping = int(r.main.droppable_mmaps[0]["addr"], 16)
    assert st == mapping + 0xF00                                    # 21 states of 192 bytes: the last
    assert {(c.args[1], c.args[2], c.args[4]) for c in calls[1:]} == {(64, 1, 144)}   # flags | GRND_NONBLOCK


def test_thousand_calls_make_two_getrandom_syscalls(progs, image):
    """One reseed of the state's key by the vDSO, one 8-byte GRND_NONBLOCK
    for malloc's tcache key (a direct syscall, never the vDSO)."""
    r = emulate(progs, image, "getrandom_loop", 1000, watch=True)
    assert getrandom_syscalls(r.trace) == [("32", "0", "32"), ("8", "GRND_NONBLOCK", "8")]


@needs_strace
def test_thousand_calls_as_many_getrandom_syscalls_as_natively(progs, image):
    r = emulate(progs, image, "getrandom_loop", 1000, watch=True)
    nat = native(progs, image, "getrandom_loop", 1000)
    assert getrandom_syscalls(r.trace) == getrandom_syscalls(nat) and len(getrandom_syscalls(nat)) == 2


@needs_strace
def test_dynamic_loop_sequence_equals_native(progs, image):
    r = emulate(progs, image, "getrandom_loop", 1000, watch=True)
    nat = native(progs, image, "getrandom_loop", 1000)
    assert nat.stdout == r.stdout.decode()
    assert differences(nat, r.trace) == [], strace.render(r.trace)
    # The emulated CPU has no SSE4.2, so no x86-64-v2 hwcaps directory is
    # searched; natively the tunable masks the same feature.
    assert not any("glibc-hwcaps" in e.args for e in r.trace.syscalls())
    assert native_env(ExecConfig(image=image, program="x"))["GLIBC_TUNABLES"] == "glibc.cpu.hwcaps=-AVX,-SSE4_2"


def test_state_mapping_is_droppable_with_the_vdso_params(progs, image):
    """glibc mmaps its states with exactly the prot and flags the vDSO's
    params query answers, and mm makes the VMA droppable."""
    from emulator.kernel import Kernel
    from emulator.layout import install_kernel_mappings, place_image
    from emulator.libc import VgetrandomCaller
    from emulator.machine import Machine
    kernel = Kernel(place_image(image))
    m = Machine(kernel)
    install_kernel_mappings(m.mm, kernel)
    params = VgetrandomCaller(m).params
    r = emulate(progs, image, "getrandom_loop", 1000, watch=True)
    (d,) = r.main.droppable_mmaps
    assert (d["length"], d["prot"], d["flags"]) == (4096, params.mmap_prot, params.mmap_flags)
    assert (params.mmap_prot, params.mmap_flags & F.MAP_TYPE) == (F.PROT_READ | F.PROT_WRITE, F.MAP_DROPPABLE)
    assert d["vm_flags"].split() == ["rd", "wr", "mr", "mw", "me", "nr", "wf", "dd", "dp"]
    assert [v["flags"] for v in r.main.droppable_vmas] == [d["vm_flags"]]


def test_same_seed_same_run_other_seed_other_bytes(progs, image):
    """Determinism: the same seed gives the same AT_RANDOM, the same
    getrandom bytes and the same trace, raw addresses and all."""
    a = emulate(progs, image, "getrandom_loop_static", 3, seed=0)
    cfg = ExecConfig(image=image, program=str(progs["getrandom_loop_static"]), args=["3"], passthrough=False)
    b = run_program(cfg)
    c = emulate(progs, image, "getrandom_loop_static", 3, seed=7)
    raw = [e.raw for e in a.trace.syscalls()]
    assert raw == [e.raw for e in b.trace.syscalls()]
    assert a.system.first().image.random_bytes == b.system.first().image.random_bytes
    assert a.main.instructions == b.main.instructions and a.main.cycles == b.main.cycles
    assert raw != [e.raw for e in c.trace.syscalls()]          # the getrandom bytes differ
    assert a.system.first().image.random_bytes != c.system.first().image.random_bytes


# ------------------------------------------------------------------ fork
def test_fork_child_reseeds_its_wiped_state(progs, image):
    """VM_WIPEONFORK: the child's state page is zeros, so its first call
    sees generation 0 and reseeds (one 32-byte syscall, no mmap); the
    parent's state survives and makes no syscall after the fork."""
    r = emulate(progs, image, "getrandom_fork", 100)
    out = r.stdout.decode().splitlines()
    assert out == ["before_fork: calls=100 bytes=6400 short=0 failed=0 zero_words=0",
                   "child: calls=100 bytes=6400 short=0 failed=0 zero_words=0",
                   "parent: child_exit=0 same_first_block=0",
                   "after_fork: calls=100 bytes=6400 short=0 failed=0 zero_words=0"]
    assert len(r.processes) == 2 and r.processes[1].ppid == r.processes[0].pid
    assert getrandom_syscalls(r.trace, 1) == [("32", "0", "32")]
    assert not r.trace.calls("mmap", 1)
    parent = r.trace.syscalls(0)
    after = parent[[e.name for e in parent].index("clone") + 1:]
    assert not [e for e in after if e.name == "getrandom"]
    assert r.processes[1].droppable_vmas            # inherited: VM_DROPPABLE survives fork


@needs_strace
def test_fork_sequences_equal_native_but_for_sigchld(progs, image):
    r = emulate(progs, image, "getrandom_fork", 100)
    nat = native(progs, image, "getrandom_fork", 100)
    assert nat.stdout == r.stdout.decode()
    diffs = differences(nat, r.trace)
    # The only difference: strace's own line for SIGCHLD.  Untraced, the
    # kernel discards a signal whose action is the default "ignore" when it
    # is generated (sig_ignored()); under ptrace it queues it for the
    # tracer, which is the only reason the native trace has the line.
    assert [(pid, row.mark, row.native.split(" {")[0]) for pid, row in diffs] == [(0, "<", "--- SIGCHLD")]
    assert (r.system.first().pid, "SIGCHLD") in r.ignored_signals


# ------------------------------------------------------------------ signals
@needs_strace
@pytest.mark.parametrize("mode", ["raise", "segv", "segv-drop"])
def test_signal_program_equals_native(progs, image, mode):
    """raise: the handler's call between two calls goes through the vDSO.
    segv: the vDSO faults with the state reserved; the handler's nested call
    takes the syscall.  segv-drop: the handler also drops the state page;
    the interrupted call then reseeds.  The one legitimate difference: the
    program reads /proc/self/smaps 1 KiB at a time, and the emulated smaps
    (mm's view of the emulated process) is not the native text, so the
    number and sizes of those reads differ."""
    r = emulate(progs, image, "getrandom_signal", mode, 100, 50)
    nat = native(progs, image, "getrandom_signal", mode, 100, 50)
    assert nat.stdout == r.stdout.decode() and r.main.exit_code == 0
    for pid, row in differences(nat, r.trace):
        assert pid == 0 and (row.native or "read(3,").startswith("read(3,") \
            and (row.emulated or "read(3,").startswith("read(3,"), row
    sig = [e for e in r.trace.processes[0] if e.kind == "signal"]
    assert [e.name for e in sig] == ["SIGUSR1" if mode == "raise" else "SIGSEGV"]
    tail = getrandom_syscalls(r.trace)[2:]
    assert tail == {"raise": [], "segv": [("64", "0", "64")],
                    "segv-drop": [("64", "0", "64"), ("32", "0", "32")]}[mode]


# ------------------------------------------------------------------ injection
def test_injected_drop_in_a_vdso_call_causes_a_reseed(progs, image):
    """drop@getrandom#3:120: every droppable page is reclaimed at
    instruction 120 of the third __vdso_getrandom call (the params query is
    call 1).  The state then reads zeros: the call notices the generation
    change and reseeds with one more getrandom(32), and no caller sees a
    zero word."""
    plain = emulate(progs, image, "getrandom_loop", 10, watch=True)
    r = emulate(progs, image, "getrandom_loop", 10, inject=("drop@getrandom#3:120",))
    assert r.stdout.decode() == LOOP_OK.format(n=10, b=640)
    (inj,) = r.injections
    assert inj["where"] == "getrandom call 3"
    call3 = plain.vdso_calls[2]
    assert inj["index"] == call3.index + 120
    assert getrandom_syscalls(r.trace) == [("32", "0", "32"), ("32", "0", "32"), ("8", "GRND_NONBLOCK", "8")]
    rs = [e for e in r.system.first().ctx.result.syscalls if e.name == "getrandom"]
    assert rs[1].index > inj["index"] and rs[1].args[0] == int(plain.main.droppable_mmaps[0]["addr"], 16) + 0xF60


def test_injected_signal_reenters_through_glibcs_guard(progs, image):
    """signal:SIGUSR1 in the middle of a vDSO call: the program's handler
    calls getrandom while glibc holds the state reserved in the TCB, so the
    nested call is a syscall, and the interrupted call completes."""
    r = emulate(progs, image, "getrandom_signal", "raise", 10, 5, inject=("signal:SIGUSR1@getrandom#5:60",))
    out = r.stdout.decode().splitlines()
    assert out == ["mode=raise calls=10 bytes=640 short=0 failed=0 zero_words=0",
                   "handler: calls=2 bytes=128 short=0 failed=0 zero_words=0"]
    ev = [str(e) for e in r.trace.processes[0]]
    i = next(k for k, e in enumerate(ev) if e.startswith("--- SIGUSR1 {si_signo=SIGUSR1, si_code=SI_KERNEL}"))
    assert re.match(r"getrandom\(BUF, 64, 0\) = 64", ev[i + 1]) and ev[i + 2].startswith("rt_sigreturn(")


def test_injected_fork_at_a_symbol(progs, image):
    """fork@sym:__libc_early_init: a copy of the process at that function's
    first instruction; both run to the end and print.  Every arrival there
    forks, and there is one: the first instruction's copy-on-write fault
    (the fork write-protected the stack) re-executes it, which is not a new
    arrival, and neither is the child resuming at it."""
    r = emulate(progs, image, "getrandom_loop", 5, inject=("fork@sym:__libc_early_init",))
    assert len(r.processes) == 2 and [p.exit_code for p in r.processes] == [0, 0]
    assert r.stdout.decode() == LOOP_OK.format(n=5, b=320) * 2
    (inj,) = r.injections
    assert inj["where"] == "__libc_early_init #1" and inj["child"] == r.processes[1].pid


def test_injected_oom_at_a_syscall(progs, image):
    """oom@syscall:mmap#1: from the first mmap on, no frame can be had; the
    loader's first write to a fresh page is an OOM kill (not droppable)."""
    r = emulate(progs, image, "getrandom_loop", 5, inject=("oom@syscall:mmap#1",))
    assert r.main.outcome == "killed" and "OOM kill" in r.main.detail
    assert r.exit_status() == 128 + 9


# ------------------------------------------------------------------ threads
def test_thread_clone_is_refused_with_a_record(progs, image):
    r = emulate(progs, image, "thread_create")
    assert r.stdout.decode() == "pthread_create=22 (Invalid argument)\n"
    (name, why, ret), = r.main.refusals
    assert (name, ret) == ("clone3", -22) and "CLONE_THREAD" in why
    assert r.trace.calls("clone3")[0].ret.startswith("-1 EINVAL")


def test_auxv_as_glibc_parsed_it(progs, image):
    """AT_RANDOM is the kernel's seeded 16 bytes on the stack; AT_SYSINFO_EHDR
    the image's ELF header; AT_MINSIGSTKSZ the FXSAVE frame's size."""
    from emulator import binfmt_elf as B
    r = emulate(progs, image, "getrandom_loop", 1000, watch=True)
    p = r.system.first()
    aux = dict(p.image.auxv)
    assert aux[B.AT_SYSINFO_EHDR] == image.base and aux[B.AT_PAGESZ] == 4096 and aux[B.AT_SECURE] == 0
    assert aux[B.AT_HWCAP] == 0x178BFBFF and aux[B.AT_HWCAP2] == 0 and aux[B.AT_MINSIGSTKSZ] == 1040
    assert aux[B.AT_BASE] == p.image.interp_base and aux[B.AT_ENTRY] == p.image.entry
    assert aux[B.AT_PHNUM] == p.image.program.phnum and aux[B.AT_PHENT] == 56


@pytest.mark.parametrize("mode,line", [("restart", "read=0 errno=0 handled=1"),
                                       ("norestart", "read=-1 errno=EINTR handled=1")])
def test_signal_interrupting_a_blocked_read(progs, image, mode, line):
    """The parent sleeps in read() of an empty pipe; its child's kill wakes
    it into the handler.  With SA_RESTART the read runs again (and sees end
    of file: the child has exited); without, it fails with EINTR."""
    r = emulate(progs, image, "sigrestart", mode)
    assert r.stdout.decode() == line + "\n" and [p.exit_code for p in r.processes] == [0, 0]
    ev = [str(e) for e in r.trace.processes[0]]
    i = next(k for k, e in enumerate(ev) if e.startswith("--- SIGUSR1 {si_signo=SIGUSR1, si_code=SI_USER"))
    assert ev[i + 1].startswith("rt_sigreturn(")
    assert ev[i + 2].startswith("read(3, BUF, 1) = 0") == (mode == "restart")
