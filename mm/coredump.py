"""What an ELF core dump of the mm would contain (fs/coredump.c vma_dump_size with
the default coredump_filter 0x33).

Every VMA gets a program header; its dumped size (p_filesz) is:
- 0 for VM_DONTDUMP (so droppable memory, which is always VM_DONTDUMP) and VM_IO;
- the whole VMA for private anonymous memory that has an anon_vma, i.e. that ever
  had a page allocated (MMF_DUMP_ANON_PRIVATE);
- 0 for private anonymous memory that never had one (nothing but zeros to dump);
- for a file mapping that was never written: 0, except one page at the start of
  an executable or ELF file.
Dumped contents come from frames, from swap for swapped-out pages (read without
swapping them in), and are zeros for pages that are not present. Segments are
sparse: a dump of a huge, barely touched VMA costs what was touched.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Optional

from .filemap import file_page_bytes, file_pages
from .flags import PAGE_MASK, PAGE_SHIFT, PAGE_SIZE, VM_DONTDUMP, VM_IO, VM_READ

if TYPE_CHECKING:  # pragma: no cover
    from .mm_types import MmStruct, Zone


@dataclass
class CoreSegment:
    """One dumped VMA. Only pages with content are held (``pages``: page address ->
    4096 bytes); the rest of [start, end) reads as zeros, as the holes of a sparse
    core file do. ``data`` builds the whole segment's bytes (mind the size)."""

    start: int
    end: int
    vm_flags: int
    pages: dict[int, bytes] = field(default_factory=dict, repr=False)

    @property
    def size(self) -> int:
        return self.end - self.start

    @property
    def data(self) -> bytes:
        out = bytearray(self.size)
        for addr, page in self.pages.items():
            off = addr - self.start
            out[off:off + PAGE_SIZE] = page[:self.size - off]
        return bytes(out)

    def read(self, addr: int, n: int) -> bytes:
        """n bytes from addr (clipped to the segment)."""
        n = max(0, min(n, self.end - addr))
        out = bytearray()
        while n > 0:
            page = addr & PAGE_MASK
            off = addr - page
            k = min(n, PAGE_SIZE - off)
            data = self.pages.get(page)
            out += data[off:off + k] if data is not None else bytes(k)
            addr += k
            n -= k
        return bytes(out)


@dataclass
class ProgramHeader:
    """One PT_LOAD: p_vaddr, p_memsz = end - start, p_filesz."""
    start: int
    end: int
    vm_flags: int
    filesz: int


@dataclass
class CoreDump:
    segments: list[CoreSegment]          # the dumped VMAs, with their bytes
    phdrs: list[ProgramHeader]           # every VMA, dumped or not

    def segment_at(self, addr: int) -> Optional[CoreSegment]:
        for s in self.segments:
            if s.start <= addr < s.end:
                return s
        return None

    def contains(self, addr: int) -> bool:
        return self.segment_at(addr) is not None

    def read(self, addr: int, n: int) -> Optional[bytes]:
        s = self.segment_at(addr)
        if s is None:
            return None
        return s.read(addr, n)

    @property
    def size(self) -> int:
        return sum(s.size for s in self.segments)


ELF_MAGIC = b"\x7fELF"


def vma_dump_size(vma, phys: Optional["Zone"] = None) -> int:
    """vma_dump_size() under the default coredump_filter 0x33 (anonymous private,
    anonymous shared, ELF headers, private huge pages)."""
    if vma.vm_flags & (VM_DONTDUMP | VM_IO):
        return 0
    if vma.anon_vma is not None:
        return vma.size                  # written to: the whole VMA
    file = vma.vm_file
    if file is None:
        return 0
    # File-backed private pages are not dumped (no MMF_DUMP_MAPPED_PRIVATE), except
    # the first page of a mapping from the start of an executable file or of an ELF
    # file, "to aid in determining what was mapped here".
    if vma.vm_pgoff == 0 and vma.vm_flags & VM_READ:
        if file.mode & 0o111:
            return PAGE_SIZE
        head = file_page_bytes(phys, file, 0)[:4] if phys is not None else file.read(0, 4)
        if head == ELF_MAGIC:
            return PAGE_SIZE
    return 0


def _dumped_pages(mm: "MmStruct", vma, start: int, end: int) -> dict[int, bytes]:
    """The pages of [start, end) that hold anything: frames and swap slots (read
    without swapping in), and for a file mapping the file's pages within its size
    (get_dump_page would fault them in; here they are read without mapping).
    O(entries in range), plus the file's pages for a file mapping."""
    pages: dict[int, bytes] = {}
    pt = mm.pt
    zero = mm.phys.zero_frame
    swap = mm.phys.swap
    file = vma.vm_file
    if file is not None:
        last = min(end, vma.start + ((file_pages(file) - vma.vm_pgoff) << PAGE_SHIFT))
        for addr in range(start, last, PAGE_SIZE):
            pte = pt.get(addr >> PAGE_SHIFT)
            if pte is None or pte.none:
                pages[addr] = file_page_bytes(mm.phys, file, vma.pgoff_of(addr))
    for vpn in mm.vpns_in(start, end):
        pte = pt[vpn]
        if pte.frame is not None and pte.frame is not zero:
            pages[vpn << PAGE_SHIFT] = bytes(pte.frame.data)
        elif pte.swap_slot is not None:
            pages[vpn << PAGE_SHIFT] = swap.get(pte.swap_slot).data
    return pages


def coredump(mm: "MmStruct") -> CoreDump:
    segs, phdrs = [], []
    for v in mm.vma_tree:
        size = vma_dump_size(v, mm.phys)
        phdrs.append(ProgramHeader(v.start, v.end, v.vm_flags, size))
        if size:
            segs.append(CoreSegment(v.start, v.start + size, v.vm_flags,
                                    _dumped_pages(mm, v, v.start, v.start + size)))
    return CoreDump(segs, phdrs)
