"""File-backed mappings: the page cache, private copies, read-only sharing, reclaim,
fork and the views. What the host can show (SIGBUS past EOF, the zero tail, errnos,
VmFlags, maps columns) is compared with the running kernel in test_mm_probes.py."""

import os

import pytest

from mm import (EACCES, FAULT_FLAG_INSTRUCTION, FAULT_FLAG_USER, FAULT_FLAG_WRITE,
                MAP_ANONYMOUS, MAP_FIXED, MAP_PRIVATE, MAP_SHARED, MM, PAGE_SIZE,
                PROT_EXEC, PROT_READ, PROT_WRITE, VM_FAULT_MAJOR, VM_FAULT_SIGBUS,
                VM_MAYSHARE, VM_MAYWRITE, VM_SHARED, BytesFile, HostFile, KernelConfig,
                PhysMem)

P = PAGE_SIZE
RW = PROT_READ | PROT_WRITE
CONTENT = bytes((i * 7 + 3) % 251 + 1 for i in range(2 * P + 904))     # 2.2 pages, no zero byte


def new_mm(pages=64, swap=0, phys=None):
    phys = phys or PhysMem(pages, swap_pages=swap, overcommit_memory=1,
                           kconfig=KernelConfig(False))
    return MM(phys)


def fault(mm, addr, flags):
    return mm.handle_mm_fault(mm.find_vma(addr), addr, flags | FAULT_FLAG_USER)


@pytest.fixture
def host_file(tmp_path):
    p = tmp_path / "lib.so"
    p.write_bytes(CONTENT)
    return p


def test_read_fault_maps_the_page_cache_page_shared_by_every_mm(host_file):
    phys = PhysMem(64, overcommit_memory=1)
    a, b = MM(phys), MM(phys)
    fa, fb = HostFile.open(host_file), HostFile.open(host_file)       # two opens, one inode
    x = a.mmap(0, 3 * P, PROT_READ, MAP_PRIVATE, 3, 0, file=fa)
    y = b.mmap(0, 2 * P, PROT_READ, MAP_PRIVATE, 4, P, file=fb)
    r1 = fault(a, x + P, 0)
    assert r1.bits == VM_FAULT_MAJOR and "filemap_fault" in r1.kinds()
    r2 = fault(b, y, 0)
    assert r2.bits == 0 and r2.stages[-1].detail["cached"]            # page-cache hit
    frame = a.pte(x + P).frame
    assert b.pte(y).frame is frame and not a.pte(x + P).writable
    assert frame.rmap == {(a, x + P), (b, y)} and phys.charged == 1
    assert a.read(x + P, P) == CONTENT[P:2 * P]


def test_tail_zero_sigbus_past_eof_and_unfaulted_reads(host_file):
    mm = new_mm()
    f = HostFile.open(host_file)
    x = mm.mmap(0, 4 * P, PROT_READ, MAP_PRIVATE, 3, 0, file=f)
    # Not faulted in: peek and copy_from_user see the file, and stop at EOF.
    assert mm.read(x, len(CONTENT)) == CONTENT
    assert mm.read(x + len(CONTENT), P) == bytes(P)
    assert mm.copy_from_user(x + 3 * P - 8, 15) == bytes(8)       # the tail, then EOF
    assert mm.copy_from_user(x + 3 * P, 15) == b""
    assert fault(mm, x + 2 * P, 0).bits == VM_FAULT_MAJOR
    assert mm.pte(x + 2 * P).frame.data[904:] == bytes(P - 904)       # zero tail
    res = fault(mm, x + 3 * P, 0)
    assert res.bits == VM_FAULT_SIGBUS and res.stages[-1].kind == "sigbus"
    assert mm.pte(x + 3 * P) is None


def test_writes_copy_and_the_file_never_changes(host_file):
    mm = new_mm()
    f = HostFile.open(host_file)
    x = mm.mmap(0, 3 * P, RW, MAP_PRIVATE, 3, 0, file=f)
    assert fault(mm, x, 0).bits == VM_FAULT_MAJOR                     # read first
    cache = mm.pte(x).frame
    res = fault(mm, x, FAULT_FLAG_WRITE)                              # then write: do_wp_page
    assert res.bits == 0 and "cow_copy" in res.kinds()
    mine = mm.pte(x).frame
    assert mine is not cache and mine.mapping is None and mm.pte(x).writable
    mine.data[0:5] = b"HELLO"
    res = fault(mm, x + P, FAULT_FLAG_WRITE)                          # straight write: do_cow_fault
    assert res.kinds().count("alloc") == 2 and "cow_copy" in res.kinds()
    assert mm.poke(x + 2 * P, b"poked") == 5                          # FOLL_FORCE: a copy too
    assert mm.read(x, 5) == b"HELLO" and mm.read(x + 2 * P, 5) == b"poked"
    assert bytes(cache.data) == CONTENT[:P]
    assert host_file.read_bytes() == CONTENT
    # DONTNEED throws the private copies away: the file shows through again.
    assert mm.madvise(x, 3 * P, 4) == 0 and mm.read(x, 5) == CONTENT[:5]


def test_shared_mappings_are_read_only(host_file):
    mm = new_mm()
    f = HostFile.open(host_file)
    assert mm.mmap(0, P, RW, MAP_SHARED, 3, 0, file=f) == -EACCES
    x = mm.mmap(0, 2 * P, PROT_READ, MAP_SHARED, 3, 0, file=f)
    v = mm.find_vma(x)
    assert v.vm_flags & VM_MAYSHARE and not v.vm_flags & (VM_SHARED | VM_MAYWRITE)
    assert mm.mprotect(x, P, RW) == -EACCES
    assert fault(mm, x, 0).bits == VM_FAULT_MAJOR and mm.read(x, 4) == CONTENT[:4]
    assert mm.poke(x, b"no") == 0                                     # no VM_MAYWRITE
    assert host_file.read_bytes() == CONTENT


def test_exec_mapping_and_map_fixed_over_anonymous_memory():
    code = BytesFile("/bin/prog", b"\x7fELF" + b"\x90" * (P - 4) + b"\xc3" * 16, mode=0o100755)
    mm = new_mm()
    a = mm.mmap(0x400000, 4 * P, RW, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED)
    mm.poke(a + P, b"anon")
    x = mm.mmap(a + P, 2 * P, PROT_READ | PROT_EXEC, MAP_PRIVATE | MAP_FIXED, 3, 0, file=code)
    assert x == a + P and [v.vm_file for v in mm.vmas] == [None, code, None]
    assert fault(mm, x + P, FAULT_FLAG_INSTRUCTION).bits == VM_FAULT_MAJOR
    assert mm.read(x, 8) == b"\x7fELF\x90\x90\x90\x90"
    assert mm.copy_from_user(x + P, 15) == b"\xc3" * 15
    assert mm.find_vma(x).pgoff_of(x + P) == 1


def test_page_cache_is_charged_and_reclaimed_before_swap(host_file):
    phys = PhysMem(6, swap_pages=16, overcommit_memory=1)
    mm = MM(phys)
    f = HostFile.open(host_file)
    x = mm.mmap(0, 3 * P, PROT_READ, MAP_PRIVATE, 3, 0, file=f)
    for i in range(3):
        fault(mm, x + i * P, 0)
    assert phys.charged == 3 and len(phys.page_cache) == 3
    assert mm.munmap(x, 3 * P) == 0
    assert phys.charged == 3                    # unmapped, still cached and charged
    a = mm.mmap(0, 6 * P, RW, MAP_PRIVATE | MAP_ANONYMOUS)
    for i in range(6):
        assert fault(mm, a + i * P, FAULT_FLAG_WRITE).bits == 0
    assert phys.stats.pagecache_evictions == 3 and phys.stats.swapouts == 0
    assert not phys.page_cache and phys.charged == 6
    # Mapped again, the file is read again (a major fault) with the same bytes.
    y = mm.mmap(0, P, PROT_READ, MAP_PRIVATE, 3, 0, file=f)
    assert fault(mm, y, 0).bits == VM_FAULT_MAJOR and mm.read(y, P) == CONTENT[:P]
    assert phys.stats.pagecache_reads == 4


def test_fork_refaults_untouched_file_pages_and_shares_copies(host_file):
    mm = new_mm()
    f = HostFile.open(host_file)
    ro = mm.mmap(0, 2 * P, PROT_READ, MAP_PRIVATE, 3, 0, file=f)
    rw = mm.mmap(0, 2 * P, RW, MAP_PRIVATE, 3, 0, file=f)
    fault(mm, ro, 0)
    fault(mm, rw, 0)
    mm.poke(rw + P, b"mine")
    child = mm.dup_mm()
    assert child.pte(ro) is None                       # no anon_vma: refaulted from the cache
    assert fault(child, ro, 0).bits == 0 and child.pte(ro).frame is mm.pte(ro).frame
    assert child.pte(rw).frame is mm.pte(rw).frame     # an anon_vma: page table copied
    assert child.pte(rw + P).frame is mm.pte(rw + P).frame and not mm.pte(rw + P).writable
    child.poke(rw + P, b"kid!")
    assert mm.read(rw + P, 4) == b"mine" and child.read(rw + P, 4) == b"kid!"


def test_core_dump_of_file_mappings():
    elf = BytesFile("/lib/libx.so", b"\x7fELF" + bytes(range(1, 200)) * 30)
    data = BytesFile("/etc/data", b"plain text" * 1000)
    mm = new_mm()
    e = mm.mmap(0, 2 * P, PROT_READ, MAP_PRIVATE, 3, 0, file=elf)
    d = mm.mmap(0, 2 * P, PROT_READ, MAP_PRIVATE, 3, 0, file=data)
    w = mm.mmap(0, 2 * P, RW, MAP_PRIVATE, 3, 0, file=data)
    mm.poke(w + P, b"written")
    core = mm.coredump()
    sizes = {ph.start: ph.filesz for ph in core.phdrs}
    assert sizes[e] == P and sizes[d] == 0 and sizes[w] == 2 * P
    assert core.read(e, 4) == b"\x7fELF"
    assert core.read(w, 10) == b"plain text" and core.read(w + P, 7) == b"written"


def test_smaps_names_the_file(host_file):
    mm = new_mm()
    f = HostFile.open(host_file)
    x = mm.mmap(0, 3 * P, RW, MAP_PRIVATE, 3, P, file=f)
    fault(mm, x, 0)
    mm.poke(x + P, b"!")
    header = mm.smaps().splitlines()[0]
    st = os.stat(host_file)
    assert header.split()[1:5] == ["rw-p", f"{P:08x}", f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}",
                                   str(st.st_ino)]
    assert header.endswith(str(host_file)) and header.index(str(host_file)) == 73
    text = mm.smaps()
    assert "Rss:                   8 kB" in text and "Anonymous:             4 kB" in text
    assert "Private_Clean:         4 kB" in text and "Private_Dirty:         4 kB" in text


def test_snapshot_restores_file_pages_even_after_eviction(host_file):
    phys = PhysMem(4, overcommit_memory=1)
    mm = MM(phys)
    f = HostFile.open(host_file)
    x = mm.mmap(0, 2 * P, PROT_READ, MAP_PRIVATE, 3, 0, file=f)
    fault(mm, x, 0)
    snap = mm.snapshot()
    phys.shrink(8)                                     # evicts the page-cache page
    assert mm.pte(x) is None and not phys.page_cache
    mm.restore(snap)
    assert mm.read(x, P) == CONTENT[:P] and mm.pte(x).frame.mapping is not None
    snap.release()
    mm.munmap(x, 2 * P)
    assert phys.charged == 0
