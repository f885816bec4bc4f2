"""A small ELF64 writer: sections in, an x86-64 ELF file out.

For the files the GDB stub hands gdb (the caller's executable, a vDSO's
separate debug file): a list of sections, an optional loadable segment and
a symbol table.  Struct layouts come from vdso/elf_structs.py.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from vdso import elf_structs as E

# gABI values vdso/elf_structs.py does not need for a vDSO
ET_EXEC = 2
SHT_NOBITS = 8


@dataclass
class OutSection:
    name: str
    sh_type: int
    data: bytes = b""
    flags: int = 0
    addr: int = 0
    align: int = 1
    entsize: int = 0
    link: str = ""                  # name of the linked section
    info: int = 0
    size: int | None = None         # SHT_NOBITS: the size with no data


@dataclass
class OutSymbol:
    name: str
    value: int
    size: int
    type: int                       # E.STT_*
    section: str | None             # None: SHN_ABS
    bind: int = E.STB_GLOBAL


@dataclass
class Segment:
    p_type: int
    flags: int
    section: str                    # the section whose file range and address it covers
    align: int = 0x1000


@dataclass
class ElfFile:
    e_type: int
    entry: int = 0
    sections: list[OutSection] = field(default_factory=list)
    symbols: list[OutSymbol] = field(default_factory=list)
    segments: list[Segment] = field(default_factory=list)


def _align(n: int, a: int) -> int:
    return (n + a - 1) // a * a if a > 1 else n


def write(f: ElfFile) -> bytes:
    """The file.  Sections are laid out in order after the program headers; a
    section named by a segment is placed so that its file offset is congruent
    to its address modulo the segment's alignment, as loaders require."""
    sections = list(f.sections)
    if f.symbols:
        sections += _symtab(f, sections)
    names = [""] + [s.name for s in sections] + [".shstrtab"]
    shstr = bytearray(b"\0")
    name_off = {}
    for n in names[1:]:
        name_off[n] = len(shstr)
        shstr += n.encode() + b"\0"
    sections.append(OutSection(".shstrtab", E.SHT_STRTAB, bytes(shstr)))
    index = {s.name: k + 1 for k, s in enumerate(sections)}
    seg_align = {seg.section: seg.align for seg in f.segments if seg.p_type == E.PT_LOAD}
    # (a loadable section whose address is not aligned lands at the same offset
    # within a page of the file as within a page of memory)

    off = E.Elf64_Ehdr.size + len(f.segments) * E.Elf64_Phdr.size
    offsets = {}
    for s in sections:
        a = seg_align.get(s.name)
        if a:
            off += (s.addr - off) % a          # offset == address (mod the segment alignment)
        else:
            off = _align(off, s.align)
        offsets[s.name] = off
        if s.sh_type != SHT_NOBITS:
            off += len(s.data)
    shoff = _align(off, 8)

    out = bytearray(shoff + (len(sections) + 1) * E.Elf64_Shdr.size)
    ident = (E.ELFMAG + bytes([E.ELFCLASS64, E.ELFDATA2LSB, E.EV_CURRENT, E.ELFOSABI_SYSV])).ljust(16, b"\0")
    out[:E.Elf64_Ehdr.size] = E.Elf64_Ehdr.pack(
        e_ident=ident, e_type=f.e_type, e_machine=E.EM_X86_64, e_version=E.EV_CURRENT, e_entry=f.entry,
        e_phoff=E.Elf64_Ehdr.size if f.segments else 0, e_shoff=shoff, e_flags=0, e_ehsize=E.Elf64_Ehdr.size,
        e_phentsize=E.Elf64_Phdr.size, e_phnum=len(f.segments), e_shentsize=E.Elf64_Shdr.size,
        e_shnum=len(sections) + 1, e_shstrndx=index[".shstrtab"])
    by_name = {s.name: s for s in sections}
    ph = E.Elf64_Ehdr.size
    for seg in f.segments:
        s = by_name[seg.section]
        size = s.size if s.size is not None else len(s.data)
        filesz = 0 if s.sh_type == SHT_NOBITS else len(s.data)
        out[ph:ph + E.Elf64_Phdr.size] = E.Elf64_Phdr.pack(
            p_type=seg.p_type, p_flags=seg.flags, p_offset=offsets[s.name], p_vaddr=s.addr, p_paddr=s.addr,
            p_filesz=filesz, p_memsz=size, p_align=seg.align)
        ph += E.Elf64_Phdr.size
    for s in sections:
        if s.sh_type != SHT_NOBITS:
            out[offsets[s.name]:offsets[s.name] + len(s.data)] = s.data
    sh = shoff + E.Elf64_Shdr.size
    for s in sections:
        size = s.size if s.size is not None else len(s.data)
        out[sh:sh + E.Elf64_Shdr.size] = E.Elf64_Shdr.pack(
            sh_name=name_off[s.name], sh_type=s.sh_type, sh_flags=s.flags, sh_addr=s.addr,
            sh_offset=offsets[s.name], sh_size=size, sh_link=index[s.link] if s.link else 0,
            sh_info=s.info, sh_addralign=s.align, sh_entsize=s.entsize)
        sh += E.Elf64_Shdr.size
    return bytes(out)


def _symtab(f: ElfFile, sections: list[OutSection]) -> list[OutSection]:
    index = {s.name: k + 1 for k, s in enumerate(sections)}
    strtab = bytearray(b"\0")
    syms = sorted(f.symbols, key=lambda s: s.bind != E.STB_LOCAL)     # locals first (gABI)
    out = bytearray(E.Elf64_Sym.size)
    for s in syms:
        name = len(strtab)
        strtab += s.name.encode() + b"\0"
        out += E.Elf64_Sym.pack(st_name=name, st_info=E.st_info(s.bind, s.type), st_other=E.STV_DEFAULT,
                                st_shndx=index[s.section] if s.section else E.SHN_ABS, st_value=s.value,
                                st_size=s.size)
    first_global = 1 + sum(1 for s in syms if s.bind == E.STB_LOCAL)
    return [OutSection(".symtab", E.SHT_SYMTAB, bytes(out), align=8, entsize=E.Elf64_Sym.size, link=".strtab",
                       info=first_global),
            OutSection(".strtab", E.SHT_STRTAB, bytes(strtab))]
