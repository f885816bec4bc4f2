"""ELF64 little-endian struct layouts and constants, for writing vDSO images.

Layouts only, as pyelftools keeps elf/structs.py apart from the code that
reads them; vdso/elf_emit.py is the code that writes them.  Field names and
values are the System V gABI's and the GNU extensions' (<elf.h>): the symbol
versioning sections, DT_GNU_HASH and PT_GNU_EH_FRAME.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass


@dataclass(frozen=True)
class Layout:
    """A C struct: its name, struct-module format and field names, in order."""
    name: str
    fmt: str
    fields: tuple[str, ...]

    @property
    def size(self) -> int:
        return struct.calcsize(self.fmt)

    def pack(self, **values) -> bytes:
        missing = set(self.fields) ^ set(values)
        if missing:
            raise TypeError(f"{self.name}: fields {sorted(missing)} missing or unknown")
        return struct.pack(self.fmt, *(values[f] for f in self.fields))


Elf64_Ehdr = Layout("Elf64_Ehdr", "<16sHHIQQQIHHHHHH", (
    "e_ident", "e_type", "e_machine", "e_version", "e_entry", "e_phoff", "e_shoff",
    "e_flags", "e_ehsize", "e_phentsize", "e_phnum", "e_shentsize", "e_shnum", "e_shstrndx"))
Elf64_Phdr = Layout("Elf64_Phdr", "<IIQQQQQQ", (
    "p_type", "p_flags", "p_offset", "p_vaddr", "p_paddr", "p_filesz", "p_memsz", "p_align"))
Elf64_Shdr = Layout("Elf64_Shdr", "<IIQQQQIIQQ", (
    "sh_name", "sh_type", "sh_flags", "sh_addr", "sh_offset", "sh_size", "sh_link",
    "sh_info", "sh_addralign", "sh_entsize"))
Elf64_Sym = Layout("Elf64_Sym", "<IBBHQQ", (
    "st_name", "st_info", "st_other", "st_shndx", "st_value", "st_size"))
Elf64_Dyn = Layout("Elf64_Dyn", "<qQ", ("d_tag", "d_val"))
Elf64_Verdef = Layout("Elf64_Verdef", "<HHHHIII", (
    "vd_version", "vd_flags", "vd_ndx", "vd_cnt", "vd_hash", "vd_aux", "vd_next"))
Elf64_Verdaux = Layout("Elf64_Verdaux", "<II", ("vda_name", "vda_next"))
Elf64_Nhdr = Layout("Elf64_Nhdr", "<III", ("n_namesz", "n_descsz", "n_type"))
Elf64_Versym = Layout("Elf64_Versym", "<H", ("vs_index",))

# e_ident
ELFMAG = b"\x7fELF"
ELFCLASS64 = 2
ELFDATA2LSB = 1
EV_CURRENT = 1
ELFOSABI_SYSV = 0

ET_DYN = 3
EM_X86_64 = 62

# Program headers
PT_LOAD = 1
PT_DYNAMIC = 2
PT_NOTE = 4
PT_GNU_EH_FRAME = 0x6474E550
PF_X, PF_W, PF_R = 1, 2, 4

# Section headers
SHT_NULL = 0
SHT_PROGBITS = 1
SHT_SYMTAB = 2
SHT_STRTAB = 3
SHT_HASH = 5
SHT_DYNAMIC = 6
SHT_NOTE = 7
SHT_DYNSYM = 11
SHT_GNU_HASH = 0x6FFFFFF6
SHT_GNU_VERDEF = 0x6FFFFFFD
SHT_GNU_VERSYM = 0x6FFFFFFF
SHF_WRITE, SHF_ALLOC, SHF_EXECINSTR = 1, 2, 4

# Symbols
STB_LOCAL, STB_GLOBAL, STB_WEAK = 0, 1, 2
STT_NOTYPE, STT_OBJECT, STT_FUNC = 0, 1, 2
STV_DEFAULT = 0
SHN_UNDEF = 0
SHN_ABS = 0xFFF1
STB = {"LOCAL": STB_LOCAL, "GLOBAL": STB_GLOBAL, "WEAK": STB_WEAK}
STT = {"NOTYPE": STT_NOTYPE, "OBJECT": STT_OBJECT, "FUNC": STT_FUNC}


def st_info(bind: int, typ: int) -> int:
    return (bind << 4) | typ


# Dynamic tags
DT_NULL = 0
DT_HASH = 4
DT_STRTAB = 5
DT_SYMTAB = 6
DT_STRSZ = 10
DT_SYMENT = 11
DT_SONAME = 14
DT_SYMBOLIC = 16
DT_FLAGS = 30
DT_GNU_HASH = 0x6FFFFEF5
DT_VERSYM = 0x6FFFFFF0
DT_FLAGS_1 = 0x6FFFFFFB
DT_VERDEF = 0x6FFFFFFC
DT_VERDEFNUM = 0x6FFFFFFD
DF_SYMBOLIC = 0x2
DF_BIND_NOW = 0x8
DF_1_NOW = 0x1

# Symbol versioning
VER_DEF_CURRENT = 1
VER_FLG_BASE = 0x1
VER_NDX_LOCAL = 0
VER_NDX_GLOBAL = 1

# Notes
NT_GNU_BUILD_ID = 3
