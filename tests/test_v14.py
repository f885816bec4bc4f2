"""The v14 ABI build: states from vgetrandom_alloc (451), a four-argument
vDSO entry, and the same outputs as the 6.11 build for the same keys."""
from __future__ import annotations

import struct

import pytest

from emulator.kernel import Kernel
from emulator.machine import Machine
from emulator.run import RunConfig, new_process
from emulator.usercopy import access_user
from mm import flags as F
from vdso.abi import NR_vgetrandom_alloc
from vdso.asm_build import build_image

EINVAL = 22


@pytest.fixture(scope="module")
def v14():
    return build_image("builtin-v14")


def _alloc(m: Machine, scratch: int, num: int, size: int = 0, addr: int = 0, flags: int = 0):
    access_user(m, scratch, struct.pack("<II", num, size), user=True)
    ret = m.do_syscall_now(NR_vgetrandom_alloc, [scratch, scratch + 4, addr, flags])
    return ret, struct.unpack("<II", m.read(scratch, 8))


def _machine(img):
    m = Machine(Kernel(img, seed=3))
    scratch = m.mm.mmap(0, 4096, F.PROT_READ | F.PROT_WRITE, F.MAP_PRIVATE | F.MAP_ANONYMOUS)
    m.sync_range(scratch, 4096)
    return m, scratch


@pytest.mark.parametrize("hint", [1, 3, 16, 17, 100, 1000])
def test_alloc_writes_back_counts_and_no_state_straddles(v14, hint):
    m, scratch = _machine(v14)
    ret, (num, size) = _alloc(m, scratch, hint)
    assert ret > 0 and ret % 4096 == 0
    assert num >= hint and size >= 144
    for i in range(num):
        start = ret + i * size
        assert start // 4096 == (start + 143) // 4096, f"state {i} straddles a page"
    vma = m.mm.find_vma(ret)
    want = F.VM_DROPPABLE | F.VM_NORESERVE | F.VM_WIPEONFORK | F.VM_DONTDUMP
    assert vma.vm_flags & want == want
    assert vma.end - vma.start >= num * size


@pytest.mark.parametrize("kw", [{"addr": 0x10000}, {"flags": 1}, {"size": 144}])
def test_alloc_rejects_nonzero_addr_flags_and_size(v14, kw):
    m, scratch = _machine(v14)
    ret, _ = _alloc(m, scratch, 4, **kw)
    assert ret == -EINVAL


def test_v14_outputs_equal_the_611_build_for_the_same_keys(v14):
    seq = [1, 64, 100, 4096, 96, 97, 33]
    outs = []
    for img in (build_image("builtin"), v14):
        k, m, caller = new_process(RunConfig(image=img, sizes=[4096], calls=1, seed=17))
        outs.append([caller.getrandom(s).output for s in seq])
    assert outs[0] == outs[1]
    assert all(len(o) == s for o, s in zip(outs[0], seq))
