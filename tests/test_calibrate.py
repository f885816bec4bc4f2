"""`faultpath calibrate` and `faultpath bench` on this machine: the native
harness runs, the vDSO figures are monotonic in size and sane, the profile is
written atomically and loads back, and bench runs end to end (--quick).
Accuracy is the benchmark's business (make bench), not asserted here."""
from __future__ import annotations

import os
import platform
import subprocess
import sys

import pytest

from emulator.errors import FaultpathError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

pytestmark = pytest.mark.skipif(platform.machine() not in ("x86_64", "AMD64"),
                                reason="native measurement needs an x86-64 CPU")


@pytest.fixture(scope="module")
def measured():
    from emulator.calibrate.measure import measure_all
    return measure_all(quick=True)


def test_native_measurements_are_sane(measured):
    from emulator.calibrate.measure import check_measurements
    from emulator.calibrate.native_vdso import VDSO_SIZES
    assert check_measurements(measured) == []
    v = measured["vdso"]
    assert measured["vdso_image"] in ("host", "builtin")
    assert sorted(v) == list(VDSO_SIZES)
    sizes = sorted(v)
    assert all(v[b] >= v[a] * 0.97 for a, b in zip(sizes, sizes[1:]))   # monotonic (3% noise)
    assert 3 < v[1] < 200 and 2_000 < v[4096] < 100_000
    assert 0.2 < measured["tsc_per_core_cycle"] < 3
    # the chains of known latency agree with each other: imul is 3 adds
    ch = measured["chains"]
    assert ch["imul"] == pytest.approx(3 * ch["add"], rel=0.1)
    assert ch["add_x8"] < 0.5 * ch["add"]                 # independent adds overlap
    s = measured["syscall"]
    assert s[4096] > s[64] > 0.8 * s[1] > 50
    f = measured["faults"]
    assert f["write_zero_fill"] > 100 and f["read_zero_page"] > 100


def test_the_fitted_profile_is_written_atomically_and_loads(measured, tmp_path):
    from emulator.calibrate.fit import fit_profile
    from emulator.calibrate.output import dump_toml, write_atomic
    from emulator.cycles.profile import load_profile
    sec, com = fit_profile(measured, name="t")
    out = tmp_path / "cal.toml"
    write_atomic(str(out), dump_toml(sec, "test", com))
    p = load_profile(str(out))
    assert p.name == "t" and p.tsc_per_core_cycle == pytest.approx(measured["tsc_per_core_cycle"], rel=1e-3)
    assert p.forms["paddd"]["ports"] == "VALU"            # from the base profile
    assert p.event["syscall_entry_exit"] > 0 and p.event["alloc"] >= 0
    assert p.measured["vdso"]["4096"] > 0
    # a failed write leaves the old file alone and no temporary behind
    before = out.read_text()
    with pytest.raises(Exception):
        write_atomic(str(out), "[not toml")
    assert out.read_text() == before
    assert sorted(x.name for x in tmp_path.iterdir()) == ["cal.toml"]


def test_calibrate_refuses_nonsense_measurements():
    from emulator.calibrate.measure import check_measurements
    bad = {"vdso": {1: 20.0, 4: 5.0}, "tsc_per_core_cycle": 0.7}
    assert any("monotonic" in p for p in check_measurements(bad))


def test_the_builtin_image_runs_natively_or_says_why():
    from emulator.calibrate.harness import Harness
    from emulator.calibrate.native import Mapping
    from emulator.calibrate.native_vdso import builtin_native_vdso
    try:
        v = builtin_native_vdso()
    except FaultpathError as e:
        pytest.skip(f"VDSO_BASE taken in this process: {e}")
    import ctypes
    st = Mapping(4096, flags=0x28, nohuge=False)
    buf = (ctypes.c_char * 64)()
    f = ctypes.CFUNCTYPE(ctypes.c_long, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_uint, ctypes.c_void_p,
                         ctypes.c_size_t)(v.getrandom)
    assert f(buf, 64, 0, st.addr, 144) == 64
    assert bytes(buf) != bytes(64)
    assert Harness().time_calls(v.getrandom, [ctypes.addressof(buf), 16, 0, st.addr, 144], 100) > 0
    st.close()
    for m in v.keep:
        m.close()


def _fp(*args, timeout=120):
    return subprocess.run([sys.executable, "-m", "emulator.cli.main", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout)


def test_calibrate_cli_writes_a_profile(tmp_path):
    out = tmp_path / "p.toml"
    r = _fp("calibrate", "--quick", "-o", str(out))
    assert r.returncode == 0, r.stderr
    assert "wrote" in r.stdout and out.exists()
    from emulator.cycles.profile import load_profile
    assert load_profile(str(out)).tsc_per_core_cycle > 0


def test_bench_runs_end_to_end_quick():
    r = _fp("bench", "--quick", "--profile", "zen4")
    assert r.returncode == 0, r.stderr
    out = r.stdout
    for needle in ("predicted", "measured", "vdso 1 B", "vdso 4096 B", "syscall 64 B", "fault write_zero_fill",
                   "chacha20 block", "median |error|"):
        assert needle in out, (needle, out)


def test_bench_json(tmp_path):
    import json
    r = _fp("bench", "--quick", "--json", "--profile", "zen4")
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    rows = d["profiles"][0]["rows"]
    assert {x["group"] for x in rows} >= {"vdso", "syscall", "fault"}
    assert all(x["predicted"] > 0 for x in rows if x["group"] == "vdso")


def test_bench_bad_profile_is_one_line():
    r = _fp("bench", "--quick", "--profile", "no-such-profile")
    assert r.returncode == 2
    assert "no such profile" in r.stderr and "Traceback" not in r.stderr


def test_calibrate_refuses_a_bad_base_before_measuring(tmp_path):
    out = tmp_path / "p.toml"
    r = _fp("calibrate", "--quick", "--base", "bogus", "-o", str(out))
    assert r.returncode == 2
    assert "no such profile" in r.stderr and "Traceback" not in r.stderr
    assert "measuring" not in r.stderr and not out.exists()      # refused before the first measurement


def test_a_profile_name_with_quotes_and_newlines_round_trips(measured, tmp_path):
    import tomllib

    from emulator.calibrate.fit import fit_profile
    from emulator.calibrate.output import dump_toml, write_atomic
    from emulator.cycles.profile import load_profile
    name = 'ev"il\nname\\ \x01 ok'
    sec, com = fit_profile(measured, name=name)
    text = dump_toml(sec, "header with a\nnewline", com)
    assert tomllib.loads(text)["meta"]["name"] == name
    out = tmp_path / "n.toml"
    write_atomic(str(out), text)
    assert load_profile(str(out)).name == name


def test_non_finite_figures_never_reach_a_profile(measured):
    from emulator.calibrate.fit import fit_profile
    from emulator.calibrate.output import dump_toml, toml_value
    meas = {**measured, "faults": {**measured["faults"], "cow_copy": float("nan")}}
    sec, com = fit_profile(meas, name="t")
    assert "nan" not in dump_toml(sec, "", com)
    with pytest.raises(FaultpathError, match="non-finite"):
        toml_value(float("inf"))
