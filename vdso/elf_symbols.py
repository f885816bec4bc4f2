"""The symbol table of any vDSO ELF image, read back with pyelftools.

One reader for every image kind, since every VdsoImage's text is an ELF
file: our assembled images (full .symtab), the running kernel's stripped
[vdso] (dynamic symbols only), a vdso.so, or a debug file such as the
kernel's vdso64.so.dbg (for gdb's `--symbols FILE`).

    image_elf(img)            -> (ELF bytes, symbols)   what a debugger loads
    read_symbols(raw, name)   -> symbols of ELF bytes
    read_symbol_file(path)    -> symbols of a file on disk
"""
from __future__ import annotations

import io

from elftools.elf.elffile import ELFFile
from elftools.elf.gnuversions import GNUVerSymSection

from vdso.elf_check import check_elf, elf_errors
from vdso.errors import ImageError
from vdso.files import read_bytes
from vdso.image import ElfSymbol, VdsoImage

_TYPES = {"STT_FUNC": "FUNC", "STT_OBJECT": "OBJECT", "STT_NOTYPE": "NOTYPE"}
_BINDS = {"STB_LOCAL": "LOCAL", "STB_GLOBAL": "GLOBAL", "STB_WEAK": "WEAK"}


def image_elf(img: VdsoImage) -> tuple[bytes, list[ElfSymbol]]:
    """The image's ELF bytes (its memory image, as mapped at img.base) and
    its symbols, offsets from img.base."""
    raw = bytes(img.text)
    return raw, read_symbols(raw, img.name)


# A symbol file may be a whole unstripped vdso.so.dbg or a library: bigger
# than an image, still bounded.
MAX_SYMBOL_FILE_BYTES = 256 << 20


def read_symbol_file(path: str) -> list[ElfSymbol]:
    raw = read_bytes(path, limit=MAX_SYMBOL_FILE_BYTES, label=path, error=ImageError)
    return read_symbols(raw, path)


def read_symbols(raw: bytes, name: str = "<elf>") -> list[ElfSymbol]:
    """Code and data symbols (not section, file or absolute ones) of `.symtab`
    and `.dynsym`, each name once; a dynamic symbol carries its version.
    Offsets are from the lowest PT_LOAD address (0 for a prelinked vDSO)."""
    check_elf(raw, name)
    try:
        elf = ELFFile(io.BytesIO(raw))
        loads = [s["p_vaddr"] for s in elf.iter_segments() if s["p_type"] == "PT_LOAD"]
        lo = min(loads) if loads else 0
        versions = _dynamic_versions(elf)
        out: dict[str, ElfSymbol] = {}
        for table in (".symtab", ".dynsym"):
            sec = elf.get_section_by_name(table)
            if sec is None:
                continue
            for k, sym in enumerate(sec.iter_symbols()):
                typ = _TYPES.get(sym["st_info"]["type"])
                if not sym.name or typ is None or sym["st_shndx"] in ("SHN_UNDEF", "SHN_ABS"):
                    continue
                plain = sym.name.split("@")[0]
                version = versions.get(k) if table == ".dynsym" else None
                prev = out.get(plain)
                if prev is not None:
                    if version and not prev.version:
                        out[plain] = ElfSymbol(prev.name, prev.offset, prev.size, prev.type,
                                               prev.bind, version)
                    continue
                out[plain] = ElfSymbol(plain, sym["st_value"] - lo, sym["st_size"], typ,
                                       _BINDS.get(sym["st_info"]["bind"], "LOCAL"), version)
    except elf_errors() as e:         # a corrupt file, whatever pyelftools tripped on
        msg = (str(e).strip().splitlines() or ["no detail"])[0][:200]
        raise ImageError(f"{name}: malformed ELF ({type(e).__name__}: {msg})") from None
    return sorted(out.values(), key=lambda s: (s.offset, s.name))


def _dynamic_versions(elf: ELFFile) -> dict[int, str]:
    """dynsym index -> the version it is defined with (LINUX_2.6)."""
    versym = next((s for s in elf.iter_sections() if isinstance(s, GNUVerSymSection)), None)
    verdef = elf.get_section_by_name(".gnu.version_d")
    if versym is None or verdef is None:
        return {}
    names = {}
    for vd, auxiliaries in verdef.iter_versions():
        if not vd["vd_flags"] & 1:                 # not the base version (the soname)
            names[vd["vd_ndx"]] = next(auxiliaries).name
    out = {}
    for k in range(versym.num_symbols()):
        ndx = versym.get_symbol(k)["ndx"]
        if isinstance(ndx, int) and (ndx & 0x7FFF) in names:
            out[k] = names[ndx & 0x7FFF]
    return out
