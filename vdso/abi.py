"""vDSO getrandom ABI: struct layouts and constants (include/vdso/getrandom.h,
include/vdso/datapage.h).  Layouts only; the logic that reads them lives with
the callers."""
from __future__ import annotations

import struct
from dataclasses import dataclass

NR_getrandom = 318
NR_vgetrandom_alloc = 451        # v14 series, x86-64

GRND_NONBLOCK = 0x0001
GRND_RANDOM = 0x0002
GRND_INSECURE = 0x0004
GRND_VALID = GRND_NONBLOCK | GRND_RANDOM | GRND_INSECURE

MAX_RW_COUNT = 0x7FFFF000        # ret = min(len, MAX_RW_COUNT)

# struct vgetrandom_state
STATE_SIZE = 144
STATE_BATCH = 0           # u8 batch[96]
STATE_BATCH_LEN = 96
STATE_KEY = 96            # u32 key[8]
STATE_KEY_LEN = 32
STATE_GENERATION = 128    # u64
STATE_POS = 136           # u8
STATE_IN_USE = 137        # u8

# struct vdso_rng_data
RNG_GENERATION = 0        # u64, never 0 in the kernel
RNG_IS_READY = 8          # u8

# struct vgetrandom_opaque_params, answered when opaque_len == ~0
PARAMS_SIZE = 4 + 4 + 4 + 13 * 4
PARAMS_FMT = "<III13I"
PROT_READ_WRITE = 3
MAP_DROPPABLE_ANON = 0x28        # MAP_DROPPABLE | MAP_ANONYMOUS


@dataclass(frozen=True)
class OpaqueParams:
    size_of_opaque_state: int
    mmap_prot: int
    mmap_flags: int
    reserved: tuple[int, ...]

    @classmethod
    def unpack(cls, raw: bytes) -> "OpaqueParams":
        v = struct.unpack(PARAMS_FMT, raw[:PARAMS_SIZE])
        return cls(v[0], v[1], v[2], tuple(v[3:]))

    EXPECTED = None  # filled below


OpaqueParams.EXPECTED = OpaqueParams(STATE_SIZE, PROT_READ_WRITE, MAP_DROPPABLE_ANON, (0,) * 13)


@dataclass(frozen=True)
class VgetrandomState:
    batch: bytes
    key: bytes
    generation: int
    pos: int
    in_use: int

    @classmethod
    def unpack(cls, raw: bytes) -> "VgetrandomState":
        gen, pos, in_use = struct.unpack_from("<QBB", raw, STATE_GENERATION)
        return cls(bytes(raw[STATE_BATCH:STATE_BATCH + STATE_BATCH_LEN]),
                   bytes(raw[STATE_KEY:STATE_KEY + STATE_KEY_LEN]), gen, pos, in_use)


def pack_rng_data(generation: int, is_ready: bool) -> bytes:
    return struct.pack("<QB", generation, 1 if is_ready else 0)
