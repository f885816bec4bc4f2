"""Injected events: fork mid-call, reseed, not-ready."""
from __future__ import annotations

import pytest

from emulator.records import Injection
from emulator.run import RunConfig, new_process
from vdso.abi import STATE_SIZE

pytestmark = pytest.mark.host_vdso


def _proc(image, seed=9):
    return new_process(RunConfig(image=image, sizes=[256], calls=1, seed=seed))


def test_fork_child_sees_a_wiped_state_and_shares_the_buffer_cow(host_image):
    k, m, caller = _proc(host_image)
    caller.getrandom(256)
    before = m.read(caller.states[0], STATE_SIZE)
    assert before != bytes(STATE_SIZE)
    child = m.fork()
    assert child.read(caller.states[0], STATE_SIZE) == bytes(STATE_SIZE)     # VM_WIPEONFORK
    assert child.read(caller.buffer, 256) == m.read(caller.buffer, 256)      # private anon: copied
    assert m.read(caller.states[0], STATE_SIZE) == before
    vma = child.mm.find_vma(caller.states[0])
    from mm import flags as F
    assert vma.vm_flags & F.VM_DROPPABLE                                      # inherited


def test_fork_mid_call_child_recovers_through_the_generation_check(host_image):
    k, m, caller = _proc(host_image)
    caller.getrandom(256)
    res = caller.getrandom(256, injections=[Injection(60, "fork")])
    assert res.outcome == "returned" and res.ret == 256
    assert len(res.children) == 1
    ch = res.children[0]
    assert ch.outcome == "returned" and ch.ret == 256 and len(ch.output) == 256
    # the child reseeded (its state read as zeros: generation 0 != kernel generation)
    assert any(s.nr == 318 and s.args[1] == 32 for s in ch.syscalls)
    windows = {res.output[i:i + 16] for i in range(0, 256, 16)}
    assert not any(ch.output[i:i + 16] in windows for i in range(0, 256, 16))
    child = m.children[-1]
    assert caller.state(machine=child).generation == k.generation


def test_reseed_mid_call_is_noticed_by_the_final_recheck(host_image):
    k, m, caller = _proc(host_image)
    caller.getrandom(256)
    res = caller.getrandom(256, injections=[Injection(40, "reseed")])
    assert res.ret == 256
    assert [s.args[1] for s in res.syscalls if s.nr == 318] == [32]
    assert caller.state().generation == k.generation == 2


def test_not_ready_falls_back_to_the_syscall(host_image):
    k, m, caller = _proc(host_image)
    caller.getrandom(64)
    res = caller.getrandom(64, injections=[Injection(0, "not-ready")])
    assert res.ret == 64
    fb = [s for s in res.syscalls if s.nr == 318]
    assert len(fb) == 1 and fb[0].args[1] == 64 and res.output == fb[0].data
