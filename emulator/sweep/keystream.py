"""The oracle's own ChaCha20 and the keystreams it hands to the ledger.

ChaCha20 in the DJB layout the vDSO uses (64-bit block counter in words
12-13, zero nonce), written from RFC 8439 2.1-2.3 independently of
vdso/chacha20.py and asm/ (tests/test_oracle.py checks it against the former):
the oracle must not trust the code it judges, nor share a bug with it.
"""
from __future__ import annotations

import struct

BLOCK = 64
KEY_LEN = 32
ZERO_KEY = bytes(KEY_LEN)

# Blocks are computed many at a time: word w of every block in a batch lives
# in one Python int, one 64-bit slot per block (the 32-bit word plus 32 guard
# bits that absorb the carry of an addition or the spill of a shift, masked
# off after each step).  One int operation then advances all blocks, which is
# some 20 times faster than a block at a time in pure Python.

_SIGMA = struct.unpack("<4I", b"expand 32-byte k")
_LANES = 256                     # blocks per batch


def _quarter(x: list, a: int, b: int, c: int, d: int, M: int) -> None:
    xa, xb, xc, xd = x[a], x[b], x[c], x[d]
    xa = (xa + xb) & M; t = xd ^ xa; xd = ((t << 16) & M) | ((t >> 16) & M)
    xc = (xc + xd) & M; t = xb ^ xc; xb = ((t << 12) & M) | ((t >> 20) & M)
    xa = (xa + xb) & M; t = xd ^ xa; xd = ((t << 8) & M) | ((t >> 24) & M)
    xc = (xc + xd) & M; t = xb ^ xc; xb = ((t << 7) & M) | ((t >> 25) & M)
    x[a], x[b], x[c], x[d] = xa, xb, xc, xd


def _batch(key: bytes, counter: int, n: int) -> bytes:
    rep = int.from_bytes(b"\x01\x00\x00\x00\x00\x00\x00\x00" * n, "little")   # 1 in every slot
    M = rep * 0xFFFFFFFF
    kw = struct.unpack("<8I", key)
    ctr = [(counter + i) & 0xFFFF_FFFF_FFFF_FFFF for i in range(n)]
    c12 = int.from_bytes(struct.pack(f"<{n}Q", *[c & 0xFFFFFFFF for c in ctr]), "little")
    c13 = int.from_bytes(struct.pack(f"<{n}Q", *[c >> 32 for c in ctr]), "little")
    init = [w * rep for w in _SIGMA] + [w * rep for w in kw] + [c12, c13, 0, 0]
    x = list(init)
    for _ in range(10):
        _quarter(x, 0, 4, 8, 12, M)
        _quarter(x, 1, 5, 9, 13, M)
        _quarter(x, 2, 6, 10, 14, M)
        _quarter(x, 3, 7, 11, 15, M)
        _quarter(x, 0, 5, 10, 15, M)
        _quarter(x, 1, 6, 11, 12, M)
        _quarter(x, 2, 7, 8, 13, M)
        _quarter(x, 3, 4, 9, 14, M)
    out = bytearray(64 * n)
    for w in range(16):
        lane = ((x[w] + init[w]) & M).to_bytes(8 * n, "little")
        for k in range(4):
            out[4 * w + k::64] = lane[k::8]
    return bytes(out)


def keystream_blocks(key: bytes, counter: int, n: int) -> bytes:
    """n ChaCha20 blocks of `key` from block `counter` (the oracle's own implementation)."""
    if len(key) != KEY_LEN:
        raise ValueError("ChaCha20 key is 32 bytes")
    parts = []
    while n > 0:
        k = min(n, _LANES)
        parts.append(_batch(key, counter, k))
        counter += k
        n -= k
    return b"".join(parts)


class KeyStream:
    """The keystream of one key, generated on demand and kept."""
    __slots__ = ("key", "data")

    def __init__(self, key: bytes):
        self.key = key
        self.data = b""

    def ensure(self, nbytes: int) -> bytes:
        if len(self.data) < nbytes:
            have = len(self.data) // BLOCK
            want = (nbytes + BLOCK - 1) // BLOCK
            self.data += keystream_blocks(self.key, have, want - have)
        return self.data


class StreamCache:
    """Keystreams by key, shared by every judgement in a worker (keys recur:
    the same warm state and the same deterministic reseeds in every run)."""

    def __init__(self, limit: int = 1024):
        self.limit = limit
        self._s: dict[bytes, KeyStream] = {}

    def get(self, key: bytes) -> KeyStream:
        s = self._s.get(key)
        if s is None:
            if len(self._s) >= self.limit:
                self._s.pop(next(iter(self._s)))
            s = self._s[key] = KeyStream(key)
        return s

