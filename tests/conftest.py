"""Shared fixtures: images, machines, and a snippet runner for hand-written
x86 code placed against droppable pages."""
from __future__ import annotations

import pytest

from vdso.elf_image import host_has_vgetrandom


def pytest_collection_modifyitems(config, items):
    if host_has_vgetrandom():
        return
    skip = pytest.mark.skip(reason="the running kernel's vDSO has no __vdso_getrandom (needs Linux 6.11+)")
    for item in items:
        if "host_vdso" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def host_image():
    if not host_has_vgetrandom():
        pytest.skip("the running kernel's vDSO has no __vdso_getrandom (needs Linux 6.11+)")
    from vdso.elf_image import load_host
    return load_host()


@pytest.fixture(scope="module")
def twin_native():
    """Skip cleanly where the native twin cannot run: no __vdso_getrandom, no ptrace."""
    from vdso.elf_image import host_has_vgetrandom
    if not host_has_vgetrandom():
        pytest.skip("the running kernel's vDSO has no __vdso_getrandom (needs Linux 6.11+)")
    from emulator.twin import TwinUnavailable, check_ptrace
    try:
        check_ptrace()
    except TwinUnavailable as e:
        pytest.skip(str(e))
