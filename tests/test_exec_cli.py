"""`faultpath exec` on the command line: the program's output and exit status
pass through, faultpath's summary goes to stderr, --json holds the whole
report, --native prints both sequences side by side; bad input is one line
and status 2."""
from __future__ import annotations

import json
import os

import pytest

from emulator.exec.strace import have_strace
from exec_helpers import build_auxv_probe, glibc_programs
from test_cli import fp

pytestmark = pytest.mark.skipif(os.uname().machine != "x86_64", reason="x86-64 programs")


@pytest.fixture(scope="module")
def probe(tmp_path_factory) -> str:
    return build_auxv_probe(tmp_path_factory.mktemp("probe"))


def test_output_and_status_pass_through(probe):
    r = fp("exec", probe, "x")
    assert r.returncode == 7, r.stderr
    assert r.stdout.splitlines()[:3] == ["sp_mod16 0", "argc 2", f"argv {probe}"]
    assert "faultpath exec: pid" in r.stderr and "exited with 7" in r.stderr
    assert "unimplemented (-ENOSYS): getpriority x1" in r.stderr


def test_json_report(probe, tmp_path):
    out = tmp_path / "r.json"
    r = fp("exec", "--json", str(out), "--seed", "9", "--env", "A=b", probe)
    assert r.returncode == 7 and r.stdout == "", r.stderr
    doc = json.loads(out.read_text())
    assert doc["stdout"].startswith("sp_mod16 0\nargc 1\n") and "env A=b\n" in doc["stdout"]
    (p,) = doc["processes"]
    assert p["exit_code"] == 7 and p["unimplemented"] == {"getpriority": 1}
    assert doc["syscalls"][0][0] == "execve(PROG, ARGV, ENV) = 0"
    assert doc["config"]["seed"] == 9 and doc["config"]["env"] == ["A=b"]


def test_trace_on_stderr(probe):
    r = fp("exec", "--trace", probe)
    (line,) = [x for x in r.stderr.splitlines() if x.startswith("P0  getpriority(")]
    assert line.startswith("P0  getpriority(0x0, 0x0, 0x0") and line.endswith(" = -1 ENOSYS (Function not implemented)")
    assert "P0  exit_group(7) = ?" in r.stderr and "P0  +++ exited with 7 +++" in r.stderr


@pytest.mark.skipif(not have_strace(), reason="strace not found")
def test_native_side_by_side():
    prog = glibc_programs()["getrandom_loop_static"]
    r = fp("exec", "--native", str(prog), "3")
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines()[0].startswith("native (strace -f)")
    assert any(line.startswith("execve(PROG, ARGV, ENV) = 0") and " = execve(" in line
               for line in r.stdout.splitlines())
    assert "program output: the same natively and emulated" in r.stdout
    assert not [line for line in r.stdout.splitlines() if " | " in line or " < " in line or " > " in line]


@pytest.mark.parametrize("args,needle", [
    (("exec", "/nonexistent/prog"), "no such file"),
    (("exec", "--inject", "explode@getrandom#1:0", "{probe}"), "unknown kind"),
    (("exec", "--inject", "drop@getrandom#0:5", "{probe}"), "counted from 1"),
    (("exec", "--inject", "drop@syscall:nosuchcall", "{probe}"), "no x86-64 syscall"),
    (("exec", "--inject", "drop@elsewhere", "{probe}"), "WHERE"),
    (("exec", "--inject", "signal:SIGNOPE@1", "{probe}"), "unknown signal"),
    (("exec", "--memory", "1", "{probe}"), "--memory"),
    (("exec", "--budget", "0", "{probe}"), "--budget"),
    (("exec", "--allow-read", "/nonexistent/dir", "{probe}"), "--allow-read"),
    (("exec", "--env", "NOVALUE", "{probe}"), "--env"),
    (("exec", "--seed", "-1", "{probe}"), "--seed"),
    (("exec", "--json", "/nonexistent/dir/r.json", "{probe}"), "--json"),
    (("exec", "{text}"), "not an ELF"),
    (("exec",), "PROGRAM"),
])
def test_bad_input(probe, tmp_path, capsys, args, needle):
    """In-process through main(argv), as the bad-input corpus runs."""
    from emulator.cli.main import main
    text = tmp_path / "script"
    text.write_text("#!/bin/sh\necho hi\n")
    text.chmod(0o755)
    assert main([a.format(probe=probe, text=text) for a in args]) == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in err and needle in lines[0], err


def test_budget_ends_the_program(probe):
    r = fp("exec", "--budget", "100", probe)
    assert r.returncode == 128 + 9 and "budget" in r.stderr
