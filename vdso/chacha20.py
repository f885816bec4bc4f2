"""Reference ChaCha20 block function in pure Python.

This is the oracle for the assembled `__arch_chacha20_blocks_nostack` and for
the Python model of vDSO getrandom.  It follows the original (DJB) layout that
the vDSO uses:

    words 0-3    the constants "expand 32-byte k"
    words 4-11   the 256-bit key (8 little-endian u32)
    words 12-13  a 64-bit block counter (low word first; the low word carries
                 into the high word)
    words 14-15  the nonce, zero for the vDSO

RFC 8439 uses the same block function with a different split of words 12-15
(a 32-bit counter and a 96-bit nonce); `rfc8439_block` fills those words that
way so the RFC test vectors can be checked against the same code.

Written from the ChaCha specification (RFC 8439 section 2); slow but obvious.
"""
from __future__ import annotations

import struct

BLOCK_SIZE = 64
KEY_SIZE = 32
# "expand 32-byte k" as four little-endian words.
CONSTANTS = struct.unpack("<4I", b"expand 32-byte k")

_MASK32 = 0xFFFF_FFFF
_MASK64 = 0xFFFF_FFFF_FFFF_FFFF


def _rotl32(v: int, n: int) -> int:
    return ((v << n) | (v >> (32 - n))) & _MASK32


def _quarter_round(x: list[int], a: int, b: int, c: int, d: int) -> None:
    x[a] = (x[a] + x[b]) & _MASK32
    x[d] = _rotl32(x[d] ^ x[a], 16)
    x[c] = (x[c] + x[d]) & _MASK32
    x[b] = _rotl32(x[b] ^ x[c], 12)
    x[a] = (x[a] + x[b]) & _MASK32
    x[d] = _rotl32(x[d] ^ x[a], 8)
    x[c] = (x[c] + x[d]) & _MASK32
    x[b] = _rotl32(x[b] ^ x[c], 7)


def block_from_words(state: list[int] | tuple[int, ...]) -> bytes:
    """The ChaCha20 block function on a 16-word input state: 20 rounds
    (10 column + diagonal double rounds), then the input added back."""
    if len(state) != 16:
        raise ValueError("ChaCha20 state is 16 words")
    x = list(state)
    for _ in range(10):
        _quarter_round(x, 0, 4, 8, 12)
        _quarter_round(x, 1, 5, 9, 13)
        _quarter_round(x, 2, 6, 10, 14)
        _quarter_round(x, 3, 7, 11, 15)
        _quarter_round(x, 0, 5, 10, 15)
        _quarter_round(x, 1, 6, 11, 12)
        _quarter_round(x, 2, 7, 8, 13)
        _quarter_round(x, 3, 4, 9, 14)
    return struct.pack("<16I", *(((a + b) & _MASK32) for a, b in zip(x, state)))


def _key_words(key: bytes) -> tuple[int, ...]:
    if len(key) != KEY_SIZE:
        raise ValueError(f"ChaCha20 key is {KEY_SIZE} bytes, got {len(key)}")
    return struct.unpack("<8I", key)


def chacha20_block(key: bytes, counter: int) -> bytes:
    """One 64-byte block, DJB layout: 64-bit counter in words 12-13, zero nonce."""
    counter &= _MASK64
    return block_from_words(CONSTANTS + _key_words(key)
                            + (counter & _MASK32, counter >> 32, 0, 0))


def chacha20_blocks(key: bytes, counter: int, nblocks: int) -> tuple[bytes, int]:
    """`nblocks` consecutive blocks starting at `counter`; returns the bytes
    and the counter after them, wrapping at 2**64 like the vDSO's u64."""
    if nblocks < 0:
        raise ValueError("nblocks must be >= 0")
    out = bytearray()
    for i in range(nblocks):
        out += chacha20_block(key, counter + i)
    return bytes(out), (counter + nblocks) & _MASK64


def rfc8439_block(key: bytes, counter: int, nonce: bytes) -> bytes:
    """RFC 8439 layout: 32-bit block counter in word 12, 96-bit nonce in
    words 13-15.  Same block function, only the input words differ."""
    if len(nonce) != 12:
        raise ValueError("RFC 8439 nonce is 12 bytes")
    return block_from_words(CONSTANTS + _key_words(key)
                            + (counter & _MASK32,) + struct.unpack("<3I", nonce))


def rfc8439_encrypt(key: bytes, counter: int, nonce: bytes, data: bytes) -> bytes:
    """RFC 8439 section 2.4 encryption (XOR with the keystream from `counter`)."""
    out = bytearray()
    for i in range(0, len(data), BLOCK_SIZE):
        ks = rfc8439_block(key, counter + i // BLOCK_SIZE, nonce)
        out += bytes(a ^ b for a, b in zip(data[i:i + BLOCK_SIZE], ks))
    return bytes(out)
