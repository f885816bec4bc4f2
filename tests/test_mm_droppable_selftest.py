"""The kernel's mm/droppable selftest, re-derived at its real size: fill 128 MiB of
droppable memory on a machine with 64 MiB, add memory pressure from another
process, and some page must read back as zero (the kernel dropped it, dirty as it
was, instead of swapping it or failing the fill)."""

from mm import (FAULT_FLAG_USER, FAULT_FLAG_WRITE, MAP_ANONYMOUS, MAP_DROPPABLE,
                MAP_PRIVATE, MM, PAGE_SIZE, PROT_READ, PROT_WRITE, PhysMem)

MIB = 1 << 20
RW = PROT_READ | PROT_WRITE


def write_page(mm, vma, addr, byte):
    """A user write of a whole page: fault until the PTE is writable, then memset."""
    for _ in range(4):
        pte = mm.pte(addr)
        if pte is not None and pte.writable:
            pte.frame.data[:] = bytes([byte]) * PAGE_SIZE
            return
        res = mm.handle_mm_fault(vma, addr, FAULT_FLAG_WRITE | FAULT_FLAG_USER)
        assert res.bits == 0, f"fault at {addr:#x}: {res}"
    raise AssertionError(f"page {addr:#x} never became writable")


def test_droppable_selftest_128mib_under_64mib():
    phys = PhysMem(64 * MIB // PAGE_SIZE)                 # no swap, as on the test VM
    mm = MM(phys)
    size = 128 * MIB
    d = mm.mmap(0, size, RW, MAP_DROPPABLE | MAP_ANONYMOUS)
    assert d > 0
    vma = mm.find_vma(d)
    pages = range(d, d + size, PAGE_SIZE)
    for addr in pages:                                    # memset(alloc, 'A', size)
        write_page(mm, vma, addr, ord("A"))
    assert phys.charged <= phys.memory_pages
    assert mm.stats.drops > 0 and mm.stats.oom == 0 and mm.stats.droppable_oom == 0

    def zero_pages():
        zeros = 0
        for addr in pages:
            data = mm.read(addr, PAGE_SIZE)
            if data[0] == 0:
                assert data == bytes(PAGE_SIZE), f"partly dropped page at {addr:#x}"
                zeros += 1
            else:
                assert data == b"A" * PAGE_SIZE, f"corrupt page at {addr:#x}"
        return zeros

    before = zero_pages()
    assert before > 0                                     # some page reads back zero

    # Memory pressure: a forked child allocating plain anonymous memory. With no
    # swap, only droppable pages can make room for it.
    child = mm.dup_mm()
    assert child.pte(d) is None                           # VM_WIPEONFORK
    a = child.mmap(0, 32 * MIB, RW, MAP_PRIVATE | MAP_ANONYMOUS)
    avma = child.find_vma(a)
    for addr in range(a, a + 32 * MIB, PAGE_SIZE):
        write_page(child, avma, addr, ord("B"))
    after = zero_pages()
    assert after >= before + 32 * MIB // PAGE_SIZE - phys.reclaim_batch
    assert child.read(a + 32 * MIB - PAGE_SIZE, PAGE_SIZE) == b"B" * PAGE_SIZE
    assert child.stats.oom == 0 and phys.charged <= phys.memory_pages
