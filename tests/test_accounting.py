"""Instruction accounting from the native block hook, checked two ways:
against a per-instruction Python code hook (an independent count), and
against native perf counts of the host vDSO on this CPU (DESIGN.md)."""
from __future__ import annotations

import pytest
from unicorn import UC_HOOK_CODE

from emulator.kernel import Kernel
from emulator.machine import Machine
from emulator.records import Injection
from emulator.libc import VgetrandomCaller

pytestmark = pytest.mark.host_vdso


def _machine(image):
    m = Machine(Kernel(image, seed=1))
    counter = [0]

    def hook(uc, addr, size, data):
        counter[0] += 1
    m.uc.hook_add(UC_HOOK_CODE, hook)   # test only: the product never does this
    return m, counter


def reexecuted(res) -> int:
    """A user fault that is resolved re-executes its instruction (the code hook
    sees both attempts); a skipped one retires once, as a no-op."""
    return sum(f.repeats for f in res.faults if f.user and f.decision != "skip")


@pytest.mark.parametrize("size", [1, 64, 100, 256, 4096])
def test_block_accounting_equals_a_code_hook_count(host_image, size):
    m, counter = _machine(host_image)
    caller = VgetrandomCaller(m, buffer_size=size)
    for _ in range(3):
        counter[0] = 0
        res = caller.getrandom(size)
        assert res.outcome == "returned"
        assert res.instructions == counter[0] - reexecuted(res)


def test_accounting_across_faults_and_injections(host_image):
    """Chunks end at faults, syscalls and injection points mid-block; the count
    still matches (a skipped instruction counts as retired: +1 per skip)."""
    m, counter = _machine(host_image)
    caller = VgetrandomCaller(m, buffer_size=512)
    caller.getrandom(512)
    counter[0] = 0
    res = caller.getrandom(512, injections=[Injection(37, "drop"), Injection(37, "oom:2"), Injection(501, "reseed")])
    assert res.outcome == "returned"
    assert sum(1 for f in res.faults if f.decision == "skip") == 2
    assert res.instructions == counter[0] - reexecuted(res)


@pytest.mark.parametrize("size,native", [(1, 96), (4, 103), (16, 119)])
def test_steady_state_counts_equal_native_perf_counts(host_image, size, native):
    """DESIGN.md: host vDSO instructions/call measured natively on this CPU."""
    m, _ = _machine(host_image)
    caller = VgetrandomCaller(m, buffer_size=size)
    counts = [caller.getrandom(size).instructions for _ in range(20)]
    assert min(counts) == native
