"""Kernel-provided pinned pages (mm/special_mapping.py) and the swap device log."""
from __future__ import annotations

from mm import MM, PhysMem
from mm import flags as F
from mm.special_mapping import install_special_mapping, is_pinned_mapping

RW = F.PROT_READ | F.PROT_WRITE
ANON = F.MAP_PRIVATE | F.MAP_ANONYMOUS


def _touch(mm, addr, byte=0xAB):
    vma = mm.find_vma(addr)
    res = mm.handle_mm_fault(vma, addr, F.FAULT_FLAG_WRITE | F.FAULT_FLAG_USER)
    assert not res.bits & F.VM_FAULT_ERROR
    mm.pte(addr).frame.data[addr & 0xFFF] = byte


def test_install_maps_populated_pages_charging_no_rlimit_or_commit():
    phys = PhysMem(64, overcommit_memory=F.OVERCOMMIT_NEVER)
    mm = MM(phys, rlimit_memlock=0)
    committed = phys.vm_committed_as
    addr = install_special_mapping(mm, 3 * 4096)
    assert addr > 0
    vma = mm.find_vma(addr)
    assert is_pinned_mapping(vma) and vma.end - vma.start == 3 * 4096
    assert all(mm.pte(addr + i * 4096).frame is not None and mm.pte(addr + i * 4096).writable
               for i in range(3))
    assert phys.charged == 3
    assert mm.locked_vm == 0 and phys.vm_committed_as == committed
    assert "io" in mm.smaps() and "wf" in mm.smaps() and "dd" in mm.smaps()
    mm.rlimit_memlock = 4096
    assert mm.mlock(addr, 4096) == 0 and mm.locked_vm == 0      # VM_SPECIAL: not counted


def test_pinned_pages_are_never_reclaimed_but_anon_pages_swap():
    phys = PhysMem(8, swap_pages=32)
    log = phys.swap.record_writes()
    mm = MM(phys)
    pin = install_special_mapping(mm, 4096)
    mm.pte(pin).frame.data[:4] = b"KEY!"
    anon = mm.mmap(0, 4 * 4096, RW, ANON)
    for i in range(4):
        _touch(mm, anon + i * 4096)
    res = phys.shrink(100)
    assert res.swapped == 4 and res.unevictable >= 1
    assert mm.pte(pin).frame is not None
    assert all(not w.data.startswith(b"KEY!") for w in log)
    assert {o for w in log for o in w.origin} == {(mm.id, anon + i * 4096) for i in range(4)}
    assert mm.madvise(pin, 4096, F.MADV_PAGEOUT) == 0 and mm.pte(pin).frame is not None


def test_pinned_pages_are_not_dumped_and_are_wiped_with_fresh_pages_on_fork():
    phys = PhysMem(32)
    mm = MM(phys)
    pin = install_special_mapping(mm, 4096)
    mm.pte(pin).frame.data[:4] = b"KEY!"
    assert not mm.coredump().contains(pin)
    child = mm.dup_mm()
    pte = child.pte(pin)
    assert pte is not None and pte.frame is not None and pte.writable
    assert pte.frame is not mm.pte(pin).frame and bytes(pte.frame.data[:4]) == bytes(4)
    assert bytes(mm.pte(pin).frame.data[:4]) == b"KEY!"
    assert is_pinned_mapping(child.find_vma(pin))


def test_fork_fails_when_the_child_cannot_get_its_pinned_pages():
    phys = PhysMem(32)
    mm = MM(phys)
    install_special_mapping(mm, 2 * 4096)
    charged = phys.charged
    phys.fail_allocations(persistent=True)
    assert mm.dup_mm() == -F.ENOMEM
    phys.fail_allocations(None)
    assert phys.charged == charged


def test_install_fails_cleanly_under_oom():
    phys = PhysMem(32)
    mm = MM(phys)
    phys.fail_allocations(count=2)
    assert install_special_mapping(mm, 3 * 4096) == -F.ENOMEM
    assert mm.vmas == [] and phys.charged == 0
