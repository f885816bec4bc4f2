"""The command line: bad input is one line on stderr, exit status 2, no
traceback; good runs print what the README promises."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from vdso.elf_image import host_has_vgetrandom

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def fp(*args, timeout=300):
    return subprocess.run([sys.executable, "-m", "emulator.cli.main", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout)


def assert_bad(r, *needles):
    assert r.returncode == 2, (r.returncode, r.stderr)
    lines = [l for l in r.stderr.splitlines() if l.strip()]
    assert len(lines) == 1, r.stderr
    assert "Traceback" not in r.stderr
    for n in needles:
        assert n in lines[0], lines[0]


@pytest.fixture
def host_vdso_file(tmp_path):
    if not host_has_vgetrandom():
        pytest.skip("host vDSO lacks __vdso_getrandom")
    from vdso.elf_image import _host_vdso_bytes
    p = tmp_path / "vdso.so"
    p.write_bytes(_host_vdso_bytes())
    return p


def test_not_elf(tmp_path):
    p = tmp_path / "x.so"
    p.write_bytes(b"hello world" * 10)
    assert_bad(fp("run", "--image", str(p)), "not an ELF")


def test_missing_file():
    assert_bad(fp("run", "--image", "/nonexistent/vdso.so"), "no such file")


def test_truncated_elf(tmp_path, host_vdso_file):
    p = tmp_path / "t.so"
    p.write_bytes(host_vdso_file.read_bytes()[:200])
    assert_bad(fp("run", "--image", str(p)))


def test_elf_without_getrandom():
    # any ordinary x86-64 ELF lacks __vdso_getrandom
    assert_bad(fp("run", "--image", sys.executable), "__vdso_getrandom")


@pytest.mark.parametrize("size", ["-1", "99999999999", "abc"])
def test_bad_sizes(size):
    assert_bad(fp("run", "--image", "host", "--size", size))


@pytest.mark.parametrize("spec", ["explode@3", "drop", "drop@x", "oom:0@1", "drop@-4"])
def test_bad_inject(spec):
    assert_bad(fp("run", "--image", "host", "--inject", spec))


def test_bad_flag_and_memory():
    assert_bad(fp("run", "--bogus"))
    assert_bad(fp("run", "--image", "host", "--memory", "1"))
    assert_bad(fp("run", "--image", "host", "--droppable-oom", "maybe"))


@pytest.mark.host_vdso
def test_run_json_fields(host_vdso_file):
    r = fp("run", "--image", str(host_vdso_file), "--size", "64,300", "--calls", "2", "--json")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["image"]["name"] == str(host_vdso_file)
    assert [c["size"] for c in doc["calls"]] == [64, 300]
    for c in doc["calls"]:
        for key in ("size", "ret", "output", "instructions", "cycles", "faults", "syscalls", "outcome"):
            assert key in c
        assert c["outcome"] == "returned" and len(bytes.fromhex(c["output"])) == c["size"]
    s = doc["calls"][0]["syscalls"][0]
    assert {"nr", "args", "ret", "data"} <= set(s)


@pytest.mark.host_vdso
def test_kernel_copy_spin_scenario_human():
    r = fp("run", "--image", "host", "--scenario", "kernel-copy-spin")
    assert r.returncode == 0, r.stderr
    assert "outcome=livelock" in r.stdout and "copy_to_user" in r.stdout


@pytest.mark.host_vdso
def test_state_offset_places_the_state_and_straddling_gives_efault():
    r = fp("run", "--image", "host", "--size", "64", "--calls", "2", "--state-offset", "4024", "--json")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert int(doc["config"]["state"], 16) % 4096 == 4024
    assert [c["ret"] for c in doc["calls"]] == [-14, -14]
    r = fp("run", "--image", "host", "--size", "64", "--state-offset", "3952", "--prefault", "--json")
    doc = json.loads(r.stdout)
    assert doc["calls"][0]["ret"] == 64
    assert not [f for f in doc["calls"][0]["faults"] if f["address"] == doc["config"]["buffer"]]
    assert_bad(fp("run", "--image", "host", "--state-offset", "4096"), "--state-offset")
