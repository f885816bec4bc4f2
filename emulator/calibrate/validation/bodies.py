"""The validation set: which bodies run at which sizes, on what memory, and
which part of the set is held out.

A *body* is one function of an image (a gcc flavour of c/*.c, or the
keystone kernels) with the memory it works on; a *case* is a body at one
size.  Every case is measured natively and predicted by the emulator from
the same bytes, the same arguments and the same initial memory.

The held-out part is fixed here, before any model change, and never used to
choose or fit anything: every -O3 build, the C vgetrandom at every level, and
four of the kernels.  `bench --validate` prints it apart.
"""
from __future__ import annotations

import random
import struct
from dataclasses import dataclass
from typing import Callable

from emulator.calibrate.validation.build import FLAVORS
from emulator.calibrate.validation.kernels import KERNELS

ASM_IMAGE = "asm"
HELD_OUT_FLAVORS = frozenset({"O3-scalar", "O3-sse2"})
HELD_OUT_BODIES = frozenset({"vgetrandom"})
HELD_OUT_KERNELS = frozenset({"store_reload_chain", "setcc_chain", "nested_short", "load_mul_store"})

BUF = 16384                 # every data buffer: 4 pages, page aligned
CHASE_ENTRIES = 1024        # a 4 KiB index cycle: stays in L1
_SEED = 0x5EED


@dataclass(frozen=True)
class Buffer:
    init: str               # zero | random | ramp | crc_table | chase


def _random(n: int) -> bytes:
    return random.Random(_SEED).randbytes(n)


def _crc_table() -> bytes:
    out = []
    for i in range(256):
        c = i
        for _ in range(8):
            c = (c >> 1) ^ (0xEDB88320 if c & 1 else 0)
        out.append(c)
    return struct.pack("<256I", *out)


def _chase() -> bytes:
    """One cycle through all CHASE_ENTRIES indices in a random order."""
    order = list(range(CHASE_ENTRIES))
    random.Random(_SEED).shuffle(order)
    nxt = [0] * CHASE_ENTRIES
    for a, b in zip(order, order[1:] + order[:1]):
        nxt[a] = b
    return struct.pack(f"<{CHASE_ENTRIES}I", *nxt)


def buffer_bytes(b: Buffer) -> bytes:
    """The initial content of a buffer (the same natively and emulated)."""
    if b.init == "zero":
        return bytes(BUF)
    if b.init == "random":
        return _random(BUF)
    if b.init == "ramp":
        return bytes(i & 0xFF for i in range(BUF))
    if b.init == "crc_table":
        return _crc_table().ljust(BUF, b"\0")
    if b.init == "chase":
        return _chase().ljust(BUF, b"\0")
    raise ValueError(b.init)


@dataclass(frozen=True)
class Body:
    name: str
    symbol: str
    sizes: tuple[int, ...]
    unit: str                                          # what size counts: B | steps | iterations
    buffers: tuple[Buffer, ...] = ()
    args: Callable[[int, list[int]], list[int]] | None = None   # (size, buffer addresses) -> arguments
    kind: str = "call"                                 # call | vgetrandom


@dataclass(frozen=True)
class Case:
    image: str              # gcc-<flavour> or asm
    body: Body
    size: int
    held_out: bool

    @property
    def name(self) -> str:
        return f"{self.image} {self.body.name}"

    @property
    def label(self) -> str:
        return f"{self.name} {self.size} {self.body.unit}"


_R, _Z = Buffer("random"), Buffer("zero")
BYTES = (64, 512, 4096)

C_BODIES: tuple[Body, ...] = (
    Body("vgetrandom", "__vdso_getrandom", (1, 16, 64, 96, 256, 1024, 4096), "B", kind="vgetrandom"),
    Body("copy_bytes", "copy_bytes", BYTES, "B", (_Z, _R), lambda n, b: [b[0], b[1], n]),
    Body("copy_words", "copy_words", BYTES, "B", (_Z, _R), lambda n, b: [b[0], b[1], n]),
    Body("fill_bytes", "fill_bytes", BYTES, "B", (_Z,), lambda n, b: [b[0], 0x5A, n]),
    Body("crc32_bitwise", "crc32_bitwise", (16, 128, 1024), "B", (_R,), lambda n, b: [b[0], n]),
    Body("crc32_table", "crc32_table", BYTES, "B", (_R, Buffer("crc_table")), lambda n, b: [b[0], n, b[1]]),
    Body("fnv1a", "fnv1a", BYTES, "B", (_R,), lambda n, b: [b[0], n]),
    Body("chase", "chase", (64, 512, 4096), "steps", (Buffer("chase"),), lambda n, b: [b[0], n, 0]),
    Body("sum_words", "sum_words", BYTES, "B", (_R,), lambda n, b: [b[0], n]),
    Body("spill_mix", "spill_mix", BYTES, "B", (_R,), lambda n, b: [b[0], n]),
    Body("count_below", "count_below", BYTES, "B", (Buffer("ramp"),), lambda n, b: [b[0], n, 0x80]),
    Body("insert_sorted", "insert_sorted", BYTES, "B", (Buffer("ramp"),), lambda n, b: [b[0], n]),
)

ASM_BODIES: tuple[Body, ...] = tuple(
    Body(k, k, (64, 1024), "iterations", (_Z,), lambda n, b: [n, b[0]]) for k in KERNELS)


def cases(flavors: list[str] | None = None, asm: bool = True, quick: bool = False) -> list[Case]:
    """Every case of the set (quick: the smallest and largest size of each body)."""
    out: list[Case] = []

    def sizes(b: Body) -> tuple[int, ...]:
        return (b.sizes[0], b.sizes[-1]) if quick and len(b.sizes) > 2 else b.sizes

    for fl in (flavors if flavors is not None else list(FLAVORS)):
        for b in C_BODIES:
            held = fl in HELD_OUT_FLAVORS or b.name in HELD_OUT_BODIES
            out.extend(Case(f"gcc-{fl}", b, s, held) for s in sizes(b))
    if asm:
        for b in ASM_BODIES:
            out.extend(Case(ASM_IMAGE, b, s, b.name in HELD_OUT_KERNELS) for s in sizes(b))
    return out
