"""What the CPU sees of mm's page tables: Unicorn's mappings, kept equal to them.

mm owns memory as frames (mm/page.py); this module maps each present page
straight onto its frame's bytes (mem_map_ptr), so a store by emulated code is a
store into the frame.  Everything else follows from how Unicorn 2.1.4 reports
faults (measured, see docs/architecture.md "Unicorn"):

- a page inside a VMA but not present is mapped PROT_NONE, so that touching it
  stops as a *protection* fault with the access reported, like a not-present
  PTE raising #PF;
- an address with no VMA stays unmapped (SIGSEGV), except the page after a
  writable page, which gets a PROT_NONE guard: a store that straddles into an
  unmapped page commits its first part with no hook at all, into a guard it
  fires the tail-write hook first;
- a writable page whose successor is not writable has a write hook over its
  last `tail` bytes that journals the bytes a store is about to overwrite, so
  that the part of a split store Unicorn commits before faulting can be rolled
  back: x86 faults are precise, a faulting store writes nothing.
"""
from __future__ import annotations

import ctypes
from dataclasses import dataclass

from unicorn import UC_HOOK_MEM_WRITE, UC_PROT_EXEC, UC_PROT_NONE, UC_PROT_READ, UC_PROT_WRITE
from unicorn import x86_const as X

from mm import flags as F
from mm.flags import PAGE_SIZE

PAGE_MASK = ~(PAGE_SIZE - 1)
JOURNAL_MAX = 256


@dataclass
class Mapping:
    kind: str            # frame | none | guard | special
    frame: object        # the mm Frame (or special backing) kept alive while mapped
    perms: int
    buf: object = None   # the ctypes view whose address Unicorn holds


class Mmu:
    """Unicorn's view of one mm, plus the split-store journal."""

    def __init__(self, uc, mm, specials: list[tuple[str, int, bytearray, str]], tail: int, block_seq):
        self.uc = uc
        self.mm = mm
        self.specials = specials
        self.tail = tail
        self._block_seq = block_seq       # () -> blocks entered so far in this run (journal key)
        self.mapped: dict[int, Mapping] = {}
        self.tail_hooks: dict[int, int] = {}
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
            self.mapped[start + off] = Mapping("special", backing, p, buf)

    def special_at(self, addr: int) -> str | None:
        for name, start, backing, _ in self.specials:
            if start <= addr < start + len(backing):
                return name
        return None

    # ------------------------------------------------------------------ page tables -> Unicorn
    def _desired(self, va: int) -> tuple[str, object, int]:
        vma = self.mm.find_vma(va)
        if vma is None:
            return ("unmapped", None, 0)
        pte = self.mm.pte(va)
        if pte is None or pte.frame is None:
            return ("none", None, UC_PROT_NONE)
        fl = vma.vm_flags
        if not fl & (F.VM_READ | F.VM_WRITE | F.VM_EXEC):
            return ("none", None, UC_PROT_NONE)   # PROT_NONE vma: present page, no access
        perms = UC_PROT_READ                      # x86: every present user page is readable
        if fl & F.VM_WRITE and pte.writable:
            perms |= UC_PROT_WRITE
        if fl & F.VM_EXEC:
            perms |= UC_PROT_EXEC
        return ("frame", pte.frame, perms)

    def writable(self, va: int) -> bool:
        m = self.mapped.get(va)
        return m is not None and bool(m.perms & UC_PROT_WRITE)

    def _sync_page(self, va: int) -> None:
        cur = self.mapped.get(va)
        if cur is not None and cur.kind == "special":
            return
        kind, frame, perms = self._desired(va)
        if kind == "unmapped" and self.writable(va - PAGE_SIZE):
            kind, perms = "guard", UC_PROT_NONE
        if cur is not None:
            if cur.kind == kind and cur.frame is frame and cur.perms == perms and kind != "frame":
                return
            if kind == "frame" and cur.kind == "frame" and cur.frame is frame:
                if cur.perms != perms:
                    self.uc.mem_protect(va, PAGE_SIZE, perms)
                    cur.perms = perms
                return
            self.uc.mem_unmap(va, PAGE_SIZE)
            del self.mapped[va]
        if kind == "unmapped":
            return
        if kind == "frame":
            buf = (ctypes.c_char * PAGE_SIZE).from_buffer(frame.data)
            self.uc.mem_map_ptr(va, PAGE_SIZE, perms, ctypes.addressof(buf))
            self.mapped[va] = Mapping("frame", frame, perms, buf)
        else:
            buf = (ctypes.c_char * PAGE_SIZE).from_buffer(self._none_page)
            self.uc.mem_map_ptr(va, PAGE_SIZE, UC_PROT_NONE, ctypes.addressof(buf))
            self.mapped[va] = Mapping(kind, None, UC_PROT_NONE, buf)

    def sync(self, extra: set[int] | None = None) -> None:
        """Bring Unicorn's mappings in line with mm's page tables."""
        changed = set(self.mm.drain_changes())
        if extra:
            changed |= extra
        if not changed and self.mapped:
            return
        if not self.mapped or len(self.mapped) <= len(self.specials) * 8:
            changed |= self._all_vma_pages()
        for va in sorted(changed):
            self._sync_page(va)
        # Guards after newly writable pages, tail journals on every writable page
        # whose successor is not writable.
        around = changed | {va - PAGE_SIZE for va in changed} | {va + PAGE_SIZE for va in changed}
        for va in sorted(around):
            if self.writable(va) and (va + PAGE_SIZE) not in self.mapped:
                self._sync_page(va + PAGE_SIZE)
        for va in around:
            want = self.writable(va) and not self.writable(va + PAGE_SIZE)
            have = va in self.tail_hooks
            if want and not have:
                self.tail_hooks[va] = self.uc.hook_add(
                    UC_HOOK_MEM_WRITE, self._on_tail_write, None, va + PAGE_SIZE - self.tail, va + PAGE_SIZE - 1)
            elif have and not want:
                self.uc.hook_del(self.tail_hooks.pop(va))

    def sync_range(self, start: int, length: int) -> None:
        lo = start & PAGE_MASK
        hi = (start + length + PAGE_SIZE - 1) & PAGE_MASK
        self.sync(set(range(lo, hi, PAGE_SIZE)) | set(va for va in self.mapped if lo <= va < hi))

    def _all_vma_pages(self) -> set[int]:
        out = set()
        for vma in self.mm.vmas:
            out.update(range(vma.start, vma.end, PAGE_SIZE))
        out.update(va for va, m in self.mapped.items() if m.kind != "special")
        return out

    def replace_mm(self, mm) -> None:
        """Forget every user mapping and mirror another mm (the kernel's special
        mappings, and with them every translated block, stay)."""
        for va, mp in list(self.mapped.items()):
            if mp.kind != "special":
                self.uc.mem_unmap(va, PAGE_SIZE)
                del self.mapped[va]
        for h in self.tail_hooks.values():
            self.uc.hook_del(h)
        self.tail_hooks.clear()
        self.journal.clear()
        self.mm = mm
        self.sync()

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
