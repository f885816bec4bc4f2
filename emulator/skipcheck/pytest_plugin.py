"""faultpath's pytest plugin: write instruction-skip regression tests in a
few lines.

Registered through the ``pytest11`` entry point (or ``-p
emulator.skipcheck.pytest_plugin``).  Fixtures:

``skip_outcome``
    ``skip_outcome(insn, placement="plain", policy="skip", variant="base")``
    runs one instruction (Intel syntax as keystone reads it, GAS prefix
    words allowed, or raw bytes) against a droppable page under persistent
    OOM and returns its outcome (`emulator.skipcheck.execute.Run`): ``skipped``,
    ``skip_len``, ``length``, ``rip``/``new_rip``, ``refaulted``,
    ``livelock``, ``dest_unchanged``, ``regs_unchanged``, ``next_ran``,
    ``status`` ("pass", "fail", "refused", "n/a"), ``detail``, ``faults``
    and ``ok`` (all checks passed).  Placements: plain, split, riprel,
    page-end, stack, stack-split, rep-partway (``SKIP_PLACEMENTS``).

``droppable_oom_machine``
    ``droppable_oom_machine(code, policy="skip", low=False)`` assembles
    ``code`` (several lines allowed) into a Machine whose ``oom_page`` is
    droppable and cannot be allocated; ``.run(regs)`` runs it to the int3
    after the code and returns the CallResult (faults, outcome).  Machines
    are closed after the test.

Example::

    def test_my_store_is_skipped(skip_outcome):
        out = skip_outcome("mov qword ptr [rdi + 8], rax")
        assert out.skipped and out.skip_len == 4 and out.next_ran
        assert out.dest_unchanged and out.regs_unchanged

    def test_retry_spins(skip_outcome):
        out = skip_outcome("lock xadd qword ptr [rdi], rax", policy="retry")
        assert out.refaulted and out.livelock and not out.skipped
"""
from __future__ import annotations

import pytest

# emulator.skipcheck.placements.PLACEMENTS, spelled out so that loading the
# plugin (in every pytest session once faultpath is installed) stays cheap
SKIP_PLACEMENTS = ("plain", "split", "riprel", "page-end", "stack", "stack-split", "rep-partway")


def pytest_configure(config) -> None:
    config.addinivalue_line(
        "markers", "faultpath_policy(name): droppable-OOM policy for skip_outcome/droppable_oom_machine "
                   "when the call does not give one (skip or retry)")


def _default_policy(request) -> str:
    m = request.node.get_closest_marker("faultpath_policy")
    return m.args[0] if m and m.args else "skip"


@pytest.fixture
def skip_outcome(request):
    """Run one instruction against a droppable OOM page; returns its Run."""
    from emulator.skipcheck.runner import run_instruction
    default = _default_policy(request)

    def run(insn, placement: str = "plain", policy: str | None = None, variant: str = "base"):
        return run_instruction(insn, placement, policy or default, variant)
    return run


@pytest.fixture
def droppable_oom_machine(request):
    """Factory: an OomMachine around user code (closed after the test)."""
    from emulator.skipcheck.oom_machine import oom_machine
    default = _default_policy(request)
    made = []

    def make(code, policy: str | None = None, low: bool = False):
        om = oom_machine(code, policy or default, low)
        made.append(om)
        return om
    yield make
    for om in made:
        om.close()
