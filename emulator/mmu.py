"""What the CPU sees of mm's page tables: Unicorn's mappings, kept equal to them.

mm owns memory as frames (mm/page.py); this module maps each present page
straight onto its frame's bytes (mem_map_ptr), so a store by emulated code is a
store into the frame.  Everything else follows from how Unicorn 2.1.4 reports
faults (measured, see docs/architecture.md "Unicorn"):

- only present pages are mapped: touching any other address stops on an
  invalid access with the access kind reported, like a not-present PTE raising
  #PF, and mm decides whether a VMA covers it.  Unicorn's mappings therefore
  cost what is touched, however large the VMAs (a 2^46-byte droppable mapping
  maps nothing until it is used);
- except the page after a writable page, which gets a PROT_NONE sentinel when
  nothing else is there: a store that straddles into an unmapped page commits
  its first part with no hook at all, into a mapped page it fires the
  tail-write hook first (these sentinels have nothing to do with mm's guard
  regions, MADV_GUARD_INSTALL, which are PTE markers mm faults as SIGSEGV);
- but a *load* that straddles into a PROT_NONE page does not fault in
  Unicorn 2.1.4 (it reads through; into an unmapped page it faults): so the
  same tail of the writable page has a read hook that stops such a load
  before it completes and reports the read fault on the sentinel page;
- a writable page whose successor is not writable has a write hook over its
  last `tail` bytes that journals the bytes a store is about to overwrite, so
  that the part of a split store Unicorn commits before faulting can be rolled
  back: x86 faults are precise, a faulting store writes nothing.
"""
from __future__ import annotations

import ctypes
from bisect import bisect_left, insort
from dataclasses import dataclass

from unicorn import UC_HOOK_MEM_READ, UC_HOOK_MEM_WRITE, UC_PROT_EXEC, UC_PROT_NONE, UC_PROT_READ, UC_PROT_WRITE
from unicorn import x86_const as X

from mm import flags as F
from mm.flags import PAGE_SIZE

PAGE_MASK = ~(PAGE_SIZE - 1)
JOURNAL_MAX = 256


@dataclass
class Mapping:
    kind: str            # frame | sentinel | special
    frame: object        # the mm Frame (or special backing) kept alive while mapped
    perms: int
    buf: object = None   # the ctypes view whose address Unicorn holds


class Mmu:
    """Unicorn's view of one mm, plus the split-store journal."""

    def __init__(self, uc, mm, specials: list[tuple[str, int, bytearray, str]], tail: int, block_seq,
                 code_gone=None):
        self.uc = uc
        self.mm = mm
        self.specials = specials
        self.tail = tail
        self._block_seq = block_seq       # () -> blocks entered so far in this run (journal key)
        self._code_gone = code_gone       # (lo, hi) -> None: executable bytes there were unmapped or replaced
        self.mapped: dict[int, Mapping] = {}
        self._order: list[int] = []        # sorted keys of self.mapped (range queries)
        self.tail_hooks: dict[int, int] = {}
        self.read_tail_hooks: dict[int, int] = {}
        self.split_read: tuple | None = None     # (address, rip, rflags, context) of a load into a sentinel
        self.journal: list[tuple[int, int, int, bytes]] = []   # (block seq, rip, addr, old bytes)
        self.hook_error: BaseException | None = None
        self._none_page = bytearray(PAGE_SIZE)      # backing for PROT_NONE pages (never accessible)
        for _name, start, backing, perms in specials:
            self._map_special(start, backing, perms)

    # ------------------------------------------------------------------ specials
    def _map_special(self, start: int, backing: bytearray, perms: str) -> None:
        p = UC_PROT_READ | (UC_PROT_EXEC if "x" in perms else 0)
        buf = (ctypes.c_char * len(backing)).from_buffer(backing)
        self.uc.mem_map_ptr(start, len(backing), p, ctypes.addressof(buf))
        for off in range(0, len(backing), PAGE_SIZE):
            self._add(start + off, Mapping("special", backing, p, buf))

    def special_at(self, addr: int) -> str | None:
        for name, start, backing, _ in self.specials:
            if start <= addr < start + len(backing):
                return name
        return None

    def _add(self, va: int, mp: Mapping) -> None:
        if va not in self.mapped:
            insort(self._order, va)
        self.mapped[va] = mp

    def _remove(self, va: int) -> None:
        del self.mapped[va]
        del self._order[bisect_left(self._order, va)]

    def mapped_in(self, lo: int, hi: int) -> list[int]:
        """Pages Unicorn has mapped in [lo, hi)."""
        order = self._order
        return order[bisect_left(order, lo):bisect_left(order, hi)]

    # ------------------------------------------------------------------ page tables -> Unicorn
    def _desired(self, va: int) -> tuple[str, object, int]:
        pte = self.mm.pte(va)
        if pte is None or pte.frame is None:
            return ("unmapped", None, 0)
        vma = self.mm.find_vma(va)
        if vma is None:
            return ("unmapped", None, 0)
        fl = vma.vm_flags
        if not fl & (F.VM_READ | F.VM_WRITE | F.VM_EXEC):
            return ("unmapped", None, 0)          # PROT_NONE vma: every access faults
        perms = UC_PROT_READ                      # x86: every present user page is readable
        if fl & F.VM_WRITE and pte.writable:
            perms |= UC_PROT_WRITE
        if fl & F.VM_EXEC:
            perms |= UC_PROT_EXEC
        return ("frame", pte.frame, perms)

    def allows(self, va: int, access: str) -> bool:
        """Whether the CPU can make this access (read, write, exec) at va now."""
        m = self.mapped.get(va & PAGE_MASK)
        if m is None:
            return False
        need = UC_PROT_WRITE if access == "write" else UC_PROT_EXEC if access == "exec" else UC_PROT_READ
        return bool(m.perms & need)

    def writable(self, va: int) -> bool:
        m = self.mapped.get(va)
        return m is not None and bool(m.perms & UC_PROT_WRITE)

    def _sync_page(self, va: int) -> None:
        cur = self.mapped.get(va)
        if cur is not None and cur.kind == "special":
            return
        kind, frame, perms = self._desired(va)
        if kind == "unmapped" and self.writable(va - PAGE_SIZE):
            kind, perms = "sentinel", UC_PROT_NONE
        if cur is not None:
            if kind == "frame" and cur.kind == "frame" and cur.frame is frame:
                if cur.perms != perms:
                    self.uc.mem_protect(va, PAGE_SIZE, perms)
                    cur.perms = perms
                return
            if kind == "sentinel" and cur.kind == "sentinel":
                return
            self.uc.mem_unmap(va, PAGE_SIZE)
            self._remove(va)
            if cur.perms & UC_PROT_EXEC and self._code_gone is not None:
                # Unicorn drops its translations of an unmapped page; what we
                # learned of the code there (emulator/blockhook.py,
                # emulator/instrument.py) must go too.
                self._code_gone(va, va + PAGE_SIZE)
        if kind == "unmapped":
            return
        if kind == "frame":
            buf = (ctypes.c_char * PAGE_SIZE).from_buffer(frame.data)
            self.uc.mem_map_ptr(va, PAGE_SIZE, perms, ctypes.addressof(buf))
            self._add(va, Mapping("frame", frame, perms, buf))
        else:
            buf = (ctypes.c_char * PAGE_SIZE).from_buffer(self._none_page)
            self.uc.mem_map_ptr(va, PAGE_SIZE, UC_PROT_NONE, ctypes.addressof(buf))
            self._add(va, Mapping(kind, None, UC_PROT_NONE, buf))

    def sync(self, extra: list[tuple[int, int]] | None = None) -> None:
        """Bring Unicorn's mappings in line with mm's page tables, over the
        ranges mm logged as changed (and `extra`): O(pages present or mapped
        there), not O(pages in the ranges)."""
        ranges = self.mm.drain_change_ranges()
        if extra:
            ranges = ranges + list(extra)
        if not ranges:
            return
        pages: set[int] = set()
        for lo, hi in ranges:
            pages.update(vpn << 12 for vpn in self.mm.vpns_in(lo, hi))
            pages.update(self.mapped_in(lo, hi))
        for va in sorted(pages):
            self._sync_page(va)
        # Sentinels after writable pages; tail journals on every writable page
        # whose successor is not writable.  Both depend on a page's neighbours.
        around = pages | {va - PAGE_SIZE for va in pages} | {va + PAGE_SIZE for va in pages}
        for lo, hi in ranges:                   # a sentinel just past a changed range
            around.add(hi)
            around.add(lo - PAGE_SIZE)
        for va in sorted(around):
            nxt = va + PAGE_SIZE
            if self.writable(va) and nxt not in self.mapped:
                self._sync_page(nxt)
            elif not self.writable(va) and self.mapped.get(nxt) is not None and self.mapped[nxt].kind == "sentinel":
                self._sync_page(nxt)            # its writable predecessor went away
        for va in around:
            want = self.writable(va) and not self.writable(va + PAGE_SIZE)
            have = va in self.tail_hooks
            if want and not have:
                self.tail_hooks[va] = self.uc.hook_add(
                    UC_HOOK_MEM_WRITE, self._on_tail_write, None, va + PAGE_SIZE - self.tail, va + PAGE_SIZE - 1)
            elif have and not want:
                self.uc.hook_del(self.tail_hooks.pop(va))
            nxt = self.mapped.get(va + PAGE_SIZE)
            want = self.writable(va) and nxt is not None and nxt.kind == "sentinel"
            have = va in self.read_tail_hooks
            if want and not have:
                # Loads are at most 16 bytes (movups), 512 for fxrstor/xrstor.
                self.read_tail_hooks[va] = self.uc.hook_add(
                    UC_HOOK_MEM_READ, self._on_tail_read, None, va + PAGE_SIZE - self.tail, va + PAGE_SIZE - 1)
            elif have and not want:
                self.uc.hook_del(self.read_tail_hooks.pop(va))

    def widen_tail(self, tail: int) -> None:
        """Journal the last `tail` bytes of writable pages from now on (code
        with multi-piece stores, fxsave and friends, was just met)."""
        if tail <= self.tail:
            return
        self.tail = tail
        for hooks, kind, cb in ((self.tail_hooks, UC_HOOK_MEM_WRITE, self._on_tail_write),
                                (self.read_tail_hooks, UC_HOOK_MEM_READ, self._on_tail_read)):
            for va in list(hooks):
                self.uc.hook_del(hooks[va])
                hooks[va] = self.uc.hook_add(kind, cb, None, va + PAGE_SIZE - tail, va + PAGE_SIZE - 1)

    def sync_range(self, start: int, length: int) -> None:
        lo = start & PAGE_MASK
        hi = (start + length + PAGE_SIZE - 1) & PAGE_MASK
        self.sync([(lo, hi)])

    def sync_all(self) -> None:
        """Every VMA and every page Unicorn maps (a fresh or replaced mm)."""
        self.sync([(v.start, v.end) for v in self.mm.vmas] + [(va, va + PAGE_SIZE) for va in self.mapped
                                                              if self.mapped[va].kind != "special"])

    def replace_mm(self, mm) -> None:
        """Forget every user mapping and mirror another mm (the kernel's special
        mappings, and with them every translated block, stay)."""
        for va, mp in list(self.mapped.items()):
            if mp.kind != "special":
                self.uc.mem_unmap(va, PAGE_SIZE)
                self._remove(va)
                if mp.perms & UC_PROT_EXEC and self._code_gone is not None:
                    self._code_gone(va, va + PAGE_SIZE)
        for h in list(self.tail_hooks.values()) + list(self.read_tail_hooks.values()):
            self.uc.hook_del(h)
        self.tail_hooks.clear()
        self.read_tail_hooks.clear()
        self.journal.clear()
        self.mm = mm
        self.sync_all()

    # ------------------------------------------------------------------ memory peeks
    def read(self, addr: int, n: int) -> bytes:
        """Peek at guest memory without faulting (not-present reads as zeros)."""
        out = bytearray()
        while n > 0:
            chunk = min(n, PAGE_SIZE - (addr & (PAGE_SIZE - 1)))
            m = self.mapped.get(addr & PAGE_MASK)
            if m is not None and m.kind == "special":
                out += self.uc.mem_read(addr, chunk)
            else:
                out += self.mm.read(addr, chunk)
            addr += chunk
            n -= chunk
        return bytes(out)

    # ------------------------------------------------------------------ split-store journal
    def _on_tail_write(self, uc, access, address, size, value, user_data) -> None:
        """Journal what a write near a page end is about to overwrite.

        Unicorn commits the first-page part of a store that straddles into a
        non-writable page, then faults.  This hook fires before any byte is
        written; at the fault the bytes of the faulting instruction are put back
        so that no partial write survives."""
        try:
            end = (address & PAGE_MASK) + PAGE_SIZE
            n = min(size, end - address)
            old = bytes(uc.mem_read(address, n))
            self.journal.append((self._block_seq(), uc.reg_read(X.UC_X86_REG_RIP), address, old))
            if len(self.journal) > JOURNAL_MAX:
                del self.journal[:JOURNAL_MAX // 2]
        except BaseException as e:   # Unicorn swallows exceptions raised in hooks
            self.hook_error = e

    def _on_tail_read(self, uc, access, address, size, value, user_data) -> None:
        """A load that runs past the end of a writable page into the PROT_NONE
        sentinel after it: Unicorn would read through, the CPU raises #PF on
        the sentinel page.  Record it with the CPU state at the instruction
        (hooks see the state before it) and stop; the run loop reports it as a
        read fault at the first byte of that page."""
        try:
            end = (address & PAGE_MASK) + PAGE_SIZE
            if address + size > end and self.split_read is None:
                nxt = self.mapped.get(end)
                if nxt is not None and nxt.kind == "sentinel":
                    self.split_read = (end, uc.reg_read(X.UC_X86_REG_RIP), uc.reg_read(X.UC_X86_REG_RFLAGS),
                                       uc.context_save())
                    uc.emu_stop()
        except BaseException as e:   # Unicorn swallows exceptions raised in hooks
            self.hook_error = e

    def undo_partial_store(self, rip: int) -> int:
        """Roll back the bytes the faulting instruction at rip committed in this
        block execution; returns how many bytes were restored."""
        seq = self._block_seq()
        restored = 0
        for entry_seq, entry_rip, addr, old in reversed(self.journal):
            if entry_seq == seq and entry_rip == rip:
                self.uc.mem_write(addr, old)
                restored += len(old)
        return restored
