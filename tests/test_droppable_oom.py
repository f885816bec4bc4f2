"""OOM and drops on the vDSO's droppable state page, following DESIGN.md's
kernel-mode rules; run on the host vDSO."""
from __future__ import annotations

import pytest

from emulator.records import Injection
from emulator.run import RunConfig, find_state_write, new_process
from provenance import check_output

pytestmark = pytest.mark.host_vdso


def _proc(image, policy="skip", seed=5, size=256):
    cfg = RunConfig(image=image, sizes=[size], calls=1, seed=seed, droppable_oom=policy)
    k, m, caller = new_process(cfg)
    return cfg, k, m, caller


def _keys(results) -> list[bytes]:
    return [s.data for r in results for s in r.syscalls if s.nr == 318 and len(s.data) == 32]


def test_drop_at_every_10th_instruction_of_a_256_byte_call(host_image):
    cfg, k, m, caller = _proc(host_image)
    caller.getrandom(256)
    n = caller.getrandom(256).instructions
    assert n > 100
    seen_reseed = 0
    for i in range(0, n + 1, 10):
        cfg, k, m, caller = _proc(host_image)
        w = caller.getrandom(256)
        w2 = caller.getrandom(256)
        res = caller.getrandom(256, injections=[Injection(i, "drop")])
        assert res.outcome == "returned", (i, res.outcome_detail)
        assert res.ret == 256 and len(res.output) == 256
        keys = _keys([w, w2, res])
        check_output(res.output, [s.data for s in res.syscalls], keys)
        seen_reseed += any(s.nr == 318 and s.args[1] == 32 for s in res.syscalls)
    assert seen_reseed, "no drop was ever noticed by the generation check"


def test_transient_oom_with_skip_right_after_a_drop(host_image):
    cfg, k, m, caller = _proc(host_image)
    w = caller.getrandom(256)
    at = find_state_write(cfg, 256)
    res = caller.getrandom(256, injections=[Injection(at, "drop"), Injection(at, "oom:2")])
    assert res.outcome == "returned" and res.ret == 256
    skips = [f for f in res.faults if f.decision == "skip"]
    assert len(skips) == 2
    for f in skips:
        assert f.user and f.skip_len == len(f.insn_bytes) and f.new_rip == f.rip + f.skip_len
    check_output(res.output, [s.data for s in res.syscalls], _keys([w, res]))


def test_skipped_generation_write_costs_a_second_reseed(host_image):
    """Drop the state at entry with two failing allocations: the in_use and the
    generation stores are skipped, so the final re-check sees generation 0 and
    goes round retry_generation once more, with a second reseed."""
    cfg, k, m, caller = _proc(host_image)
    w = caller.getrandom(256)
    res = caller.getrandom(256, injections=[Injection(0, "drop"), Injection(0, "oom:2")])
    assert res.outcome == "returned" and res.ret == 256
    skipped = [f.insn for f in res.faults if f.decision == "skip"]
    assert len(skipped) == 2
    assert any("0x80" in s for s in skipped), skipped      # state->generation = ...
    reseeds = [s for s in res.syscalls if s.nr == 318 and s.args[1] == 32]
    assert len(reseeds) == 2
    check_output(res.output, [s.data for s in res.syscalls], _keys([w, res]))


def test_persistent_oom_with_skip_spins_in_the_kernel_copy(host_image):
    cfg, k, m, caller = _proc(host_image)
    caller.getrandom(256)
    res = caller.getrandom(256, injections=[Injection(0, "drop"), Injection(0, "oom")])
    assert res.outcome == "livelock"
    assert "copy_to_user" in res.outcome_detail
    assert any(f.decision == "skip" and f.user for f in res.faults)        # user writes rescued
    spin = [f for f in res.faults if not f.user]
    assert spin and spin[-1].decision == "livelock" and spin[-1].repeats > m.livelock_limit
    assert res.syscalls[-1].outcome == "livelock"


def test_persistent_oom_with_retry_livelocks_at_the_first_user_write(host_image):
    cfg, k, m, caller = _proc(host_image, policy="retry")
    caller.getrandom(256)
    res = caller.getrandom(256, injections=[Injection(0, "drop"), Injection(0, "oom")])
    assert res.outcome == "livelock"
    f = res.faults[-1]
    assert f.user and f.access == "write" and f.decision == "livelock"
    assert f.repeats > m.livelock_limit
    assert f"rip={f.rip:#x}" in res.outcome_detail
    first_write = [x for x in res.faults if x.access == "write"][0]
    assert first_write.rip == f.rip


def test_transient_oom_with_retry_completes(host_image):
    cfg, k, m, caller = _proc(host_image, policy="retry")
    w = caller.getrandom(256)
    res = caller.getrandom(256, injections=[Injection(0, "drop"), Injection(0, "oom:5")])
    assert res.outcome == "returned" and res.ret == 256
    assert any(f.decision == "retry-oom" for f in res.faults)
    check_output(res.output, [s.data for s in res.syscalls], _keys([w, res]))
