"""The host kernel's real __vdso_getrandom, run in the emulator, against the
independent Python reference model (vdso/reference.py on vdso/chacha20.py)."""
from __future__ import annotations

import pytest

from emulator.run import RunConfig, run
from vdso.reference import ModelRng, ModelState, vgetrandom

pytestmark = pytest.mark.host_vdso

SIZES = [0, 1, 4, 16, 63, 64, 65, 95, 96, 97, 127, 128, 129, 255, 256, 1024, 4095, 4096]


def replay(results, state=None, rng=None):
    """Feed the model exactly the syscall data the run reports; return the
    model's results (the JSON is enough to recompute every output byte)."""
    state = state or ModelState.zeroed()
    rng = rng or ModelRng(generation=1)
    out = []
    for c in results:
        it = iter([s["data"] if isinstance(s, dict) else s.data for s in c.syscalls if s.nr == 318])
        out.append(vgetrandom(state, rng, c.size, 0, lambda n: next(it)))
    return out, state


@pytest.mark.parametrize("size", SIZES)
def test_single_size_matches_reference(host_image, size):
    rep = run(RunConfig(image=host_image, sizes=[size], calls=2, seed=size))
    res = rep["_results"]
    model, _ = replay(res)
    for c, m in zip(res, model):
        assert c.outcome == "returned"
        assert c.ret == size == m.ret
        assert c.output == m.output
        assert len(c.output) == size


def test_sequence_batch_carries_over(host_image):
    """Mixed sizes: the batch left by one call feeds the next."""
    seq = [1, 4, 16, 63, 64, 65, 95, 96, 97, 127, 128, 129, 255, 7, 1024, 3, 4095, 4096, 33]
    rep = run(RunConfig(image=host_image, sizes=seq, calls=len(seq), seed=7))
    res = rep["_results"]
    model, state = replay(res)
    assert [c.output for c in res] == [m.output for m in model]
    # exactly one reseed (the first call) in the whole sequence
    assert sum(1 for c in res for s in c.syscalls if s.nr == 318) == 1
    assert sum(m.reseeds for m in model) == 1


def test_json_is_enough_to_recompute_outputs(host_image):
    import json
    rep = run(RunConfig(image=host_image, sizes=[100, 300], calls=4, seed=3))
    rep.pop("_results")
    doc = json.loads(json.dumps(rep))
    state, rng = ModelState.zeroed(), ModelRng(generation=1)
    for c in doc["calls"]:
        data = iter(bytes.fromhex(s["data"]) for s in c["syscalls"] if s["nr"] == 318)
        m = vgetrandom(state, rng, c["size"], 0, lambda n: next(data))
        assert m.output.hex() == c["output"]


def test_same_seed_same_run(host_image):
    a = run(RunConfig(image=host_image, sizes=[256], calls=3, seed=11, scenario="fault-path"))
    b = run(RunConfig(image=host_image, sizes=[256], calls=3, seed=11, scenario="fault-path"))
    a.pop("_results"), b.pop("_results")
    assert a == b
    c = run(RunConfig(image=host_image, sizes=[256], calls=3, seed=12, scenario="fault-path"))
    c.pop("_results")
    assert c["calls"][0]["output"] != a["calls"][0]["output"]
