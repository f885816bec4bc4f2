"""Assemble faultpath's own vDSO (asm/*.s) with keystone into a VdsoImage.

    build_image("builtin")        asm/vgetrandom.s + asm/chacha20_blocks.s, 6.11 ABI
    build_image("builtin-v14")    asm/vgetrandom_v14.s in front of the same two, v14 ABI
    build_image("path/to/x.s")    a user's file (our ChaCha20 is linked in when the
                                  file calls __arch_chacha20_blocks_nostack without
                                  defining it; `.S` is accepted but not run through cpp)
    build_image("path/to/x.patch") a built-in image with a unified diff over its
                                  asm/ sources applied: the mutants (vdso/mutants.py)
    assemble_snippet(src, addr)   plain bytes, for other code that needs keystone
    check_faithful(code, addr)    refuse code Unicorn 2.1 cannot run faithfully

The sources are Intel syntax as GAS reads it; keystone 0.9.2 (KS_MODE_64)
assembles them.  An image is a complete ELF vDSO, as the kernel builds one,
mapped at VDSO_BASE with its ELF header there; the code follows the ELF
tables.  `vdso_rng_data` names struct vdso_rng_data at VDSO_BASE +
RNG_DATA_OFFSET_6_15 (6.15+ layout: 4 pages below the image).

The jobs are split by module:
    vdso/asm_source.py    reading and normalising a source into lines
    vdso/keystone_run.py  keystone itself: its quirks, crashes in a child
    vdso/asm_program.py   assembling lines: offsets, labels, the failing line
    vdso/faithful.py      the capstone check of what was assembled
    vdso/mutants.py       patches over asm/ (the mutants), with vdso/unidiff.py
    vdso/asm_symbols.py   the ELF symbols: exports, types, sizes
    vdso/cfi.py           unwind information, derived from the code
    vdso/elf_emit.py      the ELF image (with elf_structs, elf_hash, eh_frame)
This module puts them together into images and keeps the built-in ones cached;
vdso/elf_symbols.py reads any image's symbols back.
"""
from __future__ import annotations

import dataclasses
import os
import re
from dataclasses import dataclass
from pathlib import Path

from vdso.asm_program import Program, locate_crash
from vdso.asm_source import (ASM_DIR, PROJECT_DIR, Source, SourceLine, max_alignment, parse,
                              read_source)
from vdso.asm_symbols import image_symbols
from vdso.cfi import CfiError, FunctionCfi, derive
from vdso.elf_emit import emit, metadata_size
from vdso.errors import AssemblyError
from vdso.faithful import check_faithful, decode_range
from vdso.image import (ABI_6_11, ABI_V14, MAX_IMAGE_BYTES, RNG_DATA_OFFSET_6_15, VDSO_BASE, ElfSymbol,
                        VdsoImage)
from vdso.keystone_run import isolated
from vdso.mutants import PATCH_SUFFIX, patched_sources

__all__ = ["build_image", "assemble_snippet", "check_faithful", "ASM_DIR", "PROJECT_DIR", "BUILDS"]

CHACHA_SYMBOL = "__arch_chacha20_blocks_nostack"
CHACHA_SOURCE = "chacha20_blocks.s"

# Padding after the code up to the page end: int3, so running off the end traps.
PAD_BYTE = 0xCC


@dataclass(frozen=True)
class Build:
    sources: tuple[str, ...]      # files in asm/, assembled in this order
    abi: str


BUILDS: dict[str, Build] = {
    "builtin": Build(("vgetrandom.s", CHACHA_SOURCE), ABI_6_11),
    # The v14 entry comes first: it defines __vdso_getrandom, so vgetrandom.s
    # skips its own 6.11 entry label and only contributes the shared body.
    "builtin-v14": Build(("vgetrandom_v14.s", "vgetrandom.s", CHACHA_SOURCE), ABI_V14),
}

# kind -> ((abi, source texts), image): rebuilt when a source changes.  A
# cache of pure results, keyed by everything they depend on.
_builtin_cache: dict[str, tuple[tuple, VdsoImage]] = {}


def build_image(kind_or_path: str, abi: str | None = None) -> VdsoImage:
    """Assemble a built-in image ("builtin", "builtin-v14"), a user's `.s`
    file or a `.patch` over asm/ (a mutant) into a VdsoImage mapped at
    VDSO_BASE, its text a complete ELF vDSO image (vdso/elf_emit.py).

    Raises AssemblyError ("file:line: message") when keystone refuses the
    source and UnfaithfulInstruction ("file:line: ...") for code Unicorn 2.1
    cannot run faithfully."""
    if kind_or_path in BUILDS:
        build = BUILDS[kind_or_path]
        files = [read_source(ASM_DIR / name) for name in build.sources]
        key = (abi or build.abi, tuple(files))
        cached = _builtin_cache.get(kind_or_path)
        if cached is None or cached[0] != key:
            cached = _builtin_cache[kind_or_path] = (
                key, _build_image(kind_or_path, files, abi or build.abi))
        img = cached[1]
        # A fresh object each time: callers may edit the dicts.
        return dataclasses.replace(img, symbols=dict(img.symbols),
                                   source_lines=dict(img.source_lines))
    if not kind_or_path.endswith((".s", ".S", PATCH_SUFFIX)):
        raise AssemblyError(f"{kind_or_path}: not an assembly source (expected "
                            f"{', '.join(BUILDS)}, a path ending in .s or a {PATCH_SUFFIX} over asm/)")
    path = Path(kind_or_path)
    if not os.path.lexists(path):   # anything else there is read, or refused, by vdso/files.py
        raise AssemblyError(f"{kind_or_path}: no such file")
    if kind_or_path.endswith(PATCH_SUFFIX):
        kind, files = _patched_build(path, kind_or_path)
        return _untrusted(kind_or_path, files, abi or BUILDS[kind].abi)
    files = [read_source(path, display=kind_or_path)]
    text = files[0].text
    if kind_or_path.endswith(".S"):
        # No C preprocessor here; `#define` & co. would silently be comments.
        m = re.search(r"^[ \t]*#[ \t]*(include|define|undef|if|ifdef|ifndef|elif|else|endif|"
                      r"error|pragma)\b", text, re.M)
        if m:
            lineno = text.count("\n", 0, m.start()) + 1
            raise AssemblyError(f"{kind_or_path}:{lineno}: C preprocessor directive "
                                f"#{m.group(1)}: .S files are not run through cpp")
    if (re.search(rf"(?<![\w.$]){CHACHA_SYMBOL}(?![\w.$])", text)
            and not re.search(rf"^\s*{CHACHA_SYMBOL}\s*:", text, re.M)):
        files.append(read_source(ASM_DIR / CHACHA_SOURCE))
    return _untrusted(kind_or_path, files, abi or ABI_6_11)


def assemble_snippet(src: str, addr: int, name: str = "<snippet>") -> bytes:
    """Assemble `src` for address `addr` and return the bytes.

    Same dialect and fixes as build_image (decimal literals mean decimal;
    `vdso_rng_data` resolves to VDSO_BASE + RNG_DATA_OFFSET_6_15), errors as
    AssemblyError("name:line: message").  No faithfulness check: snippets may
    be native code that never runs in Unicorn (see check_faithful)."""
    return Program(parse(name, src), addr).assemble_plain()


def _patched_build(path: Path, display: str) -> tuple[str, list[Source]]:
    """The first built-in image that assembles every file the patch changes,
    with those files patched."""
    patched = patched_sources(path, display)
    for kind, build in BUILDS.items():
        if set(patched) <= set(build.sources):
            return kind, [patched.get(name) or read_source(ASM_DIR / name) for name in build.sources]
    raise AssemblyError(f"{display}: no built-in image assembles all of "
                        f"{', '.join(sorted(patched))} together")


def _untrusted(name: str, files: list[Source], abi: str) -> VdsoImage:
    """Untrusted source: keystone can crash the process, so assemble in a child."""
    def locate():
        try:
            return locate_crash(_lines(files), VDSO_BASE)
        except AssemblyError:
            return None
    return isolated(_build_image, name, files, abi, name=name, locate=locate)


def _lines(files: list[Source]):
    return [ln for f in files for ln in f.lines()]


def _build_image(name: str, files: list[Source], abi: str) -> VdsoImage:
    lines = _lines(files)
    text_align = max_alignment(lines)
    # The code goes after the ELF tables, whose size depends on the code's
    # symbols and CFI.  Offsets inside the code do not depend on where it is,
    # as long as it keeps its alignment: assemble once to learn them, lay the
    # image out, and assemble again at the final place, which fixes the bytes
    # that do depend on it (vdso_rng_data's RIP-relative displacements).
    first = VDSO_BASE + text_align
    code, line_offsets, labels = Program(lines, first).assemble()
    if not code:
        raise AssemblyError(f"{files[0].display}: assembles to nothing")
    if len(code) > MAX_IMAGE_BYTES:
        raise AssemblyError(f"{files[0].display}: assembles to {len(code):#x} bytes, more than an image "
                            f"may hold ({MAX_IMAGE_BYTES:#x})")
    in_code = image_symbols(lines, line_offsets, labels, len(code), 0)     # offsets in the code
    text_offset = _align(metadata_size(in_code, _functions(code, in_code)), text_align)
    if VDSO_BASE + text_offset != first:
        moved = Program(lines, VDSO_BASE + text_offset).assemble()
        if (len(moved[0]), moved[1], moved[2]) != (len(code), line_offsets, labels):
            raise AssemblyError(f"{files[0].display}: the code assembles differently at "
                                f"+{text_offset:#x} than at +{text_align:#x} (.org?)")
        code = moved[0]
    source_lines = _check_and_map(lines, code, line_offsets, VDSO_BASE + text_offset)
    symbols = image_symbols(lines, line_offsets, labels, len(code), text_offset)
    elf = emit(code, text_offset, symbols, _functions(code, in_code), text_align, PAD_BYTE)
    return VdsoImage(name=name, text=elf.data,
                     symbols={n: text_offset + off for n, off in labels.items()},
                     rng_data_offset=RNG_DATA_OFFSET_6_15, abi=abi, base=VDSO_BASE,
                     rng_data_source="assembled", fixed_base=True,
                     source_lines={text_offset + off: w for off, w in source_lines.items()})


def _align(n: int, a: int) -> int:
    return (n + a - 1) // a * a


def _check_and_map(lines: list[SourceLine], code: bytes, line_offsets: dict[int, int],
                   addr: int) -> dict[int, str]:
    """Decode every statement that is code (the faithfulness check) and map
    each instruction's offset in the code to its file:line."""
    source_lines: dict[int, str] = {}
    marked = sorted(line_offsets)
    macros = {ln.code.split()[1] for ln in lines
              if ln.kind == "open" and ln.code.split()[0].lower() == ".macro" and len(ln.code.split()) > 1}
    for pos, idx in enumerate(marked):
        start = line_offsets[idx]
        end = line_offsets[marked[pos + 1]] if pos + 1 < len(marked) else len(code)
        if end < start:
            raise AssemblyError(f"{lines[idx].where}: statements out of order (.org?)")
        if start == end and lines[idx].kind == "insn" and _mnemonic(lines[idx]) not in macros:
            # Keystone drops a statement it cannot parse when others follow it
            # (`mov rax,, 1` then `ret` assembles as `ret`): an instruction
            # that became no bytes is that error, unreported.
            raise AssemblyError(f"{lines[idx].where}: `{lines[idx].raw}`: keystone made no code of this "
                                f"instruction (a syntax error it did not report)")
        if start == end or lines[idx].kind in ("data", "align"):
            continue
        decode_range(code, addr, start, end, lines[idx].where, source_lines)
    return source_lines


def _mnemonic(line) -> str:
    """The first word of a line's last statement, after its labels."""
    stmt = line.code.split(";")[-1].strip()
    while (m := re.match(r"\s*[A-Za-z_.$][\w.$]*\s*:(?!:)\s*", stmt)):
        stmt = stmt[m.end():]
    return stmt.split(None, 1)[0] if stmt.split() else ""


def _functions(code: bytes, symbols: list[ElfSymbol]) -> list[FunctionCfi]:
    """CFI for every function symbol (offsets in the code): one per address;
    overlapping ones and those whose stack cannot be followed get none
    (`faultpath asm` says why)."""
    out: list[FunctionCfi] = []
    for sym in sorted((s for s in symbols if s.type == "FUNC" and s.size and s.bind != "WEAK"),
                      key=lambda s: (s.offset, -s.size)):
        if out and sym.offset < out[-1].start + out[-1].size:
            continue
        try:
            out.append(derive(code, 0, sym.name, sym.offset, sym.size))
        except CfiError:
            continue
    return out
