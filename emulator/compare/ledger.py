"""What counts as secret, and where it turned up.

The ledger collects, as a run goes, every 16-byte window of
- ``key``:    a state's key field (and every reseed key the getrandom syscall wrote),
- ``batch``:  a state's batch field (output not handed out yet),
- ``output``: output handed to the caller (a batch window later handed out
              becomes ``output``).
Windows with fewer than 10 distinct byte values are left out (zeros, pointers
and half-written fields are not evidence of anything).

scan() finds every ledger window in a page of swap or of a core dump and returns
how many bytes of each kind it covers. Any 16-byte window contains an 8-byte
chunk at an 8-aligned offset, so the page is probed at 512 aligned 8-byte
chunks against the set of every 8-byte substring of the ledger and only the
neighbourhood of a hit is checked window by window: exact, and fast enough to
scan every page ever written to swap and every page of a core dump at every
instruction boundary (pages are matched within themselves, not across page
boundaries).
"""
from __future__ import annotations

from collections import Counter

WINDOW = 16
MIN_DISTINCT = 10
KINDS = ("key", "batch", "output")
_RANK = {"batch": 0, "key": 1, "output": 2}
_ZERO_PAGE = bytes(4096)


def informative(w: bytes) -> bool:
    return len(set(w)) >= MIN_DISTINCT


class Ledger:
    def __init__(self) -> None:
        self.windows: dict[bytes, str] = {}
        self.chunks: set[bytes] = set()
        self._seen: set[bytes] = set()       # whole blobs already added, per kind

    def __len__(self) -> int:
        return len(self.windows)

    def add(self, data: bytes, kind: str) -> None:
        data = bytes(data)
        if len(data) < WINDOW:
            return
        tag = kind.encode() + b":" + data
        if tag in self._seen:
            return
        self._seen.add(tag)
        rank = _RANK[kind]
        win = self.windows
        added = False
        for i in range(len(data) - WINDOW + 1):
            w = data[i:i + WINDOW]
            if not informative(w):
                continue
            prev = win.get(w)
            if prev is None or _RANK[prev] < rank:
                win[w] = kind
                added = True
        if added:
            ch = self.chunks
            for i in range(len(data) - 7):
                ch.add(data[i:i + 8])

    def add_state(self, raw: bytes, batch: slice = slice(0, 96), key: slice = slice(96, 128)) -> None:
        """A vgetrandom_state as read from memory."""
        self.add(raw[key], "key")
        self.add(raw[batch], "batch")

    def scan(self, page: bytes) -> Counter:
        """Bytes of each kind covered by ledger windows in ``page``."""
        out: Counter = Counter()
        if not self.windows or page == _ZERO_PAGE[:len(page)]:
            return out
        chunks = self.chunks
        n = len(page)
        cand = [p for p in range(0, n - 7, 8) if page[p:p + 8] in chunks]
        if not cand:
            return out
        win = self.windows
        covered: dict[str, bytearray] = {}
        last = -1
        for p in cand:
            for s in range(max(last + 1, p - WINDOW + 8, 0), min(p + 8, n - WINDOW + 1)):
                last = s
                kind = win.get(page[s:s + WINDOW])
                if kind is not None:
                    m = covered.get(kind)
                    if m is None:
                        m = covered[kind] = bytearray(n)
                    m[s:s + WINDOW] = b"\x01" * WINDOW
        for kind, m in covered.items():
            out[kind] = m.count(1)
        return out


def windows_of(stream: bytes) -> dict[bytes, int]:
    """Informative 16-byte windows of a byte stream -> first offset."""
    out: dict[bytes, int] = {}
    for i in range(len(stream) - WINDOW + 1):
        w = stream[i:i + WINDOW]
        if w not in out and informative(w):
            out[w] = i
    return out


def duplicate_bytes(stream: bytes, against: dict[bytes, int] | None = None) -> int:
    """Bytes of ``stream`` covered by a window that occurred before in the stream
    itself (against=None) or anywhere in ``against``'s windows."""
    n = len(stream)
    if n < WINDOW:
        return 0
    mask = bytearray(n)
    seen: dict[bytes, int] = {} if against is None else against
    for i in range(n - WINDOW + 1):
        w = stream[i:i + WINDOW]
        if against is None:
            j = seen.get(w)
            if j is not None and j + WINDOW <= i and informative(w):
                mask[i:i + WINDOW] = b"\x01" * WINDOW
            elif j is None:
                seen[w] = i
        elif w in seen:
            mask[i:i + WINDOW] = b"\x01" * WINDOW
    return mask.count(1)


def zero_run_bytes(output: bytes, run: int = WINDOW) -> int:
    """Bytes of output in runs of >= run zero bytes (2^-128 for real randomness)."""
    total = 0
    i = 0
    n = len(output)
    while i < n:
        if output[i] == 0:
            j = i
            while j < n and output[j] == 0:
                j += 1
            if j - i >= run:
                total += j - i
            i = j
        else:
            i += 1
    return total
