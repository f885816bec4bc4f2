"""Provenance of getrandom output (test helper): every output window must be
ChaCha20 keystream of a key the kernel really supplied (followed through fast
key erasure refills), or bytes the fallback syscall delivered."""
from __future__ import annotations

from functools import lru_cache

from vdso.chacha20 import chacha20_blocks

WINDOW = 16


@lru_cache(maxsize=None)
def _stream(key: bytes, nblocks: int) -> bytes:
    return chacha20_blocks(key, 0, nblocks)[0]


def universe(root_keys: list[bytes], depth: int = 2, nblocks: int = 20) -> bytes:
    """Keystream of each root key and of the keys its refills can produce."""
    seen: set[bytes] = set()
    out = []
    frontier = list(root_keys)
    for _ in range(depth + 1):
        nxt = []
        for k in frontier:
            if k in seen:
                continue
            seen.add(k)
            s = _stream(k, nblocks)
            out.append(s)
            # a refill at counter c makes blocks c, c+1: batch = 96 bytes, new key = 32 bytes
            nxt.extend(s[c * 64 + 96:c * 64 + 128] for c in range(nblocks - 1))
        frontier = nxt
    return b"|".join(out)


def check_output(output: bytes, syscall_data: list[bytes], root_keys: list[bytes]) -> None:
    assert output, "empty output"
    fallback = b"|".join(d for d in syscall_data if len(d) != 32)
    uni = universe(root_keys)
    for off in range(0, len(output) - WINDOW + 1, WINDOW):
        w = output[off:off + WINDOW]
        assert w != bytes(WINDOW), f"zero window at output offset {off} (dropped/wiped page bytes)"
        assert w in uni or w in fallback, f"output window at {off} has no provenance: {w.hex()}"
