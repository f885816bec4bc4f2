"""Our own assembled vDSO (asm/) against the host kernel's, in the emulator:
same seed, same call sequence -> byte-identical outputs, identical syscall
sequences, identical state bytes after every call."""
from __future__ import annotations

import pytest

from emulator.records import Injection
from emulator.run import RunConfig, new_process
from vdso.abi import STATE_SIZE
from vdso.asm_build import build_image

pytestmark = pytest.mark.host_vdso

BOUNDARY_SIZES = [0, 1, 2, 3, 4, 7, 8, 15, 16, 31, 32, 63, 64, 65, 95, 96, 97, 127, 128, 129,
                  191, 192, 193, 255, 256, 257, 511, 1000, 1024, 2047, 4095, 4096]


@pytest.fixture(scope="module")
def builtin():
    return build_image("builtin")


def _run_both(host_image, builtin, sizes, seed, between=None):
    out = []
    for img in (host_image, builtin):
        k, m, caller = new_process(RunConfig(image=img, sizes=[max(sizes + [1])], calls=1, seed=seed))
        rows = []
        for i, s in enumerate(sizes):
            inj = list(between(i)) if between else []
            r = caller.getrandom(s, injections=inj)
            rows.append((r.ret, r.outcome, r.output,
                         [(c.nr, c.args[:3], c.ret, c.data) for c in r.syscalls],
                         m.read(caller.states[0], STATE_SIZE)))
        out.append(rows)
    return out


def test_every_boundary_size_from_fresh_and_warm(host_image, builtin):
    for s in BOUNDARY_SIZES:
        host, ours = _run_both(host_image, builtin, [s, s, s], seed=s)
        assert host == ours, f"size {s}"


def test_mixed_sequences(host_image, builtin):
    import random
    rnd = random.Random(2024)
    seq = [rnd.choice(BOUNDARY_SIZES + [rnd.randrange(0, 4097) for _ in range(8)]) for _ in range(60)]
    host, ours = _run_both(host_image, builtin, seq, seed=99)
    for i, (h, o) in enumerate(zip(host, ours)):
        assert h == o, f"call {i} size {seq[i]}"


@pytest.mark.parametrize("events", [["drop"], ["drop", "oom:1"], ["oom:3"], ["reseed"], ["drop", "reseed"],
                                    ["not-ready"]])
def test_events_between_calls_same_observable_outcome(host_image, builtin, events):
    seq = [64, 100, 300, 96, 33, 1024]

    def between(i):
        return [Injection(0, e) for e in events] if i % 2 == 1 else []
    host, ours = _run_both(host_image, builtin, seq, seed=5, between=between)
    for h, o in zip(host, ours):
        # return value, outcome, output, syscalls: identical (reseeds and fallbacks included)
        assert h[:4] == o[:4]
