"""What `faultpath run` and `faultpath step` print for a reader: addresses named
the same way in both, VM_FAULT bits by name (with what they were before the
VM_DROPPABLE rule rewrote them), cycles rounded (exact in JSON), no Python
None or repr, and console output that a spin cannot flood."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def faultpath(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "emulator.cli.main", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)


PYTHONISMS = re.compile(r"\bNone\b|=\(0x|\d\.\d{4,}|<\w+ object at|\bTrue\b|\bFalse\b")


def test_run_names_addresses_as_step_does_and_bits_by_name():
    run = faultpath("run")                                   # the fault-path scenario
    assert run.returncode == 0, run.stderr
    out = run.stdout
    assert not PYTHONISMS.search(out), PYTHONISMS.search(out).group(0)
    skip = [l for l in out.splitlines() if "-> skip" in l]
    assert skip and all("bits=SKIP_INSN (was OOM)" in l for l in skip), out
    m = re.search(r"fault #(\d+) at (0x[0-9a-f]+ <__vdso_getrandom\+\d+>) \[.+\]: write "
                  r"(0x[0-9a-f]+ <state(\+0x[0-9a-f]+)?>)", skip[0])
    assert m, skip[0]
    step = faultpath("step", "-c", f"until {m.group(2).split()[0]}; where")
    assert m.group(2) in step.stdout                           # the same name for the same rip
    assert re.search(r"cycles=\d+\s", out) and "syscall #" in out and "<__vdso_getrandom+" in out


def test_a_livelock_prints_no_none_and_the_bits_it_had():
    r = faultpath("run", "--image", "builtin", "--calls", "2", "--droppable-oom", "retry", "--inject", "drop@2:0",
                  "--inject", "oom@2:0", "--livelock", "50")
    assert r.returncode == 0, r.stderr
    assert "(no return value: livelock)" in r.stdout and not PYTHONISMS.search(r.stdout), r.stdout
    assert re.search(r"bits=none \(was OOM\) -> livelock \(x51\)", r.stdout), r.stdout
    j = json.loads(faultpath("run", "--image", "builtin", "--calls", "2", "--droppable-oom", "retry", "--inject",
                             "drop@2:0", "--inject", "oom@2:0", "--livelock", "50", "--json").stdout)
    spin = j["calls"][1]["faults"][-1]
    assert spin["bits"] == [] and spin["orig_bits"] == ["OOM"] and spin["decision"] == "livelock"
    assert j["calls"][1]["ret"] is None                        # JSON keeps null: no value is no value


def test_many_faults_are_summarised_not_printed_one_by_one():
    r = faultpath("run", "--image", "builtin", "--size", "524288")      # 128 buffer pages, faulted one by one
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert len(lines) < 60, len(lines)
    assert re.search(r"^  \.\.\. \d+ more fault\(s\)/syscall\(s\) \(--json lists them all\)$", r.stdout, re.M)


def test_a_spin_under_faultstop_off_does_not_flood_the_console():
    """Under persistent OOM with retry every refault is handled by the stepper:
    identical lines fold into one with a count."""
    r = faultpath("step", "--image", "builtin", "--droppable-oom", "retry", "--livelock", "5000",
                  "--inject", "drop@2:0", "--inject", "oom@2:0", "-c", "faultstop off; continue")
    assert r.returncode == 0, r.stderr
    assert len(r.stdout.splitlines()) < 30, r.stdout[:2000]
    assert re.search(r"handled: retry-oom .*\(x\d{3,}\)", r.stdout), r.stdout
