"""The vDSO's separate debug file, served where gdb looks for one.

gdb reads a vDSO from target memory and then looks for its symbols in
/usr/lib/debug/.build-id/NN/NNNN...debug, by the image's GNU build-id (over
vFile, since the target's file system is the stub's).  The stub answers
that path with:

- `--symbols FILE`: a debug file the user has, such as the kernel's
  vdso64.so.dbg; its build-id must be the image's;
- otherwise a debug file made from the image itself (generated()): the
  running kernel's stripped [vdso] gets a .symtab naming its functions,
  including those emulator/debug/identify.py identified by running them,
  and every image gets .debug_info naming each function by its kernel name.
"""
from __future__ import annotations

import struct

from emulator.debug.dwarf import CompileUnit
from emulator.debug.identify import identified_symbols
from emulator.errors import UsageError
from vdso import elf_structs as E
from vdso.elf_symbols import MAX_SYMBOL_FILE_BYTES, read_symbols
from vdso.files import read_bytes
from vdso.image import VdsoImage

DEBUG_DIR = "/usr/lib/debug/.build-id"
SHT_NOTE = 7
NT_GNU_BUILD_ID = 3


def build_id(raw: bytes) -> bytes | None:
    """The GNU build-id note of an ELF file (from its section headers), or None."""
    try:
        hdr = struct.unpack_from(E.Elf64_Ehdr.fmt, raw, 0)
    except struct.error:
        return None
    if raw[:4] != E.ELFMAG:
        return None
    f = dict(zip(E.Elf64_Ehdr.fields, hdr))
    for k in range(f["e_shnum"]):
        try:
            sh = dict(zip(E.Elf64_Shdr.fields,
                          struct.unpack_from(E.Elf64_Shdr.fmt, raw, f["e_shoff"] + k * E.Elf64_Shdr.size)))
        except struct.error:
            return None
        if sh["sh_type"] != SHT_NOTE:
            continue
        note = raw[sh["sh_offset"]:sh["sh_offset"] + sh["sh_size"]]
        off = 0
        while off + 12 <= len(note):
            namesz, descsz, ntype = struct.unpack_from("<III", note, off)
            name_at = off + 12
            desc_at = name_at + (namesz + 3) // 4 * 4
            if ntype == NT_GNU_BUILD_ID and note[name_at:name_at + namesz].rstrip(b"\0") == b"GNU":
                return note[desc_at:desc_at + descsz]
            off = desc_at + (descsz + 3) // 4 * 4
    return None


def debug_path(bid: bytes) -> str:
    h = bid.hex()
    return f"{DEBUG_DIR}/{h[:2]}/{h[2:]}.debug"


def debug_file(image: VdsoImage, symbols_file: str | None = None) -> tuple[str, bytes] | None:
    """(path gdb will ask for, contents), or None when the image has no build-id."""
    raw = bytes(image.text)
    bid = build_id(raw)
    if symbols_file is not None:
        data = _read(symbols_file)
        theirs = build_id(data)
        if bid is None:
            raise UsageError(f"--symbols {symbols_file}: image {image.name} has no build-id to match it against")
        if theirs != bid:
            got = theirs.hex() if theirs else "none"
            raise UsageError(f"--symbols {symbols_file}: build-id {got} is not the image's {bid.hex()}")
        read_symbols(data, symbols_file)          # refuses a malformed ELF with one line
        return debug_path(bid), data
    if bid is None:
        return None
    return debug_path(bid), generated(image)


def generated(image: VdsoImage) -> bytes:
    """The image with what a debugger needs to name its code: a .symtab (the
    running kernel's image has none; ours keep theirs) naming the functions
    identified by running them too, and .debug_info describing each function
    by its kernel name, so gdb names frames __vdso_getrandom rather than the
    weak alias getrandom it would pick among equal minimal symbols."""
    raw = bytes(image.text)
    # The kernel's names, one per function: the weak aliases stay in .dynsym, and
    # of local labels at an entry point (__vgetrandom_opaque) the exported name wins.
    by_addr: dict[int, str] = {}
    for n, off in sorted({**image.symbols, **identified_symbols(image)}.items(), key=lambda kv: _rank(kv[0])):
        if n.startswith("__") and not n.startswith("__fp_"):
            by_addr.setdefault(off, n)
    names = {n: off for off, n in by_addr.items()}
    spans = _spans(raw, names)
    cu = CompileUnit(image.name, "faultpath (names from the image's symbols and emulator/debug/identify.py)",
                     (min(lo for lo, _ in spans.values()), max(hi for _, hi in spans.values())))
    for name, (lo, hi) in sorted(spans.items(), key=lambda kv: kv[1]):
        cu.function(name, lo, hi)
    info, abbrev = cu.encode()
    has_symtab = any(n == ".symtab" for n, _ in _section_names(raw))
    return add_sections(raw, None if has_symtab else names, info, abbrev)


def _rank(name: str) -> tuple:
    return (not name.startswith("__vdso_"), not name.startswith("__arch_"), name)


def _spans(raw: bytes, names: dict[str, int]) -> dict[str, tuple[int, int]]:
    """Each function's [start, end): its ELF size where the image has one, else up
    to the next function or the end of .text."""
    sizes = {s.name: s.size for s in read_symbols(raw)}
    text_end = next((sh["sh_addr"] + sh["sh_size"] for n, sh in _section_names(raw) if n == ".text"), None)
    starts = sorted(set(names.values()))
    out = {}
    for name, off in names.items():
        size = sizes.get(name) or 0
        if not size:
            later = [a for a in starts if a > off]
            size = (later[0] if later else (text_end or off + 1)) - off
        out[name] = (off, off + size)
    return out


def _read(path: str) -> bytes:
    # A regular file of bounded size, read once (vdso/files.py refuses the rest in one line).
    return read_bytes(path, limit=MAX_SYMBOL_FILE_BYTES, label=f"--symbols {path}", error=UsageError)


def _header(raw: bytes) -> dict:
    return dict(zip(E.Elf64_Ehdr.fields, struct.unpack_from(E.Elf64_Ehdr.fmt, raw, 0)))


def _shdrs(raw: bytes, f: dict) -> list[dict]:
    return [dict(zip(E.Elf64_Shdr.fields,
                     struct.unpack_from(E.Elf64_Shdr.fmt, raw, f["e_shoff"] + k * E.Elf64_Shdr.size)))
            for k in range(f["e_shnum"])]


def _section_names(raw: bytes) -> list[tuple[str, dict]]:
    f = _header(raw)
    shdrs = _shdrs(raw, f)
    strs = shdrs[f["e_shstrndx"]]
    table = raw[strs["sh_offset"]:strs["sh_offset"] + strs["sh_size"]]
    return [(table[sh["sh_name"]:table.index(b"\0", sh["sh_name"])].decode(), sh) for sh in shdrs]


def add_sections(raw: bytes, symbols: dict[str, int] | None, info: bytes, abbrev: bytes) -> bytes:
    """The ELF file `raw` with .debug_info/.debug_abbrev and, if `symbols` is
    given, a .symtab (+ .strtab) naming them (offsets from the load base,
    functions in .text); its own sections are kept as they are."""
    f = _header(raw)
    named = _section_names(raw)
    shdrs = [sh for _, sh in named]
    old_shstr = shdrs[f["e_shstrndx"]]
    shstr = bytearray(raw[old_shstr["sh_offset"]:old_shstr["sh_offset"] + old_shstr["sh_size"]])
    text_index = next(k for k, (n, _) in enumerate(named) if n == ".text")
    text = shdrs[text_index]
    out = bytearray(raw)
    new: list[dict] = []

    def append(name: str, data: bytes, **fields) -> None:
        nonlocal out
        out += b"\0" * ((-len(out)) % 8)
        new.append({"sh_name": len(shstr), "sh_type": E.SHT_PROGBITS, "sh_flags": 0, "sh_addr": 0,
                    "sh_offset": len(out), "sh_size": len(data), "sh_link": 0, "sh_info": 0,
                    "sh_addralign": 1, "sh_entsize": 0, **fields})
        shstr.extend(name.encode() + b"\0")
        out += data

    if symbols is not None:
        ordered = sorted(symbols.items(), key=lambda kv: kv[1])
        strtab = bytearray(b"\0")
        symtab = bytearray(E.Elf64_Sym.size)
        for i, (name, off) in enumerate(ordered):
            nxt = ordered[i + 1][1] if i + 1 < len(ordered) else text["sh_addr"] + text["sh_size"]
            in_text = text["sh_addr"] <= off < text["sh_addr"] + text["sh_size"]
            symtab += E.Elf64_Sym.pack(st_name=len(strtab), st_info=E.st_info(E.STB_GLOBAL, E.STT_FUNC),
                                       st_other=0, st_shndx=text_index, st_value=off,
                                       st_size=max(0, nxt - off) if in_text else 0)
            strtab += name.encode() + b"\0"
        first = len(shdrs) + len(new)
        append(".symtab", bytes(symtab), sh_type=E.SHT_SYMTAB, sh_link=first + 1, sh_info=1, sh_addralign=8,
               sh_entsize=E.Elf64_Sym.size)
        append(".strtab", bytes(strtab), sh_type=E.SHT_STRTAB)
    append(".debug_info", info)
    append(".debug_abbrev", abbrev)
    out += b"\0" * ((-len(out)) % 8)
    shstr_off = len(out)
    out += shstr
    out += b"\0" * ((-len(out)) % 8)
    shoff = len(out)
    shdrs[f["e_shstrndx"]] = {**old_shstr, "sh_offset": shstr_off, "sh_size": len(shstr)}
    for sh in shdrs + new:
        out += E.Elf64_Shdr.pack(**sh)
    f.update(e_shoff=shoff, e_shnum=len(shdrs) + len(new))
    out[:E.Elf64_Ehdr.size] = E.Elf64_Ehdr.pack(**f)
    return bytes(out)
