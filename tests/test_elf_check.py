"""Corrupt ELF images end in one ImageError line, never in pyelftools'
tracebacks (vdso/elf_check.py, vdso/elf_image.py)."""
from __future__ import annotations

import random
import struct

import pytest

from vdso.asm_build import build_image
from vdso.elf_check import check_elf
from vdso.elf_image import load_elf_bytes
from vdso.errors import FaultpathError, ImageError
from vdso.elf_symbols import read_symbols


def _raw(kind: str = "builtin") -> bytes:
    return bytes(build_image(kind).text)


def _sections(raw: bytes) -> dict[str, int]:
    """section name -> offset of its section header."""
    shoff, = struct.unpack_from("<Q", raw, 0x28)
    shnum, shstrndx = struct.unpack_from("<HH", raw, 0x3C)
    names_off, = struct.unpack_from("<Q", raw, shoff + 64 * shstrndx + 24)
    out = {}
    for k in range(shnum):
        name_idx, = struct.unpack_from("<I", raw, shoff + 64 * k)
        end = raw.index(b"\0", names_off + name_idx)
        out[raw[names_off + name_idx:end].decode()] = shoff + 64 * k
    return out


def _poke(raw: bytes, off: int, fmt: str, value: int) -> bytes:
    b = bytearray(raw)
    struct.pack_into(fmt, b, off, value)
    return bytes(b)


def _refused(raw: bytes, match: str = "") -> str:
    for load in (lambda: load_elf_bytes(raw, "x.so"), lambda: read_symbols(raw, "x.so")):
        with pytest.raises(ImageError) as e:
            load()
        msg = str(e.value)
        assert msg.startswith("x.so: ") and "\n" not in msg and match in msg
    return msg


@pytest.mark.parametrize("section, field", [
    (".dynstr", 24), (".dynsym", 24), (".dynstr", 32), (".symtab", 32), (".gnu.version_d", 24),
    (".dynamic", 24), (".note", 32), (".strtab", 24),
])
def test_top_bit_of_a_section_offset_or_size(section, field):
    raw = _raw()
    at = _sections(raw)[section] + field
    v, = struct.unpack_from("<Q", raw, at)
    _refused(_poke(raw, at, "<Q", v | 1 << 63), "outside the file")


@pytest.mark.parametrize("field, fmt, value, why", [
    (0x20, "<Q", 1 << 63, "program header table"),       # e_phoff
    (0x28, "<Q", 1 << 62, "section header table"),       # e_shoff
    (0x36, "<H", 7, "program header entries of 7 bytes"),
    (0x3C, "<H", 0xFFFF, "section headers (more than"),
    (0x3E, "<H", 0x7000, "e_shstrndx"),
])
def test_header_fields(field, fmt, value, why):
    _refused(_poke(_raw(), field, fmt, value), why)


def test_program_header_offsets():
    raw = _raw()
    phoff, = struct.unpack_from("<Q", raw, 0x20)
    _refused(_poke(raw, phoff + 8, "<Q", 1 << 63), "program header 0")       # p_offset
    _refused(_poke(raw, phoff + 40, "<Q", 1 << 62), "p_memsz")               # p_memsz
    _refused(_poke(raw, phoff + 16, "<Q", 0xFFFF_FFFF_FFFF_F000), "p_vaddr")


def test_a_version_chain_running_out_of_its_section():
    raw = _raw()
    at = _sections(raw)[".gnu.version_d"]
    off, = struct.unpack_from("<Q", raw, at + 24)
    _refused(_poke(raw, off + 16, "<I", 0x7FFF_FFF0), "version record")      # vd_next
    _refused(_poke(raw, at + 44, "<I", 0xFFFF_FFFF), "version records cannot fit")   # sh_info


def test_symbols_outside_the_image():
    raw = _raw()
    from vdso.elf_symbols import read_symbols as rs
    dynsym = _sections(raw)[".dynsym"]
    off, = struct.unpack_from("<Q", raw, dynsym + 24)
    # every dynamic symbol's st_value far past the file: no __vdso_getrandom that could run
    b = bytearray(raw)
    for k in range(1, 4):
        struct.pack_into("<Q", b, off + 24 * k + 8, 0x7000_0000)
    symtab = _sections(raw)[".symtab"]
    soff, ssize = struct.unpack_from("<QQ", raw, symtab + 24)
    for k in range(ssize // 24):
        struct.pack_into("<Q", b, soff + 24 * k + 8, 0x7000_0000)
    assert rs(bytes(b), "x.so")                  # still readable as symbols
    with pytest.raises(ImageError, match="lies outside the image"):
        load_elf_bytes(bytes(b), "x.so")


def test_real_images_pass():
    for kind in ("builtin", "builtin-v14"):
        check_elf(_raw(kind), kind)


@pytest.mark.parametrize("seed", range(6))
def test_many_flips_per_file_end_in_one_line_or_load(seed):
    """Several random multi-byte corruptions of header fields per file: each
    file either still loads or is refused in one line."""
    rng = random.Random(seed)
    base = _raw(rng.choice(["builtin", "builtin-v14"]))
    fields = [(0x20, 8), (0x28, 8), (0x38, 2), (0x3C, 2), (0x3E, 2)]
    for at in _sections(base).values():
        fields += [(at + 4, 4), (at + 24, 8), (at + 32, 8), (at + 40, 4), (at + 44, 4), (at + 56, 8)]
    outcomes = set()
    for _ in range(40):
        b = bytearray(base)
        for _ in range(rng.randint(2, 12)):
            off, size = rng.choice(fields)
            v = int.from_bytes(b[off:off + size], "little")
            v ^= 1 << rng.randrange(size * 8) if rng.random() < 0.5 else 1 << (size * 8 - 1)
            b[off:off + size] = v.to_bytes(size, "little")
        try:
            load_elf_bytes(bytes(b), "x.so")
            outcomes.add("loads")
        except FaultpathError as e:
            assert "\n" not in str(e)
            outcomes.add("refused")
    assert "refused" in outcomes
