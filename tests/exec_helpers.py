"""What the `faultpath exec` tests share: the glibc 2.41 client programs, and
auxv_probe (tests/clients/auxv_probe.c, no libc), each or a skip with the
reason."""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from clients import glibc_cache

CLIENTS = Path(__file__).resolve().parent / "clients"


def glibc_programs() -> dict[str, Path]:
    """name -> path of every client built against glibc 2.41."""
    cache = glibc_cache.load()
    if cache is None:
        pytest.skip("glibc 2.41 not fetched: run `make glibc`")
    if not cache.ready:
        pytest.skip(f"glibc 2.41 unavailable: {cache.reason}")
    try:
        return glibc_cache.build(cache)
    except glibc_cache.Unavailable as e:
        pytest.skip(str(e))


def build_auxv_probe(directory: Path) -> str:
    """auxv_probe, built by the host's gcc with -nostdlib -static."""
    if shutil.which("gcc") is None:
        pytest.skip("gcc not found: auxv_probe is built from C")
    out = directory / "auxv_probe"
    subprocess.run(["gcc", "-O1", "-nostdlib", "-static", "-fno-stack-protector", "-fno-pie", "-no-pie",
                    "-o", str(out), str(CLIENTS / "auxv_probe.c")], check=True, capture_output=True)
    return str(out)
