"""The oracle's ledger: every byte a correct vDSO may hand out, and every
byte that was handed out.

It trusts nothing the code under test wrote.  What it knows comes from the
emulated kernel (every byte getrandom(2) handed out, SyscallRecord.data) and
from the oracle's own ChaCha20 (keystream.py):

* a *root key* is 32 bytes the kernel's getrandom delivered (the reseed);
* a key seen in a state is *derived* when it is keystream of a known key at a
  fast-key-erasure position (block c, bytes 32..63 of block c+1: a refill of
  batch_key writes the 96-byte batch, then the next key);
* the keystream of a known key, at any position, is legitimate output once:
  the ledger records every (key, position) handed out;
* bytes the kernel itself wrote into the buffer (the fallback syscall) are
  legitimate at the address it wrote them.

Attribution is greedy: at each output offset the longest match wins, found
with bytes.find of a 4-byte probe in each keystream (any offset), or an
address-aligned match with fallback bytes.  Segments shorter than 4 bytes are
accepted only where the algorithm can produce them: at a block boundary or at
a keystream's first unused position (the old batch's tail), and only if they
end the output or end a 96-byte batch.
"""
from __future__ import annotations

from dataclasses import dataclass

from emulator.sweep.keystream import BLOCK, KEY_LEN, ZERO_KEY, StreamCache
from vdso.abi import NR_getrandom, STATE_BATCH_LEN, STATE_KEY, STATE_KEY_LEN, STATE_SIZE

PROBE = 4                 # minimum length of a match at an arbitrary keystream offset
WINDOW = 16               # the No-repeats window
BATCH_END = (STATE_BATCH_LEN) % BLOCK    # a batch refilled at block c ends at 64c + 96: offset 32 mod 64


def common_prefix(a: bytes, b: bytes) -> int:
    """Length of the common prefix of a and b (slice compares, O(log n) of them)."""
    n = min(len(a), len(b))
    if a[:n] == b[:n]:
        return n
    lo, hi = 0, n           # a[:lo] == b[:lo], a[:hi] != b[:hi]
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if a[lo:mid] == b[lo:mid]:
            lo = mid
        else:
            hi = mid
    return lo


@dataclass
class Segment:
    offset: int         # in the output
    length: int
    source: bytes       # key (32 bytes) or b"F" + fallback id
    pos: int            # position in the source
    kind: str           # key | fallback


class Ledger:
    """Known keys and what was handed out, for one process tree's history.
    clone() is cheap, so a sweep builds one per configuration (warm calls)
    and clones it for every run."""

    def __init__(self, streams: StreamCache | None = None, min_blocks: int = 8, expand_derived: bool = False):
        self.streams = streams or StreamCache()
        self.min_blocks = min_blocks
        self.expand_derived = expand_derived      # offline: states were not observed, try every refill key
        self.keys: dict[bytes, str] = {}                     # key -> where it came from
        self.handed_out: dict[bytes, list[tuple[int, int, str]]] = {}   # source -> [(start, end, call label)]
        self.outputs: list[tuple[str, bytes]] = []           # every handed-out output (label, bytes)
        self.fallback_ids: dict[bytes, bytes] = {}           # fallback data -> source id

    def clone(self) -> "Ledger":
        j = Ledger.__new__(Ledger)
        j.streams = self.streams
        j.min_blocks = self.min_blocks
        j.expand_derived = self.expand_derived
        j.keys = dict(self.keys)
        j.handed_out = {k: list(v) for k, v in self.handed_out.items()}
        j.outputs = list(self.outputs)
        j.fallback_ids = dict(self.fallback_ids)
        return j

    # ---- what the kernel supplied, what the states show ------------------------------
    def learn_syscalls(self, syscalls) -> None:
        for s in syscalls:
            if s.nr == NR_getrandom and len(s.data) == KEY_LEN and s.args[1] == KEY_LEN:
                self.keys.setdefault(bytes(s.data), "kernel getrandom")

    def need(self, size: int) -> int:
        """Keystream bytes to look at for a call of `size` bytes: the counter runs
        to size/64 + 2 blocks per pass, and one generation retry may double it."""
        blocks = max(self.min_blocks, 2 * (size // BLOCK + 3) + 2)
        return blocks * BLOCK

    def observe_state(self, raw: bytes | None, size: int) -> None:
        """Learn the key held by a state if it is a fast-key-erasure descendant of
        a known key (a key the code made up stays unknown)."""
        if raw is None or len(raw) < STATE_SIZE:
            return
        key = bytes(raw[STATE_KEY:STATE_KEY + STATE_KEY_LEN])
        if key in self.keys or key == ZERO_KEY:
            return
        need = self.need(size)
        for k in list(self.keys):
            s = self.streams.get(k).ensure(need)
            p = s.find(key)
            while p != -1:
                if p % BLOCK == BATCH_END:
                    self.keys[key] = f"refill of {k[:4].hex()}.. at block {(p - STATE_BATCH_LEN) // BLOCK}"
                    return
                p = s.find(key, p + 1)

    # ---- attribution -------------------------------------------------------------------
    @staticmethod
    def fallbacks(syscalls) -> list[tuple[int, bytes]]:
        """(address, bytes) of everything the kernel's getrandom wrote for a call."""
        out = []
        for s in syscalls:
            if s.nr == NR_getrandom and s.data and s.data_addr:
                out.append((s.data_addr, bytes(s.data)))
        return out

    def _fallback_id(self, data: bytes) -> bytes:
        fid = self.fallback_ids.get(data)
        if fid is None:
            fid = self.fallback_ids[data] = b"F%d" % len(self.fallback_ids)
        return fid

    def hwm(self, source: bytes) -> int:
        iv = self.handed_out.get(source)
        return max(e for _, e, _ in iv) if iv else 0

    def attribute(self, out: bytes, size: int, fallbacks: list[tuple[int, bytes]] = (),
                  buf: int = 0, short_ok: bool = True) -> tuple[list[Segment], list[tuple[int, int]]]:
        """Split `out` into segments of known sources; return (segments, gaps)."""
        need = self.need(size)
        streams = [(k, self.streams.get(k).ensure(need)) for k in self.keys]
        segs: list[Segment] = []
        gaps: list[tuple[int, int]] = []
        o = 0
        n = len(out)
        while o < n:
            best: Segment | None = None
            best_fresh = False
            rest = out[o:]
            for addr, data in fallbacks:
                off = buf + o - addr
                if 0 <= off < len(data):
                    L = common_prefix(rest, data[off:])
                    if L and (best is None or L > best.length):
                        best = Segment(o, L, self._fallback_id(data), off, "fallback")
            if n - o >= PROBE:
                probe = rest[:PROBE]
                for k, s in streams:
                    p = s.find(probe)
                    while p != -1:
                        L = common_prefix(rest, s[p:])
                        fresh = not self.overlaps(k, p, p + L)
                        if best is None or L > best.length or (L == best.length and fresh and not best_fresh):
                            best = Segment(o, L, k, p, "key")
                            best_fresh = fresh
                        p = s.find(probe, p + 1)
            if best is not None and best.length < PROBE and o + best.length != n:
                best = None           # a short fallback match in the middle: chance
            if best is None and short_ok:
                best = self._short(rest, o, n, streams)
                if best is not None and self._continues_zeros(out, o, best.length, gaps):
                    best = None
            if best is None:
                if gaps and gaps[-1][1] == o:
                    gaps[-1] = (gaps[-1][0], o + 1)
                else:
                    gaps.append((o, o + 1))
                o += 1
                continue
            segs.append(best)
            o += best.length
        return segs, gaps

    def attribute_expanded(self, out: bytes, size: int, fallbacks: list[tuple[int, bytes]],
                           buf: int) -> tuple[list[Segment], list[tuple[int, int]]]:
        """Try every key a refill of a known key could have left in the state
        (keystream at 64c + 96); keep the ones the output really uses."""
        need = self.need(size)
        known = dict(self.keys)
        for k in known:
            s = self.streams.get(k).ensure(need)
            for p in range(STATE_BATCH_LEN, len(s) - KEY_LEN + 1, BLOCK):
                self.keys.setdefault(s[p:p + KEY_LEN], f"refill of {k[:4].hex()}.. at block {(p - 96) // 64}")
        segs, gaps = self.attribute(out, size, fallbacks, buf)
        used = {sg.source for sg in segs}
        self.keys = {k: v for k, v in self.keys.items() if k in known or k in used}
        return segs, gaps

    @staticmethod
    def _continues_zeros(out: bytes, o: int, length: int, gaps: list[tuple[int, int]]) -> bool:
        """Zero bytes that continue a run of unattributed zeros are that run's,
        not a 1-3 byte keystream match: some cursor of some key has a zero
        byte often enough (about one run in 256 per cursor) that otherwise the
        verdict on a dropped page would depend on the key's random bytes."""
        return (not any(out[o:o + length]) and bool(gaps) and gaps[-1][1] == o
                and not any(out[gaps[-1][0]:o]))

    def _short(self, rest: bytes, o: int, n: int, streams) -> Segment | None:
        """A segment of 1-3 bytes: only from a cursor the algorithm can leave
        (block boundary, first unused position) and only ending the output or a batch."""
        head = rest[:PROBE - 1]
        best = None
        for k, s in streams:
            cursors = set(range(0, len(s), BLOCK))
            cursors.add(self.hwm(k))
            for p in cursors:
                L = common_prefix(head, s[p:p + len(head)])
                while L:
                    if o + L == n or (p + L) % BLOCK == BATCH_END:
                        break
                    L -= 1
                if L and (best is None or L > best.length) and not self.overlaps(k, p, p + L):
                    best = Segment(o, L, k, p, "key")
        return best

    def overlaps(self, source: bytes, a: int, b: int) -> list[tuple[int, int, str]]:
        """The handed-out stretches of `source` that overlap [a, b)."""
        return [(s, e, who) for s, e, who in self.handed_out.get(source, ()) if s < b and a < e]

    def zero_key_stream(self, chunk: bytes, size: int) -> bool:
        """Is `chunk` keystream of the all-zero key (what a wiped key produces)?"""
        if len(chunk) < PROBE:
            return False
        s = self.streams.get(ZERO_KEY).ensure(self.need(size))
        return s.find(chunk[:min(len(chunk), WINDOW)]) != -1

    def window_repeat(self, data: bytes) -> tuple[str, int] | None:
        """(who, offset) of the first 16-byte window of `data` that an earlier
        output already contained."""
        for off in range(0, len(data) - WINDOW + 1):
            w = data[off:off + WINDOW]
            if w == bytes(WINDOW):
                continue
            for who, prev in self.outputs:
                if w in prev:
                    return who, off
        return None

    # ---- what was handed out --------------------------------------------------------------
    def record(self, label: str, out: bytes, segs: list[Segment]) -> None:
        for sg in segs:
            self.handed_out.setdefault(sg.source, []).append((sg.pos, sg.pos + sg.length, label))
        self.outputs.append((label, out))
