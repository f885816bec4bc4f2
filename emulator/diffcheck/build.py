"""Putting a sequence together: instruction fragments laid out from CODE_ADDR,
initial registers and data pages, and the common exit.

Fragments are assembled once each (assemble() caches by text: a generator
draws its instructions from a few hundred texts, and a keystone run costs
half a millisecond); everything a generator varies per sequence (operand
values, addresses) lives in registers and memory, so the bytes stay cached.
"""
from __future__ import annotations

import struct
from functools import lru_cache

from emulator.diffcheck.layout import (CODE_ADDR, DATA_PAGES, GPRS, HAS_CONTENT, MXCSR_DEFAULT, PAGE,
                                       data_page)
from emulator.diffcheck.records import DiffcheckError, Sequence

EXIT = bytes.fromhex("ff2500000000")          # jmp qword ptr [rip + 0]; the 8-byte slot follows

# Operand values worth trying: the bug class is value-dependent (AF/CF/OF go
# wrong for some values only), so edges of every width, plus random ones.
EDGES = (0, 1, 2, 0x0F, 0x10, 0x7F, 0x80, 0xFF, 0x100, 0x7FFF, 0x8000, 0xFFFF, 0x7FFF_FFFF, 0x8000_0000,
         0xFFFF_FFFF, 0x1_0000_0000, 0x7FFF_F000, 0x7FFF_FFFF_FFFF_FFFF, 0x8000_0000_0000_0000,
         0xFFFF_FFFF_FFFF_FFFF, 0xFFFF_FFFF_FFFF_FFFE)


@lru_cache(maxsize=8192)
def assemble(text: str) -> bytes:
    """Position-independent fragment bytes (no RIP-relative operand, branches
    only inside the fragment).

    The project's dialect (vdso/asm_source.py: decimal literals made hex for
    keystone's radix 16) through one keystone engine kept for the process:
    assemble_snippet makes an engine and redirects stderr per call, which is
    most of a generator's time.  A refusal goes through assemble_snippet
    again, for its message."""
    from vdso.asm_program import Program
    from vdso.asm_source import parse
    plain = Program(parse("<diffcheck fragment>", text), CODE_ADDR).plain_text()
    try:
        enc, _ = _keystone().asm(plain.encode(), CODE_ADDR, as_bytes=True)
        if enc:
            return bytes(enc)
    except Exception:        # keystone.KsError; the message comes from assemble_snippet below
        pass
    from vdso.asm_build import assemble_snippet
    return assemble_snippet(text, CODE_ADDR, "<diffcheck fragment>")


@lru_cache(maxsize=None)
def _keystone():
    from keystone import KS_ARCH_X86, KS_MODE_64, KS_OPT_SYNTAX_INTEL, Ks
    ks = Ks(KS_ARCH_X86, KS_MODE_64)
    ks.syntax = KS_OPT_SYNTAX_INTEL          # sets the lexer radix to 16, as vdso/keystone_run.py does
    return ks


def value(rng) -> int:
    """A register value: an edge, a small number, a random width-limited or
    full 64-bit one."""
    k = rng.random()
    if k < 0.45:
        v = rng.choice(EDGES)
        return (v + rng.choice((0, 0, 0, 1, -1))) & (1 << 64) - 1
    if k < 0.6:
        return rng.randrange(0, 64)
    if k < 0.8:
        return rng.getrandbits(rng.choice((8, 16, 32)))
    return rng.getrandbits(64)


def xmm_value(rng) -> int:
    """128 bits: random, or a pair of doubles/floats worth comparing (NaN,
    infinities, signed zeros, equal values)."""
    specials = (0x0000_0000_0000_0000, 0x8000_0000_0000_0000, 0x3FF0_0000_0000_0000, 0xBFF0_0000_0000_0000,
                0x7FF0_0000_0000_0000, 0x7FF8_0000_0000_0000, 0x7FF4_0000_0000_0000, 0x0000_0000_0000_0001,
                0x4000_0000_3F80_0000, 0x7FC0_0000_FF80_0000)
    if rng.random() < 0.5:
        return rng.choice(specials) | rng.choice(specials) << 64
    return rng.getrandbits(128)


class SequenceBuilder:
    """Lays fragments out from CODE_ADDR and collects the initial state."""

    def __init__(self, kind: str, index: int, seed: int, rng):
        self.kind, self.index, self.seed, self.rng = kind, index, seed, rng
        self.code = bytearray()
        self.lines: list[str] = []
        self.regs: dict[str, int] = {}
        self.pages = ["present"] * DATA_PAGES
        self.content: list[bytearray | None] = [None] * DATA_PAGES
        self.xmm = [xmm_value(rng) for _ in range(16)]
        self.mm = [rng.getrandbits(64) for _ in range(8)]
        self.mxcsr = MXCSR_DEFAULT
        self.tags: dict[str, str] = {}
        self.note = ""
        self._decoded: list = []        # the code decoded so far (it only grows): _decode()
        self._decoded_end = 0

    @property
    def here(self) -> int:
        return CODE_ADDR + len(self.code)

    def emit(self, text: str, code: bytes | None = None) -> int:
        """Append a fragment; returns its address."""
        at = self.here
        self.code += assemble(text) if code is None else code
        self.lines.append(text)
        return at

    def defined(self) -> int:
        """Arithmetic flags defined after what is emitted so far (rcx unknown
        until a value is chosen for it: shifts by cl count as undefining)."""
        from emulator.diffcheck.eflags import FlagState
        return FlagState(self.regs, known_rcx="rcx" in self.regs).run(self._decode()).defined

    def _decode(self) -> list:
        """The code's instructions, decoding only what was added since the last
        call (a generator asks after every fragment; the code only grows, and
        an instruction cut at the end is decoded again once it is whole)."""
        if self._decoded_end < len(self.code):
            from emulator.diffcheck.operands import decode_all
            new = decode_all(bytes(self.code[self._decoded_end:]), CODE_ADDR + self._decoded_end)
            if new:
                self._decoded += new
                self._decoded_end = new[-1].address + new[-1].size - CODE_ADDR
        return self._decoded

    def pad(self, n: int) -> None:
        """int3 filler (a jump or call target skips over it)."""
        self.code += b"\xcc" * n

    def poke(self, addr: int, data: bytes) -> None:
        """Initial bytes of a data page (the page must be in a state with content)."""
        i = (addr - data_page(0)) // PAGE
        if not 0 <= i < DATA_PAGES or (addr + len(data) - 1 - data_page(0)) // PAGE != i:
            raise DiffcheckError(f"diffcheck: poke at {addr:#x} outside one data page")
        if self.content[i] is None:
            self.content[i] = bytearray(self.rng.randbytes(PAGE))
        off = addr - data_page(i)
        self.content[i][off:off + len(data)] = data

    def finish(self) -> Sequence:
        exit_at = len(self.code)
        self.code += EXIT + bytes(8)
        regs = {r: self.regs.get(r, 0) for r in GPRS}
        regs["rflags"] = self.regs.get("rflags", 0x202)
        for r in ("fs_base", "gs_base"):
            regs[r] = self.regs.get(r, 0)
        content = []
        for i, st in enumerate(self.pages):
            c = self.content[i]
            if st in HAS_CONTENT and c is None:
                c = bytearray(self.rng.randbytes(PAGE))
            content.append(bytes(c) if (c is not None and st in HAS_CONTENT) else None)
        from emulator.diffcheck.eflags import FlagState
        flags = FlagState(regs).run(self._decode())
        return Sequence(kind=self.kind, index=self.index, seed=self.seed, lines=self.lines, code=bytes(self.code),
                        exit_slot=exit_at + len(EXIT), regs=regs, xmm=self.xmm, mm=self.mm, mxcsr=self.mxcsr,
                        pages=list(self.pages), content=content, note=self.note, tags=self.tags,
                        flag_masks=flags.masks)


def patch_disp(code: bytes, offset: int, size: int, value: int) -> bytes:
    """Replace a displacement (or moffs) field; refuse a value that does not fit."""
    if size == 8:
        field = struct.pack("<Q", value & (1 << 64) - 1)
    elif size == 4:
        if not -(1 << 31) <= value < 1 << 32:
            raise DiffcheckError(f"diffcheck: displacement {value:#x} does not fit 32 bits")
        field = struct.pack("<I", value & 0xFFFF_FFFF)
    else:
        raise DiffcheckError(f"diffcheck: cannot patch a {size}-byte displacement")
    return code[:offset] + field + code[offset + size:]
