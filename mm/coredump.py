"""What an ELF core dump of the mm would contain (fs/coredump.c vma_dump_size with
the default coredump_filter 0x33).

Every VMA gets a program header; its dumped size (p_filesz) is:
- 0 for VM_DONTDUMP (so droppable memory, which is always VM_DONTDUMP) and VM_IO;
- the whole VMA for private anonymous memory that has an anon_vma, i.e. that ever
  had a page allocated (MMF_DUMP_ANON_PRIVATE);
- 0 for private anonymous memory that never had one (nothing but zeros to dump).
Dumped contents come from frames, from swap for swapped-out pages (read without
swapping them in), and are zeros for pages that are not present.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Optional

from .flags import VM_DONTDUMP, VM_IO
from .gup import peek

if TYPE_CHECKING:  # pragma: no cover
    from .mm_struct import MM


@dataclass
class CoreSegment:
    start: int
    end: int
    vm_flags: int
    data: bytes = field(repr=False)


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
        return s.data[addr - s.start:addr - s.start + n]

    @property
    def size(self) -> int:
        return sum(len(s.data) for s in self.segments)


def vma_dump_size(vma) -> int:
    if vma.vm_flags & (VM_DONTDUMP | VM_IO):
        return 0
    if vma.anon_vma is not None:
        return vma.size
    return 0


def coredump(mm: "MM") -> CoreDump:
    segs, phdrs = [], []
    for v in mm.vma_tree:
        size = vma_dump_size(v)
        phdrs.append(ProgramHeader(v.start, v.end, v.vm_flags, size))
        if size:
            segs.append(CoreSegment(v.start, v.end, v.vm_flags, peek(mm, v.start, size)))
    return CoreDump(segs, phdrs)
