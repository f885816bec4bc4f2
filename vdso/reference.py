"""An independent Python model of the 6.11+ vDSO getrandom algorithm
(lib/vdso/getrandom.c, as documented in DESIGN.md), used as the oracle for
the machine code.  It works on a VgetrandomState-like record and asks a
callback for the bytes the getrandom syscall would return, so a test can feed
it exactly the syscall data an emulated run reports.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from vdso.abi import GRND_VALID, MAX_RW_COUNT, STATE_BATCH_LEN, STATE_SIZE
from vdso.chacha20 import chacha20_blocks

BLOCK = 64


@dataclass
class ModelState:
    batch: bytearray
    key: bytearray
    generation: int = 0
    pos: int = 0
    in_use: int = 0

    @classmethod
    def zeroed(cls) -> "ModelState":
        return cls(bytearray(STATE_BATCH_LEN), bytearray(32))

    def pack(self) -> bytes:
        return bytes(self.batch) + bytes(self.key) + self.generation.to_bytes(8, "little") + \
            bytes([self.pos, self.in_use]) + bytes(STATE_SIZE - 138)


@dataclass
class ModelRng:
    generation: int = 1
    is_ready: bool = True


@dataclass
class ModelResult:
    ret: int
    output: bytes
    reseeds: int = 0
    fallback: bool = False


def vgetrandom(state: ModelState, rng: ModelRng, length: int, flags: int,
               syscall: Callable[[int], bytes], opaque_len: int = STATE_SIZE) -> ModelResult:
    """One __vdso_getrandom call.  syscall(n) returns the n bytes getrandom(2) delivers."""
    ret = min(length, MAX_RW_COUNT)
    if flags & ~GRND_VALID or opaque_len != STATE_SIZE or not rng.is_ready:
        return ModelResult(ret, syscall(ret), fallback=True)
    if length == 0:
        return ModelResult(0, b"")
    if state.in_use:
        return ModelResult(ret, syscall(ret), fallback=True)
    state.in_use = 1
    counter = 0        # per call, kept across the one generation retry
    reseeds = 0
    first = True
    while True:
        out = bytearray()
        if state.generation != rng.generation:
            state.generation = rng.generation          # written before the reseed
            key = syscall(32)
            reseeds += 1
            if len(key) != 32:
                state.generation = 0
                state.in_use = 0
                return ModelResult(ret, syscall(ret), reseeds, fallback=True)
            state.key[:] = key
            state.pos = STATE_BATCH_LEN
        left = ret
        while True:
            n = min(STATE_BATCH_LEN - state.pos, left)
            if n:
                out += state.batch[state.pos:state.pos + n]
                state.batch[state.pos:state.pos + n] = bytes(n)    # zeroing copy
                state.pos += n
                left -= n
            if left == 0:
                break
            nblocks = left // BLOCK
            if nblocks:
                data, counter = chacha20_blocks(bytes(state.key), counter, nblocks)
                out += data
                left -= nblocks * BLOCK
            fresh, counter = chacha20_blocks(bytes(state.key), counter, 2)   # batch + next key
            state.batch[:] = fresh[:STATE_BATCH_LEN]
            state.key[:] = fresh[STATE_BATCH_LEN:]
            state.pos = 0
        if state.generation == rng.generation:
            state.in_use = 0
            return ModelResult(ret, bytes(out), reseeds)
        if not first:
            state.in_use = 0
            return ModelResult(ret, syscall(ret), reseeds, fallback=True)
        first = False
