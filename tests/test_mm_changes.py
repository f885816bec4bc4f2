"""drain_changes() is exhaustive, and the books balance: a seeded random walk over
every operation checks, after each step, that an emulator-style mirror updated only
from drain_changes() matches the page tables, that frames are never recycled while
an undrained mapping may still point at them, and that rmap, charge, swap, commit
and locked_vm accounting are consistent."""

import random

import pytest

from mm import (BytesFile, MAP_SHARED, FAULT_FLAG_USER, FAULT_FLAG_WRITE, MADV_DODUMP, MADV_DONTFORK,
                MADV_DONTNEED, MADV_FREE, MADV_GUARD_INSTALL, MADV_GUARD_REMOVE,
                MREMAP_DONTUNMAP, MREMAP_FIXED, MREMAP_MAYMOVE, MADV_KEEPONFORK, MADV_PAGEOUT, MADV_WIPEONFORK,
                MAP_ANONYMOUS, MAP_DROPPABLE, MAP_FIXED, MAP_PRIVATE, MCL_CURRENT, MCL_FUTURE,
                MM, PAGE_SIZE, PROT_EXEC, PROT_NONE, PROT_READ, PROT_WRITE, VM_LOCKED,
                PhysMem)

# A 3.5-page file: mappings of it run past its end (SIGBUS pages) and share its
# page cache across every mm.
FILE = BytesFile("/lib/walk.bin", bytes((i * 13 + 1) % 256 for i in range(3 * PAGE_SIZE + 2048)))
RW = PROT_READ | PROT_WRITE
ANON = MAP_PRIVATE | MAP_ANONYMOUS
DROP = MAP_DROPPABLE | MAP_ANONYMOUS
BASE = 0x10000000


def view(mm, vaddr):
    """What the emulator would map at vaddr: None (unmapped), or (frame, perms)."""
    vma = mm.find_vma(vaddr)
    if vma is None:
        return None
    pte = mm.pte(vaddr)
    if pte is None or pte.frame is None:
        return ("none",)
    w = bool(pte.writable and vma.prot & PROT_WRITE)
    return (id(pte.frame), vma.prot & (PROT_READ | PROT_EXEC), w)


class Emulator:
    """A stand-in for the Unicorn side: maps only what the change log reports,
    through drain_change_ranges() or (ranges=False) the page-set drain_changes()."""

    def __init__(self, mm, ranges=True):
        self.mm = mm
        self.ranges = ranges
        self.mirror = {}
        self.frames = {}                   # vaddr -> Frame object mapped there
        self.sync()

    def _changed_pages(self):
        if not self.ranges:
            return self.mm.drain_changes()
        out = []
        last = None
        for lo, hi in self.mm.drain_change_ranges():
            assert lo < hi and not lo % PAGE_SIZE and not hi % PAGE_SIZE
            assert last is None or lo > last, "ranges sorted and coalesced"
            last = hi
            out.extend(range(lo, hi, PAGE_SIZE))
        return out

    def sync(self):
        for va in self._changed_pages():
            v = view(self.mm, va)
            if v is None:
                self.mirror.pop(va, None)
                self.frames.pop(va, None)
            else:
                self.mirror[va] = v
                pte = self.mm.pte(va)
                if pte is not None and pte.frame is not None:
                    self.frames[va] = pte.frame
                else:
                    self.frames.pop(va, None)

    def check_in_sync_except_pending(self):
        ranges = self.mm.pending_change_ranges()

        def pending(va):
            return any(lo <= va < hi for lo, hi in ranges)
        for vma in self.mm.vmas:
            for va in range(vma.start, vma.end, PAGE_SIZE):
                if not pending(va):
                    assert self.mirror.get(va) == view(self.mm, va), hex(va)
        for va in self.mirror:
            if not pending(va):
                assert self.mm.find_vma(va) is not None, hex(va)


def check_books(phys, mms):
    live = [m for m in mms if not m.dead]
    frames = {}
    slot_refs = {}
    for m in live:
        for vpn, pte in m.pt.items():
            if pte.frame is not None and not pte.frame.is_zero:
                frames.setdefault(pte.frame, set()).add((m, vpn << 12))
                assert pte.swap_slot is None
            if pte.swap_slot is not None:
                slot_refs[pte.swap_slot] = slot_refs.get(pte.swap_slot, 0) + 1
            if pte.writable:
                assert pte.frame is not None and pte.frame.exclusive
            assert m.find_vma(vpn << 12) is not None
    for f, maps in frames.items():
        assert f.rmap == maps and f.charged
        assert len(f.data) == PAGE_SIZE
    cached = set(phys.page_cache.values())
    for key, f in phys.page_cache.items():
        assert f.cached and f.mapping == key and f.charged and not f.exclusive
        assert bytes(f.data) == FILE.read(key[1] * PAGE_SIZE, PAGE_SIZE).ljust(PAGE_SIZE, b"\0")
    assert phys.charged == len(set(frames) | cached)
    assert set(phys.lru_anon) | set(phys.lru_drop) | set(phys.lru_file) == set(frames) | cached
    for sid, s in phys.swap.slots.items():
        assert s.refs == slot_refs.get(sid, 0)
    assert phys.swap.used == len(slot_refs)
    assert phys.vm_committed_as == sum(m.committed for m in live)
    for m in live:
        assert m.locked_vm == sum(v.pages for v in m.vmas if v.vm_flags & VM_LOCKED)
        vs = m.vmas
        for x, y in zip(vs, vs[1:]):
            assert x.end <= y.start
    assert bytes(phys.zero_frame.data) == bytes(PAGE_SIZE)


@pytest.mark.parametrize("seed", range(8))
def test_random_walk_changes_exhaustive_and_books_balance(seed):
    rnd = random.Random(seed)
    phys = PhysMem(24, swap_pages=rnd.choice([0, 8, 32]), overcommit_memory=1)
    root = MM(phys, rlimit_memlock=16 * PAGE_SIZE)
    mms = [root]
    emus = {root: Emulator(root)}
    snaps = {}

    # Recycling guard: a frame handed out again must not be mapped by any emulator.
    orig_take = phys._take_frame

    def guarded_take(droppable):
        f = orig_take(droppable)
        for e in emus.values():
            if not e.mm.dead:
                assert all(g is not f for g in e.frames.values()), "recycled while mapped"
        return f
    phys._take_frame = guarded_take

    for step in range(1500):
        live = [m for m in mms if not m.dead]
        mm = rnd.choice(live)
        op = rnd.randrange(22)
        page = BASE + rnd.randrange(48) * PAGE_SIZE
        n = rnd.randint(1, 6) * PAGE_SIZE
        if op == 0:
            kind = rnd.choice([ANON, DROP, ANON, DROP, MAP_PRIVATE, MAP_SHARED])
            prot = rnd.choice([RW, PROT_READ, RW | PROT_EXEC, PROT_NONE])
            if kind in (MAP_PRIVATE, MAP_SHARED):
                if kind == MAP_SHARED:
                    prot &= ~PROT_WRITE
                mm.mmap(page, n, prot, kind | MAP_FIXED, 3, rnd.randrange(4) * PAGE_SIZE,
                        file=FILE)
            else:
                mm.mmap(page, n, prot, kind | MAP_FIXED)
        elif op == 1:
            mm.munmap(page, n)
        elif op == 2:
            mm.mprotect(page, n, rnd.choice([RW, PROT_READ, PROT_NONE, RW | PROT_EXEC]))
        elif op == 3:
            mm.madvise(page, n, rnd.choice([MADV_DONTNEED, MADV_WIPEONFORK, MADV_KEEPONFORK,
                                            MADV_DODUMP, MADV_DONTFORK, MADV_FREE,
                                            MADV_PAGEOUT]))
        elif op == 4:
            rnd.choice([mm.mlock, mm.munlock])(page, n)
        elif op == 5:
            if rnd.random() < 0.3:
                mm.mlockall(rnd.choice([MCL_CURRENT, MCL_FUTURE, MCL_CURRENT | MCL_FUTURE]))
            else:
                mm.munlockall()
        elif op in (6, 7, 8, 9, 10):
            vma = mm.find_vma(page)
            if vma is not None:
                write = rnd.random() < 0.6
                flags = (FAULT_FLAG_WRITE if write else 0) | FAULT_FLAG_USER
                if not mm.access_error(vma, flags):
                    mm.handle_mm_fault(vma, page, flags)
                    pte = mm.pte(page)
                    if write and pte is not None and pte.writable:
                        pte.frame.data[0] = rnd.randrange(256)
        elif op == 11:
            mm.poke(page, bytes([rnd.randrange(256)]))
        elif op == 12:
            mm.drop_droppable()
        elif op == 13 and len(live) < 4:
            child = mm.dup_mm()
            if isinstance(child, MM):
                mms.append(child)
                emus[child] = Emulator(child, ranges=rnd.random() < 0.5)
        elif op == 14 and mm is not root:
            mm.exit_mmap()
            emus.pop(mm)
        elif op == 15:
            snaps[mm] = mm.snapshot()
        elif op == 16 and mm in snaps:
            mm.restore(snaps[mm])
        elif op == 17:
            k = rnd.choice([None, None, 1, 3])
            phys.fail_allocations(k, persistent=(k is None and rnd.random() < 0.1))
        elif op == 18:
            phys.shrink(rnd.randint(1, 8))
        elif op == 19:
            mm.droppable_oom = rnd.choice(["skip", "retry"])
        elif op == 20:
            flags = rnd.choice([0, MREMAP_MAYMOVE, MREMAP_MAYMOVE | MREMAP_FIXED,
                                MREMAP_MAYMOVE | MREMAP_FIXED | MREMAP_DONTUNMAP])
            new_len = n if flags & MREMAP_DONTUNMAP else rnd.randint(1, 6) * PAGE_SIZE
            target = BASE + rnd.randrange(48) * PAGE_SIZE
            # DONTUNMAP of a locked VMA leaves locked_vm high, as the kernel does
            # (test_mm_mremap.py); the books below assume it balances.
            if not (flags & MREMAP_DONTUNMAP and any(
                    v.vm_flags & VM_LOCKED for v in mm.vma_tree.overlapping(page, page + n))):
                mm.mremap(page, n, new_len, flags, target)
        elif op == 21:
            mm.madvise(page, n, rnd.choice([MADV_GUARD_INSTALL, MADV_GUARD_REMOVE]))

        check_books(phys, mms)
        for e in emus.values():
            e.check_in_sync_except_pending()
        # each emulator resyncs at its own pace (as separate processes would)
        for e in emus.values():
            if rnd.random() < 0.7:
                e.sync()
                e.check_in_sync_except_pending()


def test_every_kind_of_change_is_recorded():
    phys = PhysMem(4, swap_pages=4, overcommit_memory=1)
    mm = MM(phys)
    a = mm.mmap(0, PAGE_SIZE, RW, ANON)
    assert mm.drain_changes() == {a}                          # mmap
    mm.handle_mm_fault(mm.find_vma(a), a, FAULT_FLAG_USER)
    assert mm.drain_changes() == {a}                          # zero page mapped
    mm.handle_mm_fault(mm.find_vma(a), a, FAULT_FLAG_WRITE)
    assert mm.drain_changes() == {a}                          # zero-fill
    child = mm.dup_mm()
    assert mm.drain_changes() == {a}                          # fork write-protect
    child.handle_mm_fault(child.find_vma(a), a, FAULT_FLAG_WRITE)
    assert child.drain_changes() == {a}                       # COW break
    mm.handle_mm_fault(mm.find_vma(a), a, FAULT_FLAG_WRITE)
    assert mm.drain_changes() == {a}                          # reuse (W bit)
    snap = mm.snapshot()
    assert mm.drain_changes() == {a}                          # snapshot write-protect
    mm.mprotect(a, PAGE_SIZE, PROT_READ)
    assert mm.drain_changes() == {a}                          # mprotect
    mm.restore(snap)
    assert mm.drain_changes() == {a}                          # restore (VMA prot back)
    d = mm.mmap(0, PAGE_SIZE, RW, DROP)
    mm.poke(d, b"x")
    mm.drain_changes()
    mm.drop_droppable()
    assert mm.drain_changes() == {d}                          # drop
    b = mm.mmap(0, 8 * PAGE_SIZE, RW, ANON)
    mm.drain_changes()
    for i in range(6):
        mm.poke(b + i * PAGE_SIZE, b"y")
    assert any(mm.pte(b + i * PAGE_SIZE).swapped for i in range(6))
    ch = mm.drain_changes()
    assert {b + i * PAGE_SIZE for i in range(6) if mm.pte(b + i * PAGE_SIZE).swapped} <= ch
    mm.munmap(b, 8 * PAGE_SIZE)
    assert mm.drain_changes() == {b + i * PAGE_SIZE for i in range(8)}   # munmap
    assert mm.drain_changes() == set()
