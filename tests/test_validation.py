"""The validation set (emulator/calibrate/validation/): its C bodies build with
gcc at every flavour into images the emulator loads, the code is right on the
real CPU (ChaCha20 against the Python reference, natively) and in the emulator
(the C vgetrandom byte for byte against our assembly one; every body returns
natively what it returns emulated), the held-out part is the fixed one, and
`bench --validate` runs end to end.  Accuracy is `make bench`'s business."""
from __future__ import annotations

import ctypes
import json
import math
import os
import platform
import random
import shutil
import subprocess
import sys

import pytest

from emulator.calibrate.validation import bodies, build
from emulator.calibrate.validation.kernels import KERNELS

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NATIVE = platform.machine() in ("x86_64", "AMD64")
needs_gcc = pytest.mark.skipif(shutil.which("gcc") is None,
                               reason="gcc is not installed: the C bodies of the validation set cannot be built")
needs_x86 = pytest.mark.skipif(not NATIVE, reason="native runs need an x86-64 CPU")


@pytest.fixture(scope="module")
def images():
    if shutil.which("gcc") is None:
        pytest.skip("gcc is not installed: the C bodies of the validation set cannot be built")
    out = {f"gcc-{f}": build.build_gcc(f) for f in ("O0-scalar", "O2-scalar", "O3-sse2")}
    out[bodies.ASM_IMAGE] = build.build_asm(KERNELS)
    return out


@needs_gcc
@pytest.mark.parametrize("flavor", sorted(build.FLAVORS))
def test_every_flavour_builds_a_faithful_image(flavor):
    from vdso.loader import check_faithful
    img = build.build_gcc(flavor)
    assert img.rng_data_offset == -4 * 4096                 # found from the code, as for a vdso.so
    for b in bodies.C_BODIES:
        check_faithful(img, b.symbol)                       # no AVX: Unicorn runs it as the CPU does


def test_the_held_out_part_is_the_fixed_one():
    cs = bodies.cases()
    held = {(c.image, c.body.name) for c in cs if c.held_out}
    dev = {(c.image, c.body.name) for c in cs if not c.held_out}
    assert held and dev and not held & dev
    assert all(c.held_out for c in cs if c.image.startswith("gcc-O3"))
    assert all(c.held_out for c in cs if c.body.name == "vgetrandom")
    assert {n for i, n in held if i == bodies.ASM_IMAGE} == set(bodies.HELD_OUT_KERNELS)
    assert not any(c.held_out for c in cs if c.image.startswith(("gcc-O0", "gcc-O2")) and c.body.name != "vgetrandom")


def test_a_missing_compiler_is_one_line(monkeypatch):
    monkeypatch.setattr(shutil, "which", lambda name: None)
    with pytest.raises(build.CompilerMissing, match="gcc is not installed"):
        build.build_gcc("O2-scalar")


@needs_x86
def test_the_c_chacha20_is_right_on_the_cpu(images):
    """The C block function natively against vdso/chacha20.py, with a counter
    that carries into its high word and is written back."""
    from emulator.calibrate.native_vdso import map_image
    from vdso.chacha20 import chacha20_blocks
    rnd = random.Random(7)
    for name in ("gcc-O0-scalar", "gcc-O3-sse2"):
        img = map_image(images[name])
        try:
            f = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_uint64)(
                img.symbol("chacha20_blocks"))
            key = bytes(rnd.randrange(256) for _ in range(32))
            dst = (ctypes.c_uint8 * (64 * 5))()
            kbuf = (ctypes.c_uint8 * 32).from_buffer_copy(key)
            ctr = ctypes.c_uint64(2**32 - 2)
            f(dst, kbuf, ctypes.byref(ctr), 5)
            want, after = chacha20_blocks(key, 2**32 - 2, 5)
            assert bytes(dst) == want and ctr.value == after == 2**32 + 3
        finally:
            img.close()


def test_the_c_vgetrandom_matches_our_assembly_one_in_the_emulator(images):
    """Same seed, same bytes: the C vgetrandom and asm/vgetrandom.s, each call."""
    from emulator.run import RunConfig, new_process
    from vdso.asm_build import build_image
    outs = []
    for img in (images["gcc-O2-scalar"], images["gcc-O0-scalar"], build_image("builtin")):
        _, m, caller = new_process(RunConfig(image=img, sizes=[256], calls=1, seed=11))
        got = []
        for s in (1, 63, 64, 100, 96, 4096, 7):
            r = caller.getrandom(s)
            assert r.outcome == "returned" and r.ret == s
            got.append(m.read(caller.buffer, s))
        outs.append(got)
    assert outs[0] == outs[2] and outs[1] == outs[2]


@needs_x86
def test_every_body_returns_natively_what_it_returns_emulated(images):
    from emulator.calibrate.validation import emulated, native_run
    # the C bodies (the kernels return whatever rax held on entry)
    cs = [c for c in bodies.cases(flavors=["O0-scalar", "O2-scalar", "O3-sse2"], asm=False, quick=True)
          if c.body.kind == "call"]
    native = native_run.returns(cs, images)
    emu = emulated.returns(cs, images)
    assert native == emu
    assert len(set(native.values())) > 10                   # the bodies compute something


@needs_x86
def test_native_measurement_gives_finite_positive_figures(images):
    from emulator.calibrate.validation import native_run
    cs = [c for c in bodies.cases(flavors=["O2-scalar"], quick=True)
          if c.body.name in ("vgetrandom", "fnv1a") or c.image == bodies.ASM_IMAGE][:12]
    got = native_run.measure(cs, images, rounds=1)
    assert set(got) == set(cs)
    assert all(math.isfinite(v) and v > 0 for v in got.values())


@needs_x86
@needs_gcc
@pytest.mark.slow
def test_bench_validate_end_to_end_json():
    r = subprocess.run([sys.executable, "-m", "emulator.cli.main", "bench", "--validate", "--quick", "--json",
                        "--profile", "zen4"], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout, parse_constant=lambda c: pytest.fail(f"{c} in the JSON"))
    prof = d["profiles"][0]
    assert prof["profile"] == "zen4-default" and prof["path"].endswith("zen4.toml")
    assert prof["summary"]["held_out"]["cases"] > 0 and prof["summary"]["development"]["cases"] > 0
    rows = prof["rows"]
    assert {r["held_out"] for r in rows} == {True, False}
    assert all(r["predicted"] > 0 and r["measured"] > 0 for r in rows)
