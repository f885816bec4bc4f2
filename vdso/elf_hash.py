"""The two symbol hash tables a dynamic loader searches: SysV `.hash` and
GNU `.gnu.hash`.

glibc's loader uses DT_GNU_HASH when an object has it and DT_HASH otherwise
(elf/dl-lookup.c, _dl_setup_hash); the kernel's vDSO carries both, and so do
our images.  DT_GNU_HASH constrains the order of the dynamic symbol table:
the hashed symbols come last, grouped by bucket, so gnu_hash_order() decides
that order and both tables are built over it.

Table sizes follow GNU ld (bfd/elflink.c), so that a table for the kernel's
13 exported symbols has the kernel's shape: 3 buckets and a 2-word Bloom
filter with shift 7.
"""
from __future__ import annotations

import struct

# GNU ld's bucket counts: the largest one not above the number of symbols.
_LD_BUCKETS = (1, 3, 17, 37, 67, 97, 131, 197, 263, 521, 1031, 2053, 4099, 8209, 16411, 32771)

_BLOOM_SHIFT1 = 6          # log2 of the Bloom word size in bits (64-bit ELF)


def sysv_hash(name: bytes) -> int:
    """The gABI's ELF hash function."""
    h = 0
    for c in name:
        h = ((h << 4) + c) & 0xFFFFFFFF
        g = h & 0xF0000000
        if g:
            h ^= g >> 24
        h &= ~g & 0xFFFFFFFF
    return h


def gnu_hash(name: bytes) -> int:
    """DJB's hash as DT_GNU_HASH uses it (h * 33 + c, 32 bits, seed 5381)."""
    h = 5381
    for c in name:
        h = (h * 33 + c) & 0xFFFFFFFF
    return h


def bucket_count(nsyms: int) -> int:
    best = _LD_BUCKETS[0]
    for i, n in enumerate(_LD_BUCKETS):
        best = n
        if i + 1 < len(_LD_BUCKETS) and nsyms < _LD_BUCKETS[i + 1]:
            break
    return best


def gnu_hash_order(names: list[bytes]) -> list[int]:
    """Indexes of `names` in the order DT_GNU_HASH needs (by bucket, stable)."""
    nb = bucket_count(len(names))
    return sorted(range(len(names)), key=lambda i: gnu_hash(names[i]) % nb)


def sysv_table(names: list[bytes]) -> bytes:
    """`.hash` over a whole dynamic symbol table (names[0] is the null symbol)."""
    nchain = len(names)
    nbucket = bucket_count(nchain - 1)
    buckets, chains = [0] * nbucket, [0] * nchain
    for i in range(1, nchain):           # prepend: chains end at index 0
        b = sysv_hash(names[i]) % nbucket
        chains[i], buckets[b] = buckets[b], i
    return struct.pack(f"<II{nbucket}I{nchain}I", nbucket, nchain, *buckets, *chains)


def gnu_table(names: list[bytes], symoffset: int) -> bytes:
    """`.gnu.hash` for names[symoffset:], which must be in gnu_hash_order."""
    hashed = names[symoffset:]
    n = len(hashed)
    nb = bucket_count(n)
    # Bloom filter size, as GNU ld sizes it.
    log2 = max(n, 1).bit_length()          # floor(log2(n)) + 1
    if log2 < 3:
        maskbits_log2 = 5
    elif (1 << (log2 - 2)) & n:
        maskbits_log2 = log2 + 3
    else:
        maskbits_log2 = log2 + 2
    maskbits_log2 = max(maskbits_log2, _BLOOM_SHIFT1)
    shift2 = maskbits_log2
    maskwords = 1 << (maskbits_log2 - _BLOOM_SHIFT1)
    bloom = [0] * maskwords
    buckets = [0] * nb
    chain = [0] * n
    hashes = [gnu_hash(s) for s in hashed]
    for k, h in enumerate(hashes):
        word = (h >> _BLOOM_SHIFT1) % maskwords
        bloom[word] |= (1 << (h % 64)) | (1 << ((h >> shift2) % 64))
        b = h % nb
        if k and hashes[k - 1] % nb == b:
            chain[k - 1] &= ~1                 # not the last of its bucket any more
        elif buckets[b]:
            raise ValueError("gnu_table: names are not in gnu_hash_order")
        else:
            buckets[b] = symoffset + k
        chain[k] = (h & ~1) | 1
    return struct.pack(f"<IIII{maskwords}Q{nb}I{n}I", nb, symoffset, maskwords, shift2,
                       *bloom, *buckets, *chain)
