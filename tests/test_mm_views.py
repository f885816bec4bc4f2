"""Core-dump view and smaps text."""

import re

from mm import (MADV_DONTDUMP, MAP_ANONYMOUS, MAP_DROPPABLE, MAP_PRIVATE, MM, PAGE_SIZE,
                PROT_READ, PROT_WRITE, VM_DROPPABLE, PhysMem)
from mm.kconfig import KernelConfig, host_kernel_config
from mm.smaps import vm_flags_str

RW = PROT_READ | PROT_WRITE
ANON = MAP_PRIVATE | MAP_ANONYMOUS
DROP = MAP_DROPPABLE | MAP_ANONYMOUS


def new_mm(pages=64, swap=0, soft_dirty=False):
    kconfig = KernelConfig(mem_soft_dirty=soft_dirty)
    return MM(PhysMem(pages, swap_pages=swap, overcommit_memory=1, kconfig=kconfig))


def test_coredump_excludes_droppable():
    mm = new_mm()
    a = mm.mmap(0, 2 * PAGE_SIZE, RW, ANON)
    d = mm.mmap(0, 2 * PAGE_SIZE, RW, DROP)
    mm.poke(a, b"plain")
    mm.poke(d, b"secret")
    core = mm.coredump()
    assert core.contains(a) and core.read(a, 5) == b"plain"
    assert not core.contains(d)
    assert all(not s.vm_flags & VM_DROPPABLE for s in core.segments)
    assert b"secret" not in b"".join(s.data for s in core.segments)
    ph = {p.start: p for p in core.phdrs}
    assert ph[d].filesz == 0 and ph[a].filesz == 2 * PAGE_SIZE    # still a program header


def test_coredump_madv_dontdump_excluded():
    mm = new_mm()
    a = mm.mmap(0, PAGE_SIZE, RW, ANON)
    mm.poke(a, b"x")
    mm.madvise(a, PAGE_SIZE, MADV_DONTDUMP)
    assert not mm.coredump().contains(a)


def test_coredump_includes_swapped_pages_and_zeros_for_absent_ones():
    mm = new_mm(pages=2, swap=8)
    a = mm.mmap(0, 4 * PAGE_SIZE, RW, ANON)
    for i in range(3):
        mm.poke(a + i * PAGE_SIZE, bytes([0x10 + i]) * 8)
    assert any(mm.pte(a + i * PAGE_SIZE).swapped for i in range(3))
    swapins = mm.stats.swapins
    core = mm.coredump()
    seg = core.segment_at(a)
    assert len(seg.data) == 4 * PAGE_SIZE
    for i in range(3):
        assert seg.data[i * PAGE_SIZE:i * PAGE_SIZE + 8] == bytes([0x10 + i]) * 8
    assert seg.data[3 * PAGE_SIZE:] == bytes(PAGE_SIZE)          # never touched: zeros
    assert mm.stats.swapins == swapins                           # a view, not a swap-in


def test_coredump_skips_never_written_private_anon_like_linux():
    mm = new_mm()
    a = mm.mmap(0, PAGE_SIZE, RW, ANON)
    assert not mm.coredump().contains(a)                         # no anon_vma: filesz 0
    mm.handle_mm_fault(mm.find_vma(a), a, 0)                     # a read: still none
    assert not mm.coredump().contains(a)


def test_smaps_shows_dp_and_droppable_flags():
    mm = new_mm()
    d = mm.mmap(0, 2 * PAGE_SIZE, RW, DROP)
    mm.poke(d, b"x")
    text = mm.smaps()
    m = re.search(r"^%x-%x rw-p .*?^VmFlags: (.*)$" % (d, d + 2 * PAGE_SIZE), text, re.M | re.S)
    assert m, text
    flags = m.group(1).split()
    for mnem in ("dp", "wf", "dd", "nr", "rd", "wr", "mr", "mw", "me"):
        assert mnem in flags
    assert "ac" not in flags and "lo" not in flags
    assert re.search(r"^Rss:\s+4 kB$", text, re.M)


def test_smaps_plain_mapping_flags_lo_ac_and_counters():
    mm = new_mm()
    a = mm.mmap(0, 2 * PAGE_SIZE, RW, ANON)
    mm.mlock(a, 2 * PAGE_SIZE)
    child = mm.dup_mm()
    text = mm.smaps()
    assert "VmFlags: rd wr mr mw me lo ac \n" in text
    assert re.search(r"^Shared_Dirty:\s+8 kB$", text, re.M)
    assert re.search(r"^Pss:\s+4 kB$", text, re.M)
    assert re.search(r"^Locked:\s+4 kB$", text, re.M)
    assert "lo" not in child.smaps().split("VmFlags:")[1].split()


def test_vm_flags_str_bit_order():
    from mm import VM_ACCOUNT, VM_READ, VM_WRITE
    assert vm_flags_str(VM_READ | VM_WRITE | VM_ACCOUNT | VM_DROPPABLE) == "rd wr ac dp"


def test_anon_vma_name_in_smaps_and_split():
    mm = new_mm()
    a = mm.mmap(0, 3 * PAGE_SIZE, RW, ANON)
    assert mm.set_vma_name(a + PAGE_SIZE, PAGE_SIZE, "vgetrandom") == 0
    assert len(mm.vmas) == 3 and mm.find_vma(a + PAGE_SIZE).name == "vgetrandom"
    line = [ln for ln in mm.smaps().splitlines() if ln.startswith("%x-" % (a + PAGE_SIZE))][0]
    assert line.endswith("[anon:vgetrandom]")
    assert mm.set_vma_name(a + PAGE_SIZE, PAGE_SIZE, "") == 0 and len(mm.vmas) == 1
    assert mm.set_vma_name(a, PAGE_SIZE, "bad$name") == -22


def test_soft_dirty_is_a_kernel_configuration_switch():
    """CONFIG_MEM_SOFT_DIRTY: every new VMA is 'sd' when set, none ever is when not;
    the flag does not stop merges and survives them (VM_STICKY)."""
    on, off = new_mm(soft_dirty=True), new_mm(soft_dirty=False)
    for mm in (on, off):
        a = mm.mmap(0, 2 * PAGE_SIZE, RW, ANON)
        mm.mprotect(a, PAGE_SIZE, PROT_READ)
        mm.mprotect(a, PAGE_SIZE, RW)
        assert len(mm.vmas) == 1
        d = mm.mmap(0, PAGE_SIZE, RW, DROP)
        flags = [vm_flags_str(mm.find_vma(x).vm_flags).split() for x in (a, d)]
        assert all(("sd" in f) == (mm is on) for f in flags)
    assert on.phys.kconfig.describe() == {"CONFIG_MEM_SOFT_DIRTY": True, "source": "explicit"}


def test_default_kernel_config_follows_the_host():
    """The default is what a fresh mapping of this very process shows."""
    import mmap as pymmap
    import ctypes
    cfg = host_kernel_config()
    assert PhysMem(4).kconfig is cfg
    m = pymmap.mmap(-1, PAGE_SIZE)
    buf = ctypes.c_char.from_buffer(m)
    addr = ctypes.addressof(buf)
    del buf
    try:
        text = open("/proc/self/smaps").read()
    except OSError:
        assert cfg.source.startswith("default")
        return
    finally:
        m.close()
    block = None
    for line in text.splitlines():
        head = line.split(" ", 1)[0]
        if "-" in head and ":" not in head:
            lo, hi = (int(x, 16) for x in head.split("-"))
            block = lo <= addr < hi
        elif block and line.startswith("VmFlags:"):
            assert ("sd" in line.split()) == cfg.mem_soft_dirty
            assert cfg.source.startswith("host")
            return
    raise AssertionError("mapping not found in /proc/self/smaps")
