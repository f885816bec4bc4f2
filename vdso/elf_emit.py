"""Write an assembled vDSO as the complete ELF image a kernel-built one is.

The layout follows the kernel's vDSO linker script (arch/x86/entry/vdso/
vdso-layout.lds.S) and what `readelf -a` shows of the running kernel's
[vdso]: one ELF file that is also its own memory image (prelinked at 0, one
PT_LOAD mapping it page for page, R+X), with

    ELF header, program headers (PT_LOAD, PT_DYNAMIC, PT_NOTE, PT_GNU_EH_FRAME)
    .hash .gnu.hash .dynsym .dynstr .gnu.version .gnu.version_d .dynamic
    .note (GNU build-id) .eh_frame_hdr .eh_frame
    .symtab .strtab .shstrtab, the section headers
    .text                  the code, exactly as assembled
    int3 up to the page end (running off the code traps)

Where it differs from the kernel's, on purpose: the full `.symtab` (with the
static functions, e.g. __arch_chacha20_blocks_nostack) and the section
headers lie inside the mapped range, before `.text`, so that a debugger
reading the image from target memory (gdb's add-symbol-file-from-memory,
which keeps what the PT_LOAD covers) finds every symbol; the kernel strips
its image and keeps the symbols in vdso64.so.dbg.  The kernel's `Linux`
version notes are left out: our images belong to no kernel release.

Dynamic exports are versioned LINUX_2.6 as the kernel's version script does:
.gnu.version_d defines the base version (the soname linux-vdso.so.1) and
LINUX_2.6, and the dynamic symbol table holds the exports plus the
LINUX_2.6 version symbol (ABS), ordered for .gnu.hash (vdso/elf_hash.py).
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass

from vdso import eh_frame, elf_hash
from vdso import elf_structs as E
from vdso.cfi import FunctionCfi
from vdso.image import PAGE_SIZE, VDSO_SONAME, VDSO_VERSION, ElfSymbol

PHDR_COUNT = 4
BUILD_ID_SIZE = 20                 # sha1, as `ld --build-id` writes it


@dataclass(frozen=True)
class Section:
    name: str
    sh_type: int
    flags: int
    offset: int                    # in the file (= address from the image base if allocated)
    size: int
    align: int
    entsize: int = 0
    link: str = ""                 # name of the linked section
    info: int = 0


@dataclass(frozen=True)
class VdsoElf:
    data: bytes                    # the file, which is also the page-padded memory image
    text_offset: int
    text_size: int
    sections: tuple[Section, ...]
    build_id: bytes


# name -> (sh_type, flags, alignment, entsize, linked section, sh_info), in file order.
_SECTIONS = {
    ".hash": (E.SHT_HASH, E.SHF_ALLOC, 8, 4, ".dynsym", 0),
    ".gnu.hash": (E.SHT_GNU_HASH, E.SHF_ALLOC, 8, 0, ".dynsym", 0),
    ".dynsym": (E.SHT_DYNSYM, E.SHF_ALLOC, 8, E.Elf64_Sym.size, ".dynstr", 1),
    ".dynstr": (E.SHT_STRTAB, E.SHF_ALLOC, 1, 0, "", 0),
    ".gnu.version": (E.SHT_GNU_VERSYM, E.SHF_ALLOC, 2, 2, ".dynsym", 0),
    ".gnu.version_d": (E.SHT_GNU_VERDEF, E.SHF_ALLOC, 8, 0, ".dynstr", 2),     # info: verdefs
    ".dynamic": (E.SHT_DYNAMIC, E.SHF_ALLOC | E.SHF_WRITE, 8, E.Elf64_Dyn.size, ".dynstr", 0),
    ".note": (E.SHT_NOTE, E.SHF_ALLOC, 4, 0, "", 0),
    ".eh_frame_hdr": (E.SHT_PROGBITS, E.SHF_ALLOC, 4, 0, "", 0),
    ".eh_frame": (E.SHT_PROGBITS, E.SHF_ALLOC, 8, 0, "", 0),
    ".symtab": (E.SHT_SYMTAB, 0, 8, E.Elf64_Sym.size, ".strtab", None),       # info: first global
    ".strtab": (E.SHT_STRTAB, 0, 1, 0, "", 0),
    ".shstrtab": (E.SHT_STRTAB, 0, 1, 0, "", 0),
}
_NAMES = ("",) + tuple(_SECTIONS) + (".text",)           # section header order
TEXT_INDEX = len(_NAMES) - 1
_SHDRS_SIZE = len(_NAMES) * E.Elf64_Shdr.size


def _align(n: int, a: int) -> int:
    return (n + a - 1) // a * a


class _Strings:
    """A string table: "\\0" first, each name once."""

    def __init__(self, names=()):
        self.data = bytearray(b"\0")
        self.index: dict[str, int] = {"": 0}
        for name in names:
            self.add(name)

    def add(self, s: str) -> int:
        if s not in self.index:
            self.index[s] = len(self.data)
            self.data += s.encode() + b"\0"
        return self.index[s]


def metadata_size(symbols: list[ElfSymbol], functions: list[FunctionCfi]) -> int:
    """Bytes in front of .text: the smallest text offset `emit` accepts
    (before aligning it for the code)."""
    _, end = _place(_contents(symbols, functions, {}, 0))
    return end


def emit(code: bytes, text_offset: int, symbols: list[ElfSymbol], functions: list[FunctionCfi],
         text_align: int = 16, pad_byte: int = 0xCC) -> VdsoElf:
    """The image with `code` at `text_offset`.  Symbols' offsets are from the
    image base, functions' from the start of the code."""
    offsets, end = _place(_contents(symbols, functions, {}, 0))
    if text_offset < end or text_offset % text_align:
        raise ValueError(f"emit: text offset {text_offset:#x} below {end:#x} or not "
                         f"{text_align}-aligned")
    blobs = _contents(symbols, functions, offsets, text_offset)
    sections = [Section(name, t, flags, offsets[name], len(blobs[name]), align, entsize, link,
                        _first_global(symbols) if info is None else info)
                for name, (t, flags, align, entsize, link, info) in _SECTIONS.items()]
    sections.append(Section(".text", E.SHT_PROGBITS, E.SHF_ALLOC | E.SHF_EXECINSTR, text_offset,
                            len(code), text_align))
    size = _align(text_offset + len(code), PAGE_SIZE)
    out = bytearray(size)
    for sec in sections[:-1]:
        out[sec.offset:sec.offset + sec.size] = blobs[sec.name]
    shoff = offsets["__shdrs"]
    out[shoff:shoff + _SHDRS_SIZE] = _shdrs(sections)
    out[text_offset:text_offset + len(code)] = code
    out[text_offset + len(code):] = bytes([pad_byte]) * (size - text_offset - len(code))
    out[:E.Elf64_Ehdr.size] = _ehdr(shoff)
    out[E.Elf64_Ehdr.size:E.Elf64_Ehdr.size + PHDR_COUNT * E.Elf64_Phdr.size] = \
        _phdrs(size, offsets, blobs)
    # The build-id hashes the image with the id itself zeroed, as ld's does.
    build_id = hashlib.sha1(bytes(out)).digest()
    at = offsets[".note"] + E.Elf64_Nhdr.size + 4
    out[at:at + BUILD_ID_SIZE] = build_id
    return VdsoElf(bytes(out), text_offset, len(code), tuple(sections), build_id)


def _place(blobs: dict[str, bytes]) -> tuple[dict[str, int], int]:
    """File offsets of the sections and the section headers, and where the
    headers end.  Sizes never depend on the offsets, so this can run on a
    first encoding made with dummy addresses."""
    offsets, at = {}, E.Elf64_Ehdr.size + PHDR_COUNT * E.Elf64_Phdr.size
    for name, (_t, _f, align, *_rest) in _SECTIONS.items():
        at = _align(at, align)
        offsets[name] = at
        at += len(blobs[name])
    offsets["__shdrs"] = _align(at, 8)
    return offsets, offsets["__shdrs"] + _SHDRS_SIZE


def _dynamic_symbols(symbols: list[ElfSymbol]) -> list[tuple[ElfSymbol, int]]:
    """The dynamic symbol table after the null entry, with section indexes:
    the exports and the version symbol (ABS), in .gnu.hash order."""
    dyn = [(s, TEXT_INDEX) for s in symbols if s.version]
    dyn.append((ElfSymbol(VDSO_VERSION, 0, 0, "OBJECT", "GLOBAL", VDSO_VERSION), E.SHN_ABS))
    order = elf_hash.gnu_hash_order([s.name.encode() for s, _ in dyn])
    return [dyn[i] for i in order]


def _symtab_order(symbols: list[ElfSymbol]) -> list[ElfSymbol]:
    return [s for s in symbols if s.bind == "LOCAL"] + [s for s in symbols if s.bind != "LOCAL"]


def _first_global(symbols: list[ElfSymbol]) -> int:
    return 1 + sum(s.bind == "LOCAL" for s in symbols)


def _sym(strings: _Strings, s: ElfSymbol, shndx: int = TEXT_INDEX) -> bytes:
    return E.Elf64_Sym.pack(st_name=strings.add(s.name), st_info=E.st_info(E.STB[s.bind], E.STT[s.type]),
                            st_other=E.STV_DEFAULT, st_shndx=shndx, st_value=s.offset, st_size=s.size)


_NULL_SYM = bytes(E.Elf64_Sym.size)


def _contents(symbols: list[ElfSymbol], functions: list[FunctionCfi], at: dict[str, int],
              text_offset: int) -> dict[str, bytes]:
    """Every section's bytes; `at` gives section offsets (missing: 0, for sizing)."""
    def addr(name):
        return at.get(name, 0)
    out: dict[str, bytes] = {}
    dynstr = _Strings([VDSO_SONAME, VDSO_VERSION])
    dyn = _dynamic_symbols(symbols)
    out[".dynsym"] = _NULL_SYM + b"".join(_sym(dynstr, s, shndx) for s, shndx in dyn)
    names = [b""] + [s.name.encode() for s, _ in dyn]
    out[".hash"] = elf_hash.sysv_table(names)
    out[".gnu.hash"] = elf_hash.gnu_table(names, 1)
    out[".dynstr"] = bytes(dynstr.data)
    out[".gnu.version"] = b"".join(E.Elf64_Versym.pack(vs_index=v)
                                   for v in [E.VER_NDX_LOCAL] + [2] * len(dyn))
    out[".gnu.version_d"] = _verdefs(dynstr)
    out[".dynamic"] = b"".join(E.Elf64_Dyn.pack(d_tag=tag, d_val=val) for tag, val in (
        (E.DT_SONAME, dynstr.index[VDSO_SONAME]),
        (E.DT_SYMBOLIC, 0),
        (E.DT_HASH, addr(".hash")),
        (E.DT_GNU_HASH, addr(".gnu.hash")),
        (E.DT_STRTAB, addr(".dynstr")),
        (E.DT_SYMTAB, addr(".dynsym")),
        (E.DT_STRSZ, len(dynstr.data)),
        (E.DT_SYMENT, E.Elf64_Sym.size),
        (E.DT_VERDEF, addr(".gnu.version_d")),
        (E.DT_VERDEFNUM, 2),
        (E.DT_FLAGS, E.DF_SYMBOLIC | E.DF_BIND_NOW),
        (E.DT_FLAGS_1, E.DF_1_NOW),
        (E.DT_VERSYM, addr(".gnu.version")),
        (E.DT_NULL, 0)))
    out[".note"] = (E.Elf64_Nhdr.pack(n_namesz=4, n_descsz=BUILD_ID_SIZE, n_type=E.NT_GNU_BUILD_ID)
                    + b"GNU\0" + bytes(BUILD_ID_SIZE))
    frames, table = eh_frame.encode(functions, addr(".eh_frame"), text_offset)
    out[".eh_frame"] = frames
    out[".eh_frame_hdr"] = eh_frame.encode_hdr(addr(".eh_frame_hdr"), addr(".eh_frame"), table)
    strtab = _Strings()
    out[".symtab"] = _NULL_SYM + b"".join(_sym(strtab, s) for s in _symtab_order(symbols))
    out[".strtab"] = bytes(strtab.data)
    out[".shstrtab"] = bytes(_Strings(_NAMES).data)
    return out


def _verdefs(dynstr: _Strings) -> bytes:
    """Version definitions: the base (the soname) and LINUX_2.6."""
    out = b""
    defs = [(E.VER_FLG_BASE, E.VER_NDX_GLOBAL, VDSO_SONAME), (0, 2, VDSO_VERSION)]
    step = E.Elf64_Verdef.size + E.Elf64_Verdaux.size
    for k, (flags, ndx, name) in enumerate(defs):
        out += E.Elf64_Verdef.pack(vd_version=E.VER_DEF_CURRENT, vd_flags=flags, vd_ndx=ndx, vd_cnt=1,
                                   vd_hash=elf_hash.sysv_hash(name.encode()),
                                   vd_aux=E.Elf64_Verdef.size, vd_next=step if k + 1 < len(defs) else 0)
        out += E.Elf64_Verdaux.pack(vda_name=dynstr.add(name), vda_next=0)
    return out


def _shdrs(sections: list[Section]) -> bytes:
    names = _Strings(_NAMES)
    index = {name: k for k, name in enumerate(_NAMES)}
    out = bytes(E.Elf64_Shdr.size)
    for s in sections:
        out += E.Elf64_Shdr.pack(sh_name=names.index[s.name], sh_type=s.sh_type, sh_flags=s.flags,
                                 sh_addr=s.offset if s.flags & E.SHF_ALLOC else 0,
                                 sh_offset=s.offset, sh_size=s.size, sh_link=index[s.link] if s.link else 0,
                                 sh_info=s.info, sh_addralign=s.align, sh_entsize=s.entsize)
    return out


def _ehdr(shoff: int) -> bytes:
    ident = (E.ELFMAG + bytes([E.ELFCLASS64, E.ELFDATA2LSB, E.EV_CURRENT, E.ELFOSABI_SYSV])).ljust(16, b"\0")
    return E.Elf64_Ehdr.pack(e_ident=ident, e_type=E.ET_DYN, e_machine=E.EM_X86_64, e_version=E.EV_CURRENT,
                             e_entry=0, e_phoff=E.Elf64_Ehdr.size, e_shoff=shoff, e_flags=0,
                             e_ehsize=E.Elf64_Ehdr.size, e_phentsize=E.Elf64_Phdr.size, e_phnum=PHDR_COUNT,
                             e_shentsize=E.Elf64_Shdr.size, e_shnum=len(_NAMES),
                             e_shstrndx=_NAMES.index(".shstrtab"))


def _phdrs(size: int, offsets: dict[str, int], blobs: dict[str, bytes]) -> bytes:
    def seg(p_type, flags, name=None, align=8, length=None):
        off = offsets[name] if name else 0
        n = len(blobs[name]) if name else length
        return E.Elf64_Phdr.pack(p_type=p_type, p_flags=flags, p_offset=off, p_vaddr=off, p_paddr=off,
                                 p_filesz=n, p_memsz=n, p_align=align)
    return (seg(E.PT_LOAD, E.PF_R | E.PF_X, align=PAGE_SIZE, length=size)
            + seg(E.PT_DYNAMIC, E.PF_R, ".dynamic")
            + seg(E.PT_NOTE, E.PF_R, ".note", align=4)
            + seg(E.PT_GNU_EH_FRAME, E.PF_R, ".eh_frame_hdr", align=4))
