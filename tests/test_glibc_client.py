"""glibc 2.41 as the vDSO's real client, natively.

The programs in tests/clients/ are built with gcc against Debian 13's glibc
2.41 (fetched by `make glibc` into build/glibc/) and run on this machine's
own kernel.  What they do natively is what the emulated `faultpath exec` will
be held to: the syscalls of the loader and of glibc's getrandom, the state
mapping glibc makes with the vDSO's params, and what glibc does at fork and
in a signal handler.  References are independent of the code under test:
the kernel (strace, /proc, the live vDSO's own params answer) and glibc's
own loader (`ld.so --help`).
"""
from __future__ import annotations

import ctypes
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from clients import glibc_cache, native_trace

TESTS = Path(__file__).resolve().parent

pytestmark = pytest.mark.skipif(os.uname().machine != "x86_64",
                                reason="the clients are x86-64 programs run natively")

needs_strace = pytest.mark.skipif(not native_trace.have_strace(),
                                  reason="strace not found: the native syscall sequence needs it")

# Linux's mmap constants (include/uapi/asm-generic/mman*.h, linux/mman.h).
PROT = {"PROT_NONE": 0, "PROT_READ": 1, "PROT_WRITE": 2, "PROT_EXEC": 4}
MAP = {"MAP_SHARED": 0x1, "MAP_PRIVATE": 0x2, "MAP_DROPPABLE": 0x8, "MAP_FIXED": 0x10,
       "MAP_ANONYMOUS": 0x20, "MAP_DENYWRITE": 0x800, "MAP_NORESERVE": 0x4000}

LOOP_OK = "calls={n} bytes={b} short=0 failed=0 zero_words=0\n"


def _bits(text: str, names: dict) -> int:
    """strace's rendering of a flag word ("0x8 /* MAP_??? */|MAP_ANONYMOUS")
    back to its value."""
    value = 0
    for part in re.sub(r"/\*.*?\*/", "", text).split("|"):
        part = part.strip()
        value |= int(part, 0) if part[:1].isdigit() else names[part]
    return value


def _mmaps(trace, pid=0):
    """(addr, length, prot, flags, fd, ret) of every mmap, values decoded."""
    out = []
    for e in trace.calls("mmap", pid):
        addr, length, prot, flags, fd, _off = e.args.split(", ")
        out.append((addr, int(length), _bits(prot, PROT), _bits(flags, MAP), int(fd), e.ret))
    return out


def _state_mmaps(trace, pid=0):
    return [m for m in _mmaps(trace, pid) if m[3] & 0x0f == MAP["MAP_DROPPABLE"]]


def _getrandom_syscalls(trace, pid=None):
    """(length, flags, ret) of every getrandom *syscall* (vDSO calls make none)."""
    out = []
    for e in trace.calls("getrandom", pid):
        _buf, length, flags = e.args.split(", ")
        out.append((int(length), flags, e.ret))
    return out


def _host_vdso_params():
    """The running kernel's own answer to the vDSO params query
    (buffer=NULL, len=0, flags=0, opaque_len=~0): {size, prot, flags}."""
    from vdso.elf_image import host_has_vgetrandom, load_host
    if not host_has_vgetrandom():
        pytest.skip("the running kernel's vDSO has no __vdso_getrandom (needs Linux 6.11+)")
    libc = ctypes.CDLL(None, use_errno=True)
    libc.getauxval.restype = ctypes.c_ulong
    base = libc.getauxval(33)   # AT_SYSINFO_EHDR
    fn = ctypes.CFUNCTYPE(ctypes.c_ssize_t, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_uint,
                          ctypes.c_void_p, ctypes.c_size_t)(
        base + load_host().symbols["__vdso_getrandom"])
    params = (ctypes.c_uint32 * 16)()
    assert fn(None, 0, 0, ctypes.addressof(params), ctypes.c_size_t(-1).value) == 0
    return {"size": params[0], "prot": params[1], "flags": params[2]}


@pytest.fixture(scope="session")
def glibc():
    cache = glibc_cache.load()
    if cache is None:
        pytest.skip("glibc 2.41 not fetched: run `make glibc`")
    if not cache.ready:
        pytest.skip(f"glibc 2.41 unavailable: {cache.reason}")
    try:
        progs = glibc_cache.build(cache)
    except glibc_cache.Unavailable as e:
        pytest.skip(str(e))
    return cache, progs


@pytest.fixture(scope="session")
def vdso_client(glibc):
    """The programs, on a kernel whose vDSO has getrandom (else glibc makes
    a syscall per call and none of the counts below apply)."""
    from vdso.elf_image import host_has_vgetrandom
    if not host_has_vgetrandom():
        pytest.skip("the running kernel's vDSO has no __vdso_getrandom (needs Linux 6.11+)")
    return glibc


def _run(prog, *args, env=None):
    p = subprocess.run([str(prog), *map(str, args)], stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE, text=True, timeout=60, env=env)
    return p


# ------------------------------------------------------------ the cache

def test_programs_bind_the_cached_glibc(glibc):
    """PT_INTERP names the cache's loader, RUNPATH its libdir, and that loader
    is glibc 2.41 or later; the static build has no interpreter at all."""
    from elftools.elf.elffile import ELFFile
    cache, progs = glibc

    def interp_and_runpath(path):
        with open(path, "rb") as f:
            elf = ELFFile(f)
            interp = next((s.get_interp_name() for s in elf.iter_segments()
                           if s["p_type"] == "PT_INTERP"), None)
            dyn = elf.get_section_by_name(".dynamic")
            runpath = [t.runpath for t in dyn.iter_tags() if t.entry.d_tag == "DT_RUNPATH"] \
                if dyn else []
        return interp, runpath

    for name in ("getrandom_loop", "getrandom_fork", "getrandom_signal"):
        interp, runpath = interp_and_runpath(progs[name])
        assert interp == cache.ld_so
        if cache.sysroot:
            assert runpath == [cache.libdir]
    assert interp_and_runpath(progs["getrandom_loop_static"])[0] is None

    version = _run(cache.ld_so, "--version").stdout.splitlines()[0]
    m = re.search(r"version (\d+)\.(\d+)", version)
    assert m and (int(m[1]), int(m[2])) >= glibc_cache.MIN_VERSION, version


def test_fetch_is_cached(glibc, tmp_path):
    """A ready cache makes no apt call: a second fetch succeeds with apt-get
    and dpkg-deb out of reach."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "python3").symlink_to(sys.executable)
    env = dict(os.environ, PATH=str(bin_dir), FAULTPATH_GLIBC_DIR=str(glibc_cache.cache_dir()))
    p = subprocess.run([sys.executable, str(TESTS / "clients" / "glibc_cache.py"), "fetch"],
                       env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                       timeout=60)
    assert p.returncode == 0, p.stderr
    assert glibc_cache.load().ready
    assert "unavailable" not in p.stdout


def test_fetch_without_apt_records_the_reason(tmp_path):
    """No apt: exit 0, state.json says unavailable and why."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "python3").symlink_to(sys.executable)
    cache = tmp_path / "cache"
    env = dict(os.environ, PATH=str(bin_dir), FAULTPATH_GLIBC_DIR=str(cache))
    env.pop("FAULTPATH_DEBIAN_MIRROR", None)
    p = subprocess.run([sys.executable, str(TESTS / "clients" / "glibc_cache.py"), "all"],
                       env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                       timeout=60)
    assert p.returncode == 0, p.stderr
    state = glibc_cache.load(cache)
    if glibc_cache._version_tuple(glibc_cache.host_glibc_version()) >= glibc_cache.MIN_VERSION:
        assert state.ready and state.source == "host"
        return
    assert state.status == "unavailable"
    assert "apt-get not found" in state.reason
    assert "will skip" in p.stdout


@pytest.mark.skipif(not os.path.exists("/usr/bin/apt-get"), reason="apt-get not installed")
def test_fetch_from_an_unreachable_archive_records_the_reason(tmp_path):
    """An archive that refuses the connection (loopback, port 9): exit 0 and
    apt's own complaint as the reason; nothing of the private apt tree stays."""
    if glibc_cache._version_tuple(glibc_cache.host_glibc_version()) >= glibc_cache.MIN_VERSION:
        pytest.skip("the host's glibc is new enough: nothing is fetched")
    cache = tmp_path / "cache"
    env = dict(os.environ, FAULTPATH_GLIBC_DIR=str(cache),
               FAULTPATH_DEBIAN_MIRROR="http://127.0.0.1:9/debian")
    p = subprocess.run([sys.executable, str(TESTS / "clients" / "glibc_cache.py"), "fetch"],
                       env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                       timeout=120)
    assert p.returncode == 0, p.stderr
    state = glibc_cache.load(cache)
    assert state.status == "unavailable"
    assert "127.0.0.1:9" in state.reason
    assert not (cache / "apt").exists()


# ------------------------------------------------------------ (a) the loop

def test_loop_output(vdso_client):
    _, progs = vdso_client
    for n in (0, 1, 1000):
        p = _run(progs["getrandom_loop"], n)
        assert (p.returncode, p.stdout, p.stderr) == (0, LOOP_OK.format(n=n, b=64 * n), "")


@needs_strace
@pytest.mark.parametrize("n", [1, 1000])
def test_loop_makes_two_getrandom_syscalls(vdso_client, n):
    """Whatever N is: one 32-byte reseed of the state's key (the vDSO's own
    syscall, flags 0), and the 8-byte GRND_NONBLOCK that seeds malloc's
    tcache key at the first malloc (stdio's buffer).  Every 64-byte call is
    served by the vDSO."""
    _, progs = vdso_client
    t = native_trace.run([str(progs["getrandom_loop"]), str(n)])
    assert t.returncode == 0 and t.stdout == LOOP_OK.format(n=n, b=64 * n)
    assert _getrandom_syscalls(t) == [(32, "0", "32"), (8, "GRND_NONBLOCK", "8")]


@needs_strace
def test_loop_startup_syscalls(vdso_client):
    """The distinct syscalls of loader + startup + 1000 calls + exit, as
    measured with Debian's 2.41-12 on Linux 6.18; and the thread-pointer
    set-up: arch_prctl(ARCH_SET_FS) points into the anonymous mapping that
    also holds set_tid_address's, set_robust_list's and rseq's areas."""
    cache, progs = vdso_client
    t = native_trace.run([str(progs["getrandom_loop"]), "1000"])
    counts = t.counts()
    core = {"execve", "brk", "mmap", "openat", "read", "pread64", "fstat", "close",
            "mprotect", "arch_prctl", "set_tid_address", "set_robust_list", "rseq",
            "prlimit64", "rt_sigprocmask", "getrandom", "write", "exit_group"}
    assert core <= set(counts)
    if cache.source == "debian-trixie":
        assert set(counts) == core | {"access", "newfstatat"}
        assert counts["rt_sigprocmask"] == 2      # around the state allocation
        assert counts["mmap"] == 9

    raw = {e.name: e.raw for e in t.syscalls(0)}
    fs = int(re.search(r"ARCH_SET_FS, (0x[0-9a-f]+)", raw["arch_prctl"])[1], 16)
    tid = int(re.search(r"\((0x[0-9a-f]+)\)", raw["set_tid_address"])[1], 16)
    robust, robust_len = re.search(r"\((0x[0-9a-f]+), (\d+)\)", raw["set_robust_list"]).groups()
    rseq = re.search(r"\((0x[0-9a-f]+), (0x[0-9a-f]+), 0, (0x[0-9a-f]+)\)", raw["rseq"])
    assert robust_len == "24"                     # sizeof(struct robust_list_head)
    assert rseq[3] == "0x53053053"                # x86's RSEQ_SIG
    assert int(rseq[2], 16) >= 32                 # glibc's area, AT_RSEQ_FEATURE_SIZE rounded
    tls = None
    for e in t.calls("mmap", 0):
        m = re.search(r"= (0x[0-9a-f]+)$", e.raw)
        length = int(e.raw.split(", ")[1])
        if m and "MAP_ANONYMOUS" in e.raw and int(m[1], 16) <= fs < int(m[1], 16) + length:
            tls = (int(m[1], 16), length)
    assert tls, "fs base is not inside an anonymous mapping"
    for addr in (tid, int(robust, 16), int(rseq[1], 16)):
        assert tls[0] <= addr < tls[0] + tls[1]


@needs_strace
def test_state_mapping_has_the_vdso_params(vdso_client):
    """glibc maps exactly one page for its states, with the prot and flags
    the running kernel's vDSO gives in its params (PROT_READ|PROT_WRITE,
    MAP_DROPPABLE|MAP_ANONYMOUS = 3, 0x28), then a private page for the
    array of free states."""
    _, progs = vdso_client
    params = _host_vdso_params()
    t = native_trace.run([str(progs["getrandom_loop"]), "1000"])
    states = _state_mmaps(t)
    assert len(states) == 1
    addr, length, prot, flags, fd, ret = states[0]
    assert (addr, length, fd) == ("NULL", 4096, -1)
    assert (prot, flags) == (params["prot"], params["flags"])
    assert params["size"] <= 4096
    after = _mmaps(t)[_mmaps(t).index(states[0]) + 1]
    assert after[2:5] == (PROT["PROT_READ"] | PROT["PROT_WRITE"],
                          MAP["MAP_PRIVATE"] | MAP["MAP_ANONYMOUS"], -1)


def test_state_mapping_is_droppable_in_smaps(vdso_client):
    """/proc/self/smaps, read by the program after its first call: one
    droppable VMA ("dp" in VmFlags), one page."""
    _, progs = vdso_client
    p = _run(progs["getrandom_signal"], "segv", 10, 5)
    assert p.returncode == 0
    assert p.stdout.splitlines()[-1] == "faults=1 droppable_mappings=1 droppable_bytes=4096"


# ------------------------------------------------------------ (d) static

@needs_strace
def test_static_binary_does_not_use_the_vdso(glibc):
    """libc.a's startup queries the vDSO's params in __libc_early_init,
    before __libc_init_first -> _dl_non_dynamic_init has found the vDSO's
    symbols, so state_size stays 0: no state mapping, and every call is a
    getrandom syscall (plus malloc's 8-byte one)."""
    _, progs = glibc
    n = 200
    t = native_trace.run([str(progs["getrandom_loop_static"]), str(n)])
    assert t.returncode == 0 and t.stdout == LOOP_OK.format(n=n, b=64 * n)
    assert _state_mmaps(t) == []
    calls = _getrandom_syscalls(t)
    assert sorted(calls) == sorted([(64, "0", "64")] * n + [(8, "GRND_NONBLOCK", "8")])
    assert "openat" not in t.counts()


# ------------------------------------------------------------ (b) fork

FORK_OK = ("before_fork: calls={n} bytes={b} short=0 failed=0 zero_words=0\n"
           "child: calls={n} bytes={b} short=0 failed=0 zero_words=0\n"
           "parent: child_exit=0 same_first_block=0\n"
           "after_fork: calls={n} bytes={b} short=0 failed=0 zero_words=0\n")


def test_fork_output(vdso_client):
    _, progs = vdso_client
    p = _run(progs["getrandom_fork"], 100)
    assert (p.returncode, p.stdout) == (0, FORK_OK.format(n=100, b=6400))


@needs_strace
def test_fork_child_reseeds_its_wiped_state(vdso_client):
    """The child keeps the parent's state pointer in its TCB (glibc hands
    only other threads' states back at fork) but the page is VM_WIPEONFORK:
    generation reads 0, so the child's first call reseeds (one 32-byte
    syscall) and maps nothing.  The parent's state survives the fork: no
    getrandom syscall after it."""
    _, progs = vdso_client
    t = native_trace.run([str(progs["getrandom_fork"]), "100"])
    assert t.returncode == 0 and t.stdout == FORK_OK.format(n=100, b=6400)
    assert len(t.processes) == 2
    assert _getrandom_syscalls(t, 1) == [(32, "0", "32")]
    assert _mmaps(t, 1) == []
    parent = t.syscalls(0)
    fork_at = next(i for i, e in enumerate(parent) if e.name in ("clone", "clone3", "fork"))
    assert [e for e in parent[fork_at:] if e.name == "getrandom"] == []
    assert len(_state_mmaps(t, 0)) == 1


# ------------------------------------------------------------ (c) signals

def _signal_ok(mode, n, segv):
    out = (f"mode={mode} calls={n} bytes={64 * n} short=0 failed=0 zero_words=0\n"
           "handler: calls=1 bytes=64 short=0 failed=0 zero_words=0\n")
    if segv:
        out += "faults=1 droppable_mappings=1 droppable_bytes=4096\n"
    return out


def _around_signal(t, signal):
    """The syscalls between the signal's delivery and its rt_sigreturn, and
    those after it."""
    evs = t.processes[0]
    start = next(i for i, e in enumerate(evs) if e.kind == "signal" and e.name == signal)
    end = next(i for i in range(start, len(evs)) if evs[i].name == "rt_sigreturn")
    inside = [e for e in evs[start + 1:end] if e.kind == "syscall"]
    after = [e for e in evs[end + 1:] if e.kind == "syscall"]
    return inside, after


@needs_strace
def test_signal_between_calls_uses_the_vdso(vdso_client):
    """raise() between two calls: the state is free, so the handler's call
    goes through the vDSO like any other: the run's getrandom syscalls are
    the loop's two, and none is made inside the handler."""
    _, progs = vdso_client
    t = native_trace.run([str(progs["getrandom_signal"]), "raise", "100", "50"])
    assert t.returncode == 0 and t.stdout == _signal_ok("raise", 100, False)
    inside, _ = _around_signal(t, "SIGUSR1")
    assert [e.name for e in inside] == []
    assert sorted(_getrandom_syscalls(t)) == sorted([(32, "0", "32"), (8, "GRND_NONBLOCK", "8")])


@needs_strace
def test_signal_inside_a_vdso_call_falls_back_to_the_syscall(vdso_client):
    """A SIGSEGV taken inside the vDSO (the caller's buffer is PROT_NONE)
    while glibc holds the state reserved (LSB of the TCB's pointer): the
    handler's getrandom is the syscall, with the caller's own flags (0, not
    the GRND_NONBLOCK glibc adds for the vDSO); the interrupted call then
    completes without another syscall."""
    _, progs = vdso_client
    t = native_trace.run([str(progs["getrandom_signal"]), "segv", "100", "50"])
    assert t.returncode == 0 and t.stdout == _signal_ok("segv", 100, True)
    inside, after = _around_signal(t, "SIGSEGV")
    assert [(e.name, e.args.split(", ")[1:], e.ret) for e in inside if e.name == "getrandom"] \
        == [("getrandom", ["64", "0"], "64")]
    assert [e.name for e in inside] == ["getrandom", "mprotect"]
    assert [e for e in after if e.name == "getrandom"] == []


@needs_strace
def test_state_dropped_in_the_handler_is_reseeded(vdso_client):
    """As above, and the handler first drops the state page (MADV_DONTNEED).
    glibc's guard keeps the nested call off the state (syscall), and the
    interrupted vDSO call sees generation 0 at its final check, goes back,
    reseeds (one 32-byte syscall after rt_sigreturn) and hands out no zero
    word: what the bare vDSO's in_use guard alone does not achieve."""
    _, progs = vdso_client
    t = native_trace.run([str(progs["getrandom_signal"]), "segv-drop", "100", "50"])
    assert t.returncode == 0 and t.stdout == _signal_ok("segv-drop", 100, True)
    inside, after = _around_signal(t, "SIGSEGV")
    assert [e.name for e in inside] == ["madvise", "getrandom", "mprotect"]
    assert "MADV_DONTNEED" in inside[0].args and ", 4096, " in inside[0].args
    assert [(int(e.args.split(", ")[1]), e.ret) for e in after if e.name == "getrandom"] \
        == [(32, "32")]


# ------------------------------------------------------------ hwcaps

def _searched(ld_so, env):
    """The glibc-hwcaps subdirectories the loader says it searches."""
    out = _run(ld_so, "--help", env=env).stdout
    return re.findall(r"^\s+(x86-64-v\d) \(supported, searched\)", out, re.M)


@needs_strace
@pytest.mark.parametrize("tunables", ["", "glibc.cpu.hwcaps=-AVX"])
def test_loader_probes_the_hwcaps_it_reports(vdso_client, tunables):
    """The loader tries libc.so.6 in exactly the glibc-hwcaps subdirectories
    `ld.so --help` reports as supported for this CPU, best first, then the
    plain directory.  With AVX masked off (as on a CPU model without AVX)
    only x86-64-v2 is left."""
    cache, progs = vdso_client
    env = dict(os.environ)
    env.pop("GLIBC_TUNABLES", None)
    if tunables:
        env["GLIBC_TUNABLES"] = tunables
    expected = _searched(cache.ld_so, env)
    if tunables:
        assert "x86-64-v3" not in expected and "x86-64-v4" not in expected
    t = native_trace.run([str(progs["getrandom_loop"]), "1"], env=env)
    tried = [re.search(r"glibc-hwcaps/([^/]+)/libc\.so\.6", e.args)[1]
             for e in t.calls("openat") if "glibc-hwcaps/" in e.args]
    assert tried == expected
    libc = [e for e in t.calls("openat") if e.args.endswith('/libc.so.6", O_RDONLY|O_CLOEXEC')]
    assert libc[-1].ret == "3" and f'"{cache.libdir}/libc.so.6"' in libc[-1].args
