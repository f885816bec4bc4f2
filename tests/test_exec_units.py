"""`faultpath exec`'s parts, one at a time: the initial stack and auxv
(against what this machine's kernel gives the same program), -ENOSYS
records, the signal frame's round trip, the CPU model as glibc's own loader
reads it, the read policy, and strace's notation.

auxv_probe (tests/clients/auxv_probe.c) needs no libc: host gcc builds it
with -nostdlib -static, so these tests need gcc, not the glibc cache."""
from __future__ import annotations

import os
import random
import subprocess

import pytest

from emulator import binfmt_elf as B
from exec_helpers import build_auxv_probe, glibc_programs
from emulator.execve import ExecConfig, boot
from emulator.exec.run import run_program
from vdso.loader import load_image

pytestmark = pytest.mark.skipif(os.uname().machine != "x86_64", reason="x86-64 programs")


@pytest.fixture(scope="module")
def image():
    return load_image("builtin")


@pytest.fixture(scope="module")
def probe(tmp_path_factory) -> str:
    return build_auxv_probe(tmp_path_factory.mktemp("probe"))


def _parse(text: str) -> dict:
    d: dict = {"aux": [], "argv": [], "env": []}
    for line in text.splitlines():
        key, _, val = line.partition(" ")
        if key == "aux":
            t, v = val.split()
            d["aux"].append((int(t), int(v)))
        elif key in ("argv", "env"):
            d[key].append(val)
        else:
            d[key] = val
    return d


ENV = ["PATH=/usr/bin:/bin", "FAULTPATH_PROBE=1"]


@pytest.fixture(scope="module")
def emulated(probe, image):
    cfg = ExecConfig(image=image, program=probe, args=["one", "two words"], env=ENV, seed=3, passthrough=False)
    return run_program(cfg)


def test_probe_stack_and_auxv_as_the_kernel_lays_them_out(probe, emulated):
    """Same program natively: the same argc/argv/envp, the same auxv types in
    the same order, and the same values wherever the machine does not
    differ (the CPU model's HWCAP2 and signal-frame size do, on purpose)."""
    nat = subprocess.run([probe, "one", "two words"], capture_output=True, text=True,
                         env=dict(e.split("=", 1) for e in ENV))
    assert nat.returncode == 7 and emulated.exit_status() == 7
    n, e = _parse(nat.stdout), _parse(emulated.stdout.decode())
    assert e["sp_mod16"] == n["sp_mod16"] == "0"
    assert (e["argc"], e["argv"], e["env"]) == (n["argc"], n["argv"], n["env"]) == ("3", [probe, "one", "two words"],
                                                                                   ENV)
    assert [t for t, _ in e["aux"]] == [t for t, _ in n["aux"]]
    na, ea = dict(n["aux"]), dict(e["aux"])
    same = (B.AT_PAGESZ, B.AT_CLKTCK, B.AT_PHDR, B.AT_PHENT, B.AT_PHNUM, B.AT_BASE, B.AT_FLAGS, B.AT_ENTRY,
            B.AT_SECURE, B.AT_RSEQ_FEATURE_SIZE, B.AT_RSEQ_ALIGN, B.AT_HWCAP)
    assert {t: ea[t] for t in same} == {t: na[t] for t in same}
    assert ea[B.AT_HWCAP2] == 0 and ea[B.AT_MINSIGSTKSZ] == 1040       # no FSGSBASE, an FXSAVE frame
    assert e["execfn"] == n["execfn"] == probe and e["platform"] == n["platform"] == "x86_64"
    assert e["vdso_magic"] == n["vdso_magic"] == "7f454c46"


def test_probe_strings_are_where_exec_puts_them(emulated):
    """The file name at the very top (below a null word), AT_RANDOM's 16
    bytes right below the platform string."""
    from emulator.layout import STACK_TOP
    e = dict(_parse(emulated.stdout.decode())["aux"])
    assert e[B.AT_EXECFN] + len(emulated.config["program"]) + 1 == STACK_TOP - 8
    assert e[B.AT_RANDOM] == e[B.AT_PLATFORM] - 16


def test_at_random_follows_the_seed(probe, image, emulated):
    again = run_program(ExecConfig(image=image, program=probe, args=["one", "two words"], env=ENV, seed=3,
                                   passthrough=False))
    other = run_program(ExecConfig(image=image, program=probe, args=["one", "two words"], env=ENV, seed=4,
                                   passthrough=False))
    r = [_parse(x.stdout.decode())["random"] for x in (emulated, again, other)]
    assert r[0] == r[1] != r[2]


def test_unimplemented_syscall_is_enosys_and_listed(emulated):
    assert _parse(emulated.stdout.decode())["enosys"] == "-38"
    assert emulated.main.unimplemented == {"getpriority": 1}
    assert emulated.trace.calls("getpriority")[0].ret == "-1 ENOSYS (Function not implemented)"


def test_signal_frame_round_trip(probe, image):
    """setup_rt_frame then rt_sigreturn gives back every register, the
    flags, the SSE state and the mask; the handler starts with the frame
    at rsp = 8 mod 16, rdi/rsi/rdx = signo/&info/&uc and a clean FPU."""
    from unicorn import x86_const as X
    from emulator.sigframe import MCONTEXT, SIGINFO
    from emulator.signal import SA_RESTORER, SA_SIGINFO, KSignal, SigAction, handle_signal, restore_sigframe
    from emulator.sigframe import Siginfo
    system = boot(ExecConfig(image=image, program=probe, passthrough=False))
    p = system.first()
    rng = random.Random(5)
    names = ["RAX", "RBX", "RCX", "RDX", "RSI", "RDI", "RBP", "R8", "R9", "R10", "R11", "R12", "R13", "R14", "R15"]
    before = {n: rng.getrandbits(64) for n in names}
    for n, v in before.items():
        p.set_reg(n, v)
    xmm = [rng.getrandbits(128) for _ in range(16)]
    for i, v in enumerate(xmm):
        p.uc.reg_write(getattr(X, f"UC_X86_REG_XMM{i}"), v)
    p.uc.reg_write(X.UC_X86_REG_MXCSR, 0x3F80)
    p.uc.reg_write(X.UC_X86_REG_RFLAGS, 0x8D7)
    rsp = p.reg("RSP") - 0x1000
    p.set_reg("RSP", rsp)
    p.sig.blocked = 1 << 1                     # SIGINT blocked at the interruption
    ctx = p.ctx
    rip = ctx.rip
    act = SigAction(handler=0x401000, flags=SA_RESTORER | SA_SIGINFO, restorer=0x402000)
    assert handle_signal(p, ctx, KSignal(10, Siginfo(10, 0, pid=1, uid=2)), act)
    frame = p.reg("RSP")
    assert frame % 16 == 8 and frame < rsp - 128
    assert (p.reg("RDI"), p.reg("RSI"), p.reg("RDX"), p.reg("RAX")) == (10, frame + SIGINFO, frame + 8, 0)
    assert ctx.rip == 0x401000 and p.uc.reg_read(X.UC_X86_REG_XMM3) == 0
    assert p.uc.reg_read(X.UC_X86_REG_MXCSR) == 0x1F80 and p.sig.blocked == (1 << 1) | (1 << 9)   # + SIGUSR1
    assert int.from_bytes(p.read(frame, 8), "little") == 0x402000
    assert int.from_bytes(p.read(frame + MCONTEXT + 16 * 8, 8), "little") == rip
    p.set_reg("RSP", frame + 8)                 # the handler's ret popped pretcode
    p.sig.blocked = 0
    assert restore_sigframe(p, ctx)
    assert {n: p.reg(n) for n in names} == before and p.reg("RSP") == rsp and ctx.rip == rip
    assert [p.uc.reg_read(getattr(X, f"UC_X86_REG_XMM{i}")) for i in range(16)] == xmm
    assert p.uc.reg_read(X.UC_X86_REG_MXCSR) == 0x3F80 and p.uc.reg_read(X.UC_X86_REG_RFLAGS) & 0xFFF == 0x8D7
    assert p.sig.blocked == 1 << 1


def test_cpu_model_says_what_unicorn_runs():
    from emulator.cpuid import emulated_model
    m = emulated_model()
    for name in ("AVX", "AVX2", "FMA", "F16C", "BMI1", "BMI2", "AVX512F", "AVX512BW", "SSE4_2", "XSAVE",
                 "OSXSAVE", "RDRAND", "RDSEED", "FSGSBASE", "MOVBE", "ERMS"):
        assert not m.has(name), name
    _, _, ecx, edx = m.cpuid(1, 0)
    assert ecx & (1 << 0 | 1 << 9 | 1 << 13 | 1 << 19 | 1 << 23) == (1 << 0 | 1 << 9 | 1 << 13 | 1 << 19 | 1 << 23)
    assert edx & (1 << 25 | 1 << 26) == 1 << 25 | 1 << 26           # SSE, SSE2
    assert m.cpuid(0, 0)[0] == 0xD and m.cpuid(0xD, 0) == (0, 0, 0, 0)
    assert m.cpuid(0x8000001D, 0)[1] & 0xFFF == 63                    # 64-byte L1d lines


def test_glibcs_loader_reads_the_cpu_model(image):
    """The real ld.so's --list-diagnostics, run emulated: glibc decodes the
    model as intended (ISA level 1 only, no hwcaps subdirectory, no XSAVE
    state, 64-byte L1d lines)."""
    from clients import glibc_cache
    glibc_programs()
    r = run_program(ExecConfig(image=image, program=glibc_cache.load().ld_so, args=["--list-diagnostics"], passthrough=False))
    assert r.exit_status() == 0 and not r.main.unimplemented
    diag = dict(line.split("=", 1) for line in r.stdout.decode().splitlines() if "=" in line)
    assert diag["x86.cpu_features.isa_1"] == "0x1"
    assert diag["dl_hwcaps_subdirs_active"] == "0x0"
    assert diag["x86.cpu_features.xsave_state_size"] == "0x0"
    assert diag["x86.cpu_features.level1_dcache_linesize"] == "0x40"
    assert diag["uname.release"] == '"6.18.0-faultpath"'


def test_read_policy_confines_and_mirrors_the_host(tmp_path):
    from emulator.vfs import ReadPolicy
    d = tmp_path / "lib"
    d.mkdir()
    (d / "x.so").write_bytes(b"x")
    pol = ReadPolicy()
    pol.allow_dir(str(d))
    assert pol.allows(os.path.realpath(d / "x.so")) and not pol.allows(os.path.realpath(tmp_path))
    assert not pol.allows(str(d) + "x/y")         # a sibling sharing the prefix is not inside


def test_strace_notation():
    from emulator.exec.sysfmt import quote, sigset
    assert quote(b"a\n\"\\\x00\x07z\x011") == '"a\\n\\"\\\\\\0\\7z\\0011"'
    assert quote(b"x" * 70).endswith('"...') and len(quote(b"x" * 70)) == 64 + 5
    assert sigset(0) == "[]" and sigset((1 << 64) - 1) == "~[]"
    assert sigset(1 << 9 | 1 << 10) == "[USR1 SEGV]" and sigset(((1 << 64) - 1) & ~(1 << 31)) == "~[RTMIN]"
