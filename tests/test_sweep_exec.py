"""`faultpath sweep --exec`: one glibc 2.41 getrandom() call of a real
program swept at its instruction boundaries, glibc's wrapper and the vDSO,
with the sweep's events, judged by the sweep's oracle.

The program is getrandom_signal in raise mode with K = N (tests/clients/
getrandom_signal.c): 1000 getrandom(64) calls in main, and a SIGUSR1 handler
that calls getrandom(64) (it never raises the signal itself: reenter does).
Its third vDSO call (the default, --call 3) is its second getrandom(), the
first on a warm state.

The oracle must be able to fail: two mutants of glibc's own code, made in
the emulated process (ProcessHarness.mutate), are caught.  A wrapper that
never calls the vDSO hands out the poisoned buffer (Provenance, at the
baseline already); a wrapper whose TCB reservation does not hold off a
handler leaves the vDSO's in_use guard alone against a drop, and the
interrupted call hands out keystream of a key nobody supplied: its refill
had loaded the first half of the key when the handler's call replaced it.
"""
from __future__ import annotations

import json
import os

import pytest

from emulator.exec.symbols import SymbolTables
from emulator.sweep.exec_config import ExecSweepConfig
from emulator.sweep.process_harness import ProcessHarness
from emulator.sweep.process_report import ExecSweepReport
from emulator.sweep.records import SweepTask
from emulator.sweep.report import SweepResult
from exec_helpers import glibc_programs
from test_cli import fp
from vdso.loader import load_image

pytestmark = pytest.mark.skipif(os.uname().machine != "x86_64", reason="x86-64 programs")

ARGS = ("raise", "1000", "1000")
EVENTS = ("drop", "oom", "oom:2", "fork", "reenter", "drop+reenter", "reseed", "not-ready")


@pytest.fixture(scope="module")
def prog() -> str:
    return str(glibc_programs()["getrandom_signal"])


@pytest.fixture(scope="module")
def image():
    return load_image("builtin")


def harness(image, prog, call=3) -> tuple[ProcessHarness, ExecSweepConfig]:
    cfg = ExecSweepConfig(program=prog, args=ARGS, call=call, memory_pages=4096)
    return ProcessHarness(image, cfg), cfg


@pytest.fixture(scope="module")
def swept(image, prog):
    h, cfg = harness(image, prog)
    return h, cfg, h.baseline()


def sweep_runs(h, cfg, image, boundaries, events=EVENTS) -> dict:
    recs: list = []
    for i in boundaries:
        h.boundaries(SweepTask(1, image, cfg, 0, "boundaries", i, i + 1, tuple(events), h.n), recs.append)
    return {(r.i, r.event): r for r in recs}


def libc_code(h: ProcessHarness, pattern: str) -> int:
    """Where a byte pattern is in glibc's getrandom (the wrapper jumps to
    its body, which has no symbol of its own)."""
    p = h.proc
    ((_, entry),) = SymbolTables().resolve(p, "getrandom", vdso=False)
    code = p.read(entry, 10)
    assert code[5] == 0xE9, code.hex()          # mov $1, %ecx; jmp __getrandom_internal
    body = entry + 10 + int.from_bytes(code[6:10], "little", signed=True)
    k = p.read(body, 0x100).find(bytes.fromhex(pattern))
    if k < 0:
        pytest.skip(f"this glibc's getrandom has no {pattern} (another build)")
    return body + k


# ------------------------------------------------------------------ the swept call
def test_the_swept_call_is_glibcs_getrandom_around_the_vdso_call(swept):
    h, cfg, b = swept
    assert (b.seq, b.length, b.ret, b.outcome, b.warm_calls) == (2, 64, 64, "ok-fast", 1)
    assert b.entry.startswith("libc.so.6+") and not b.violations and not b.warm_violations
    assert 0 < b.vdso_start < b.vdso_end < b.n
    (vc,) = [v for v in h.tracker.vdso_calls if v.number == 3]
    assert vc.args[1:3] == (64, 1)                  # glibc asks the vDSO with GRND_NONBLOCK added
    assert vc.index - b.entry_index == b.vdso_start


def test_every_event_at_the_edges_of_glibc_and_the_vdso(swept, image):
    """Boundaries: the wrapper's first instruction, the last one before the
    vDSO, the vDSO's first, one in the middle, the wrapper after the vDSO,
    and after the return.  Nothing breaks an invariant; each event is
    served as glibc and the vDSO are written to serve it."""
    h, cfg, b = swept
    mid = (b.vdso_start + b.vdso_end) // 2
    edges = (0, b.vdso_start - 1, b.vdso_start, mid, b.vdso_end, b.n)
    runs = sweep_runs(h, cfg, image, edges)
    bad = {k: r.violations for k, r in runs.items() if r.outcome in ("violation", "crash")}
    assert not bad
    assert all(r.zero_words == 0 for r in runs.values())
    # Before glibc reserves the state in the TCB, a handler's getrandom() uses it
    # (the interrupted call has not touched it yet); once reserved, glibc falls
    # back to the syscall, dropped page or not.
    assert runs[(0, "reenter")].nested == "vdso"
    for i in (b.vdso_start - 1, b.vdso_start, mid):
        assert runs[(i, "reenter")].nested == runs[(i, "drop+reenter")].nested == "glibc-syscall"
        assert runs[(i, "reenter")].outcome == "ok-fallback"
    assert runs[(b.n, "reenter")].nested == ""      # after the return: not nested in it
    # Persistent OOM with the state dropped: the vDSO's reseed spins in the kernel's copy.
    assert runs[(mid, "oom")].outcome == "livelock" and "copy_to_user of getrandom" in runs[(mid, "oom")].livelock
    assert runs[(b.n, "oom")].outcome == "livelock"  # the next call is the one it hits
    assert runs[(mid, "oom:2")].outcome == "ok-reseed"
    assert runs[(mid, "fork")].outcome == "ok-reseed"     # the child's wiped state reseeds
    assert runs[(b.vdso_start - 1, "not-ready")].outcome == "ok-fallback"
    assert runs[(0, "drop")].outcome == "ok-reseed" and runs[(b.n, "drop")].outcome == "ok-fast"


def test_a_boundary_run_twice_is_the_same_run(swept, image):
    h, cfg, b = swept
    i = b.vdso_start + 20
    one = sweep_runs(h, cfg, image, [i], ("fork", "drop+reenter"))
    two = sweep_runs(h, cfg, image, [i], ("fork", "drop+reenter"))
    assert one == two


def test_the_reproduction_line_runs_the_same_in_the_whole_program(swept, image):
    """drop+reenter inside the vDSO, as `faultpath exec --inject`: the handler's
    getrandom() is a syscall, and the program's own tally finds no zero word."""
    h, cfg, b = swept
    i = b.vdso_start + 23
    runs = sweep_runs(h, cfg, image, [i], ("drop+reenter",))
    res = SweepResult(image.name, "builtin", [cfg], ["drop+reenter"])
    res.baselines[0], res.records = b, list(runs.values())
    line = ExecSweepReport(res, cfg).repro(runs[(i, "drop+reenter")])
    assert f"--inject drop@getrandom#3:23 --inject signal:SIGUSR1@getrandom#3:23" in line
    argv = line.split()[1:]
    r = fp(*argv[:argv.index("--inject")], "--trace", *argv[argv.index("--inject"):])
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == ["mode=raise calls=1000 bytes=64000 short=0 failed=0 zero_words=0",
                                     "handler: calls=1 bytes=64 short=0 failed=0 zero_words=0"]
    ev = [x for x in r.stderr.splitlines() if x.startswith("P0  ")]
    k = next(n for n, x in enumerate(ev) if x.startswith("P0  --- SIGUSR1"))
    assert ev[k + 1].startswith("P0  getrandom(") and ev[k + 1].endswith(", 64, 0) = 64")


# ------------------------------------------------------------------ the oracle has teeth
@pytest.fixture(scope="module")
def mutant(image, prog):
    h, cfg = harness(image, prog, call=4)
    return h, cfg


def test_without_glibcs_reservation_a_torn_key_is_caught(mutant, image):
    """glibc's `test $1, %r9b; jne fallback` (the TCB reservation) replaced by
    taking the state without its reserved bit: a handler's getrandom() is
    left to the vDSO's in_use guard, which a drop clears.  Call 4 refills
    its batch; a drop + handler between the two 16-byte loads of the key
    (__arch_chacha20_blocks_nostack's first instructions) makes it hand out
    keystream of a key half old, half the one the handler's call left."""
    h, cfg = mutant
    at = libc_code(h, "41f6c1010f85")            # test $0x1,%r9b; jne
    assert h.proc.read(at + 13, 3) == bytes.fromhex("4d89cf")     # mov %r9,%r15
    # mov %r9,%r15; and $-2,%r15; nop  ...  and the later mov %r9,%r15 made a nop:
    # the vDSO gets the state, the TCB keeps the interrupted call's reservation.
    h.mutate(at, bytes.fromhex("4d89cf4983e7fe0f1f00"))
    h.mutate(at + 13, bytes.fromhex("0f1f00"))
    b = h.baseline()
    assert b.outcome == "ok-fast" and not b.violations
    lo = b.vdso_start + 90
    runs = sweep_runs(h, cfg, image, range(lo, lo + 20), ("drop+reenter",))
    bad = [r for r in runs.values() if r.outcome == "violation"]
    assert bad, "the broken guard went unnoticed"
    assert all(r.nested == "vdso" for r in runs.values())
    assert any(v["invariant"] == "Provenance" and "neither keystream of a key the kernel supplied" in v["detail"]
               for r in bad for v in r.violations)


def test_a_wrapper_that_skips_the_vdso_is_caught_at_the_baseline(mutant):
    """`call *0x328(%rax)` (the vDSO) replaced by `mov %r12, %rax` (return the
    length): the caller's poisoned buffer comes back as if it were random."""
    h, cfg = mutant
    at = libc_code(h, "ff9028030000")
    h.mutate(at, bytes.fromhex("4c89e00f1f00"))
    b = h.baseline()
    assert b.outcome == "violation"
    assert any(v["invariant"] == "Provenance" and "a5a5a5a5" in v["detail"] for v in b.violations)


# ------------------------------------------------------------------ the command line
def test_bad_input_is_refused_in_one_line(prog, capsys):
    from emulator.cli.main import main
    cases = [(["sweep", "--size", "64", "--exec", prog], "--size"),
             (["sweep", "--exec"], "PROGRAM missing"),
             (["sweep", "--call", "3"], "--call is for --exec"),
             (["sweep", "--reenter-signal", "SIGKILL", "--exec", prog], "not a signal a handler can catch"),
             (["sweep", "--call", "0", "--exec", prog], "--call 0"),
             (["sweep", "--exec", "/nonexistent/prog"], "no such file"),
             (["sweep", "--events", "bogus", "--exec", prog], "bogus")]
    for argv, needle in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        lines = [x for x in err.splitlines() if x.strip()]
        assert len(lines) == 1 and "Traceback" not in err and needle in lines[0], (argv, err)


def test_what_cannot_be_swept_is_refused_after_the_start_up(capsys):
    """getrandom_loop has no signal handler (reenter), and makes 3 vDSO
    calls with 2 getrandom() calls (--call 9); --call 1 is glibc's query."""
    from emulator.cli.main import main
    loop = str(glibc_programs()["getrandom_loop"])
    for argv, needle in [(["--call", "9"], "made 3 __vdso_getrandom call(s)"),
                         (["--call", "1"], "start-up query"),
                         (["--events", "reenter"], "no handler for SIGUSR1")]:
        assert main(["sweep", "--jobs", "0", *argv, "--exec", loop, "2"]) == 2
        err = capsys.readouterr().err
        assert needle in err and len(err.strip().splitlines()) == 1, err


@pytest.mark.slow
def test_every_boundary_of_a_warm_call(prog, tmp_path):
    """The whole of call 3: drop, oom, fork, reenter, drop+reenter at every
    boundary of glibc's wrapper and the vDSO, through the command line: no
    violation, no zero word handed out anywhere, and from the TCB
    reservation to its release every handler's getrandom() is glibc's
    syscall."""
    out = tmp_path / "s.json"
    r = fp("sweep", "--jobs", "2", "--no-progress", "--events", "drop,oom,fork,reenter,drop+reenter",
           "--json", str(out), "--exec", prog, *ARGS, timeout=3600)
    assert r.returncode == 0, r.stdout + r.stderr
    doc = json.loads(out.read_text())
    sw = doc["swept"]
    assert doc["runs"] == 5 * (sw["n"] + 1) and not doc["violations"]
    assert all(v == 0 for v in doc["zero_words"].values())
    for ev in ("reenter", "drop+reenter"):
        served = set(doc["nested"][ev]["glibc-syscall"])
        assert set(range(sw["vdso_start"], sw["vdso_end"] + 1)) <= served
    assert "violations: none" in r.stdout
