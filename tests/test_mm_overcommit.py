"""Commit accounting: overcommit modes 0/1/2, VM_NORESERVE, droppable exemption."""

from mm import (ENOMEM, MAP_ANONYMOUS, MAP_DROPPABLE, MAP_FIXED, MAP_NORESERVE, MAP_PRIVATE,
                MM, PAGE_SIZE, PROT_READ, PROT_WRITE, VM_ACCOUNT, VM_NORESERVE, PhysMem)
from mm.overcommit import vm_commit_limit

RW = PROT_READ | PROT_WRITE
ANON = MAP_PRIVATE | MAP_ANONYMOUS
DROP = MAP_DROPPABLE | MAP_ANONYMOUS


def strict(pages=100, swap=0, ratio=50):
    phys = PhysMem(pages, swap_pages=swap, overcommit_memory=2, overcommit_ratio=ratio)
    phys.admin_reserve_pages = phys.user_reserve_pages = 0     # keep the arithmetic plain
    return MM(phys)


def test_commit_limit_is_ratio_of_ram_plus_swap():
    assert vm_commit_limit(PhysMem(100, swap_pages=20, overcommit_ratio=50)) == 70


def test_private_writable_mapping_is_charged_and_uncharged():
    mm = strict()
    a = mm.mmap(0, 10 * PAGE_SIZE, RW, ANON)
    assert mm.find_vma(a).vm_flags & VM_ACCOUNT and mm.phys.vm_committed_as == 10
    mm.munmap(a, 4 * PAGE_SIZE)
    assert mm.phys.vm_committed_as == 6
    r = mm.mmap(0, 10 * PAGE_SIZE, PROT_READ, ANON)              # read-only: not charged
    assert not mm.find_vma(r).vm_flags & VM_ACCOUNT and mm.phys.vm_committed_as == 6


def test_strict_mode_refuses_beyond_commit_limit():
    mm = strict(pages=100, ratio=50)
    assert mm.mmap(0, 49 * PAGE_SIZE, RW, ANON) > 0
    assert mm.mmap(0, 2 * PAGE_SIZE, RW, ANON) == -ENOMEM
    assert mm.phys.vm_committed_as == 49
    assert mm.mmap(0, PAGE_SIZE, RW, ANON) == -ENOMEM            # 50 is not < 50


def test_droppable_is_never_charged_even_in_strict_mode():
    mm = strict(pages=100, ratio=50)
    d = mm.mmap(0, 1000 * PAGE_SIZE, RW, DROP)
    assert d > 0 and mm.phys.vm_committed_as == 0
    v = mm.find_vma(d)
    assert v.vm_flags & VM_NORESERVE and not v.vm_flags & VM_ACCOUNT


def test_map_noreserve_ignored_in_strict_mode_honoured_otherwise():
    mm = strict()
    a = mm.mmap(0, 4 * PAGE_SIZE, RW, ANON | MAP_NORESERVE)
    assert not mm.find_vma(a).vm_flags & VM_NORESERVE and mm.phys.vm_committed_as == 4
    for mode in (0, 1):
        m = MM(PhysMem(100, overcommit_memory=mode))
        b = m.mmap(0, 4 * PAGE_SIZE, RW, ANON | MAP_NORESERVE)
        assert m.find_vma(b).vm_flags & VM_NORESERVE and m.phys.vm_committed_as == 0


def test_heuristic_mode_refuses_only_single_huge_requests():
    mm = MM(PhysMem(100, swap_pages=10, overcommit_memory=0))
    assert mm.mmap(0, 110 * PAGE_SIZE, RW, ANON) > 0
    assert mm.mmap(0, 110 * PAGE_SIZE, RW, ANON) > 0             # cumulative is fine
    assert mm.mmap(0, 111 * PAGE_SIZE, RW, ANON) == -ENOMEM
    assert mm.phys.vm_committed_as == 220


def test_always_mode_never_refuses():
    mm = MM(PhysMem(10, overcommit_memory=1))
    assert mm.mmap(0, 1 << 30, RW, ANON) > 0


def test_mprotect_to_writable_charges_and_can_fail():
    mm = strict(pages=100, ratio=50)
    r = mm.mmap(0, 30 * PAGE_SIZE, PROT_READ, ANON)
    assert mm.phys.vm_committed_as == 0
    assert mm.mprotect(r, 10 * PAGE_SIZE, RW) == 0
    assert mm.phys.vm_committed_as == 10
    assert mm.mmap(0, 35 * PAGE_SIZE, RW, ANON) > 0
    assert mm.mprotect(r + 10 * PAGE_SIZE, 10 * PAGE_SIZE, RW) == -ENOMEM
    assert mm.phys.vm_committed_as == 45


def test_mprotect_readonly_without_pages_unaccounts():
    mm = strict()
    a = mm.mmap(0, 4 * PAGE_SIZE, RW, ANON)
    assert mm.mprotect(a, 4 * PAGE_SIZE, PROT_READ) == 0
    assert mm.phys.vm_committed_as == 0                          # never had an anon_vma
    b = mm.mmap(0, 4 * PAGE_SIZE, RW, ANON)
    mm.poke(b, b"x")
    assert mm.mprotect(b, 4 * PAGE_SIZE, PROT_READ) == 0
    assert mm.phys.vm_committed_as == 4                          # had pages: stays charged


def test_map_fixed_replacement_transfers_charge_and_failure_keeps_old():
    mm = strict(pages=100, ratio=50)
    a = mm.mmap(0, 40 * PAGE_SIZE, RW, ANON)
    mm.poke(a, b"keep")
    assert mm.mmap(a, 40 * PAGE_SIZE, RW, ANON | MAP_FIXED) == a  # same size: no new charge
    assert mm.phys.vm_committed_as == 40
    mm.poke(a, b"keep")
    assert mm.mmap(a, 60 * PAGE_SIZE, RW, ANON | MAP_FIXED) == -ENOMEM
    assert mm.read(a, 4) == b"keep" and mm.phys.vm_committed_as == 40
