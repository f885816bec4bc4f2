"""Check an ELF file's structure against its own size before pyelftools reads it.

pyelftools trusts every offset and size in the file: a `.dynstr` offset with
its top bit set ends in an OverflowError deep in its stream code, a program
header table past the end in a construct StreamError, a verdef chain that
loops in a hang.  So before any ELFFile is built, every header, program
header and section header is read here with `struct` and every (offset, size)
pair checked against the bytes there are; the sections pyelftools will parse
further (string, symbol, version, dynamic and note tables) get their entry
sizes and links checked too.  What is left for pyelftools is data that is
inside the file and shaped as its type says; `elf_errors()` names the
exceptions its remaining failures raise, for the callers to turn into
ImageError.

Only what faultpath reads is required: 64-bit little-endian x86-64.
"""
from __future__ import annotations

import struct

from vdso.elf_structs import (EM_X86_64, ELFCLASS64, ELFDATA2LSB, ELFMAG, Elf64_Ehdr, Elf64_Phdr,
                              Elf64_Shdr, Elf64_Sym)
from vdso.errors import ImageError

SHT_NOBITS = 8
SHT_SYMTAB, SHT_STRTAB, SHT_DYNAMIC, SHT_NOTE, SHT_DYNSYM = 2, 3, 6, 7, 11
SHT_GNU_VERDEF, SHT_GNU_VERNEED, SHT_GNU_VERSYM = 0x6FFFFFFD, 0x6FFFFFFE, 0x6FFFFFFF
PT_DYNAMIC = 2
SHN_LORESERVE = 0xFF00
ADDRESS_LIMIT = 1 << 47          # x86-64 user addresses: anything above is no vDSO
MAX_SECTIONS = 4096              # real vDSOs have ~20; objects for decodecheck a few hundred
MAX_SEGMENTS = 256
# Fixed entry sizes of the tables pyelftools walks by entry.
ENTSIZE = {SHT_SYMTAB: Elf64_Sym.size, SHT_DYNSYM: Elf64_Sym.size, SHT_DYNAMIC: 16, SHT_GNU_VERSYM: 2}


def _in_file(off: int, size: int, total: int) -> bool:
    return 0 <= off <= total and 0 <= size <= total - off


def check_elf(raw: bytes, name: str) -> None:
    """ImageError (one line) unless raw is a 64-bit little-endian x86-64 ELF
    whose headers and tables all lie inside it."""
    n = len(raw)
    if raw[:4] != ELFMAG:
        raise ImageError(f"{name}: not an ELF file")
    if n < Elf64_Ehdr.size:
        raise ImageError(f"{name}: truncated ELF header ({n} bytes)")
    if raw[4] != ELFCLASS64 or raw[5] != ELFDATA2LSB:
        raise ImageError(f"{name}: not a 64-bit little-endian ELF file")
    eh = dict(zip(Elf64_Ehdr.fields, struct.unpack_from(Elf64_Ehdr.fmt, raw, 0)))
    if eh["e_machine"] != EM_X86_64:
        raise ImageError(f"{name}: not an x86-64 ELF file (e_machine {eh['e_machine']})")
    phdrs = _table(raw, name, "program header", eh["e_phoff"], eh["e_phnum"], eh["e_phentsize"],
                   Elf64_Phdr, MAX_SEGMENTS)
    if eh["e_shnum"] == 0 and eh["e_shoff"] != 0:
        raise ImageError(f"{name}: extended section numbering (e_shnum 0 with section headers) is not supported")
    shdrs = _table(raw, name, "section header", eh["e_shoff"], eh["e_shnum"], eh["e_shentsize"],
                   Elf64_Shdr, MAX_SECTIONS)
    for i, ph in enumerate(phdrs):
        _check_segment(name, i, ph, n)
    if shdrs:
        _check_sections(name, raw, eh, shdrs)


def _table(raw: bytes, name: str, what: str, off: int, count: int, entsize: int, layout, limit: int) -> list[dict]:
    if count == 0:
        return []
    if count > limit:
        raise ImageError(f"{name}: {count} {what}s (more than {limit})")
    if entsize != layout.size:
        raise ImageError(f"{name}: {what} entries of {entsize} bytes (expected {layout.size})")
    if not _in_file(off, count * entsize, len(raw)):
        raise ImageError(f"{name}: truncated or corrupt: {what} table at {off:#x} ({count} x {entsize} "
                         f"bytes) lies outside the file ({len(raw)} bytes)")
    return [dict(zip(layout.fields, struct.unpack_from(layout.fmt, raw, off + k * entsize)))
            for k in range(count)]


def _check_segment(name: str, i: int, ph: dict, n: int) -> None:
    if not _in_file(ph["p_offset"], ph["p_filesz"], n):
        raise ImageError(f"{name}: truncated or corrupt: program header {i}: contents at "
                         f"{ph['p_offset']:#x} ({ph['p_filesz']} bytes) lie outside the file ({n} bytes)")
    if ph["p_vaddr"] >= ADDRESS_LIMIT or ph["p_memsz"] >= ADDRESS_LIMIT - ph["p_vaddr"]:
        raise ImageError(f"{name}: program header {i}: p_vaddr {ph['p_vaddr']:#x} + p_memsz "
                         f"{ph['p_memsz']:#x} beyond any user address")
    if ph["p_filesz"] > ph["p_memsz"]:
        raise ImageError(f"{name}: program header {i}: p_filesz {ph['p_filesz']:#x} larger than "
                         f"p_memsz {ph['p_memsz']:#x}")
    if ph["p_type"] == PT_DYNAMIC and ph["p_filesz"] % 16:
        raise ImageError(f"{name}: program header {i}: PT_DYNAMIC of {ph['p_filesz']} bytes "
                         f"(not whole 16-byte entries)")


def _check_sections(name: str, raw: bytes, eh: dict, shdrs: list[dict]) -> None:
    n = len(raw)
    count = len(shdrs)
    strndx = eh["e_shstrndx"]
    if strndx >= count:
        raise ImageError(f"{name}: e_shstrndx {strndx} names no section ({count} sections)")
    for i, sh in enumerate(shdrs):
        where = f"{name}: section {i}"
        if sh["sh_type"] != SHT_NOBITS and not _in_file(sh["sh_offset"], sh["sh_size"], n):
            raise ImageError(f"{name}: truncated or corrupt: section {i}: contents at {sh['sh_offset']:#x} "
                             f"({sh['sh_size']} bytes) lie outside the file ({n} bytes)")
        if sh["sh_link"] >= count:
            raise ImageError(f"{where}: sh_link {sh['sh_link']} names no section")
        typ = sh["sh_type"]
        if typ in ENTSIZE:
            want = ENTSIZE[typ]
            if sh["sh_entsize"] not in (want, 0 if typ == SHT_GNU_VERSYM else want) or sh["sh_size"] % want:
                raise ImageError(f"{where}: a table of {sh['sh_size']} bytes in entries of "
                                 f"{sh['sh_entsize']} (expected whole {want}-byte entries)")
        if typ in (SHT_SYMTAB, SHT_DYNSYM, SHT_DYNAMIC, SHT_GNU_VERDEF, SHT_GNU_VERNEED):
            if shdrs[sh["sh_link"]]["sh_type"] != SHT_STRTAB:
                raise ImageError(f"{where}: sh_link {sh['sh_link']} is not a string table")
        if typ in (SHT_GNU_VERDEF, SHT_GNU_VERNEED):
            _check_version_chain(name, i, raw, sh)
        if typ == SHT_NOTE:
            _check_notes(name, i, raw, sh)
    if strndx:
        names = shdrs[strndx]
        if names["sh_type"] != SHT_STRTAB:
            raise ImageError(f"{name}: e_shstrndx {strndx} is not a string table")
        for i, sh in enumerate(shdrs):
            if sh["sh_name"] and sh["sh_name"] >= names["sh_size"]:
                raise ImageError(f"{name}: section {i}: its name lies outside the section name table")


def _check_version_chain(name: str, i: int, raw: bytes, sh: dict) -> None:
    """verdef/verneed records are a linked list by byte offsets (vd_next /
    vn_next, then vd_aux / vn_aux to their aux lists): every record the
    links reach must lie inside the section, or pyelftools reads outside it.
    The count comes from sh_info and is bounded by what the section can hold."""
    lo, size = sh["sh_offset"], sh["sh_size"]
    verdef = sh["sh_type"] == SHT_GNU_VERDEF
    rec, aux_size = (20, 8) if verdef else (16, 16)
    count = sh["sh_info"]
    if count > size // rec:
        raise ImageError(f"{name}: section {i}: {count} version records cannot fit in {size} bytes")
    off = 0
    for k in range(count):
        if not _in_file(off, rec, size):
            raise ImageError(f"{name}: section {i}: version record {k} lies outside the section")
        # Verdef: <HHHHIII (vd_cnt at 6, vd_aux at 12, vd_next at 16);
        # Verneed: <HHIII (vn_cnt at 2, vn_aux at 8, vn_next at 12).
        if verdef:
            cnt, = struct.unpack_from("<H", raw, lo + off + 6)
            aux, nxt = struct.unpack_from("<II", raw, lo + off + 12)
        else:
            cnt, = struct.unpack_from("<H", raw, lo + off + 2)
            aux, nxt = struct.unpack_from("<II", raw, lo + off + 8)
        a = off + aux
        for j in range(cnt):
            if not _in_file(a, aux_size, size):
                raise ImageError(f"{name}: section {i}: version record {k}, aux {j} lies outside the section")
            a_next, = struct.unpack_from("<I", raw, lo + a + aux_size - 4)
            a += a_next
        off += nxt


def _check_notes(name: str, i: int, raw: bytes, sh: dict) -> None:
    lo, size = sh["sh_offset"], sh["sh_size"]
    off = 0
    while off + 12 <= size:
        namesz, descsz, _ = struct.unpack_from("<III", raw, lo + off)
        step = 12 + (namesz + 3) // 4 * 4 + (descsz + 3) // 4 * 4
        if step > size - off:
            raise ImageError(f"{name}: section {i}: a note at +{off:#x} runs past the section")
        off += step


def elf_errors() -> tuple[type[BaseException], ...]:
    """Exceptions pyelftools (and the construct library under it) may still
    raise on a corrupt file whose tables passed check_elf: its own ELFError,
    stream errors, and the plain Python errors of arithmetic on bad values.
    Callers catch these around pyelftools and raise ImageError."""
    from elftools.common.exceptions import ELFError
    out: list[type[BaseException]] = [ELFError, ValueError, KeyError, IndexError, AssertionError,
                                      OverflowError, struct.error, EOFError, TypeError, AttributeError,
                                      UnicodeDecodeError, RecursionError, MemoryError]
    try:
        from elftools.construct.core import ConstructError
        out.append(ConstructError)
    except ImportError:                 # pragma: no cover - layout of older pyelftools
        pass
    return tuple(out)
