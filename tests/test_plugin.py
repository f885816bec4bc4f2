"""The pytest plugin (emulator/skipcheck/pytest_plugin.py): users' own skip regression
tests in a few lines.  The example tests below are the README's; they run in
a child pytest, once with `-p emulator.skipcheck.pytest_plugin` and once loaded the
way an installed faultpath loads it, through a `pytest11` entry point."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from emulator.errors import UsageError
from emulator.skipcheck.oom_machine import oom_machine
from emulator.skipcheck.runner import run_instruction

ROOT = Path(__file__).resolve().parents[1]

EXAMPLE = '''
import pytest


def test_my_store_is_skipped(skip_outcome):
    out = skip_outcome("mov qword ptr [rdi + 8], rax")
    assert out.skipped and out.skip_len == 4 and out.next_ran
    assert out.dest_unchanged and out.regs_unchanged


@pytest.mark.parametrize("placement", ["plain", "split", "riprel", "page-end"])
def test_every_placement(skip_outcome, placement):
    assert skip_outcome("movdqu xmmword ptr [rdi], xmm1", placement).ok


def test_retry_spins(skip_outcome):
    out = skip_outcome("lock xadd qword ptr [rdi], rax", policy="retry")
    assert out.refaulted and out.livelock and not out.skipped


@pytest.mark.faultpath_policy("retry")
def test_policy_marker(skip_outcome):
    assert skip_outcome("push rax").livelock


def test_raw_bytes(skip_outcome):
    out = skip_outcome(bytes.fromhex("f30f7f07"))      # movdqu xmmword ptr [rdi], xmm0
    assert out.skipped and out.skip_len == 4


def test_my_own_code(droppable_oom_machine):
    om = droppable_oom_machine("mov qword ptr [rdi], rax\\nmov r11, 7")
    res = om.run({"rdi": om.oom_page + 16})
    skip, = [f for f in res.faults if f.decision == "skip"]
    assert skip.skip_len == 3 and om.machine.reg("r11") == 7
'''


def _child_pytest(tmp_path, args, env_extra):
    test = tmp_path / "test_example.py"
    test.write_text(EXAMPLE)
    env = {**os.environ, **env_extra}
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *args, str(test)],
                          capture_output=True, text=True, cwd=tmp_path, env=env, timeout=300)


def test_readme_example_with_dash_p(tmp_path):
    p = _child_pytest(tmp_path, ["-p", "emulator.skipcheck.pytest_plugin"],
                      {"PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1", "PYTHONPATH": str(ROOT)})
    assert p.returncode == 0, p.stdout + p.stderr
    assert "9 passed" in p.stdout, p.stdout


def test_readme_example_through_a_pytest11_entry_point(tmp_path):
    """What `[project.entry-points.pytest11] faultpath = "emulator.skipcheck.pytest_plugin"`
    in pyproject.toml gives an installed faultpath."""
    site = tmp_path / "site"
    dist = site / "faultpath_plugin_probe-0.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: faultpath-plugin-probe\nVersion: 0\n")
    (dist / "entry_points.txt").write_text("[pytest11]\nfaultpath = emulator.skipcheck.pytest_plugin\n")
    env = {"PYTHONPATH": os.pathsep.join([str(site), str(ROOT)])}
    env.pop("PYTEST_DISABLE_PLUGIN_AUTOLOAD", None)
    p = _child_pytest(tmp_path, [], {**env, "PYTEST_DISABLE_PLUGIN_AUTOLOAD": ""})
    assert p.returncode == 0, p.stdout + p.stderr
    assert "9 passed" in p.stdout, p.stdout


def test_a_failing_user_test_shows_the_outcome(tmp_path):
    test = tmp_path / "test_fail.py"
    test.write_text("def test_wrong(skip_outcome):\n"
                    "    out = skip_outcome('mov qword ptr [rdi], rax')\n"
                    "    assert out.skip_len == 4, str(out)\n")
    p = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p",
                        "emulator.skipcheck.pytest_plugin", str(test)], capture_output=True, text=True, cwd=tmp_path,
                       env={**os.environ, "PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1", "PYTHONPATH": str(ROOT)},
                       timeout=300)
    assert p.returncode == 1
    assert "mov qword ptr [rdi], rax @plain (skip): pass; length 3, skip_len 3" in p.stdout


# --------------------------------------------------------------------------
# What the fixtures call
# --------------------------------------------------------------------------

def test_run_instruction_outcome_fields():
    out = run_instruction("add dword ptr [rax + rbx*4 + 0x10], 5")
    assert out.ok and out.skipped and out.length == out.skip_len == 5      # 83 44 98 10 05
    assert out.new_rip == out.rip + 5 and out.dest_unchanged and out.regs_unchanged and out.next_ran
    assert any("skip len=5" in f for f in out.faults)
    # a push's "plain" is the droppable stack
    push = run_instruction("push qword ptr [rsi]")
    assert push.placement == "stack" and push.ok and push.skip_len == 2
    na = run_instruction("mov byte ptr [rdi], al", "split")
    assert na.status == "n/a" and not na.ok and "1-byte" in na.detail


@pytest.mark.parametrize("bad,msg", [
    ("mov rax, rbx", "not a memory write"),
    ("frobnicate", "does not assemble"),
    ("lock bts rax, rcx", "aborts Unicorn"),
    ("mov [rdi], al\nmov [rdi], al", "exactly one instruction"),
    (b"", "no instruction bytes"),
])
def test_run_instruction_refuses_bad_input(bad, msg):
    with pytest.raises(UsageError, match=msg):
        run_instruction(bad)


def test_run_instruction_bad_options():
    with pytest.raises(UsageError, match="unknown placement"):
        run_instruction("mov byte ptr [rdi], al", "sideways")
    with pytest.raises(UsageError, match="unknown policy"):
        run_instruction("mov byte ptr [rdi], al", policy="kill")


def test_oom_machine_low_layout_and_retry():
    om = oom_machine("mov dword ptr [edi], eax", policy="retry", low=True)
    try:
        assert om.oom_page < 1 << 32
        res = om.run({"rdi": (0xDEAD << 32) | om.oom_page})     # 0x67: the upper half is ignored
        assert res.outcome == "livelock" and res.faults[-1].address == om.oom_page
    finally:
        om.close()
