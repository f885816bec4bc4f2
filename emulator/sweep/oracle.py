"""The sweep's oracle: judges getrandom calls against the vDSO's claims.

It trusts nothing the code under test wrote.  What it knows comes from the
emulated kernel (every byte getrandom(2) handed out, SyscallRecord.data) and
from its own ChaCha20 (below, written independently of asm/ and of
vdso/chacha20.py, and checked against the latter in tests).  From those it
rebuilds every byte a correct vDSO may hand out:

* a *root key* is 32 bytes the kernel's getrandom delivered (the reseed);
* a key seen in a state is *derived* when it is keystream of a known key at a
  fast-key-erasure position (block c, bytes 32..63 of block c+1: a refill of
  batch_key writes the 96-byte batch, then the next key);
* the keystream of a known key, at any position, is legitimate output once:
  the ledger records every (key, position) handed out;
* bytes the kernel itself wrote into the buffer (the fallback syscall) are
  legitimate at the address it wrote them.

Invariants (names as reported):

  Length              ret == requested (min(len, MAX_RW_COUNT)); the only
                      exception is a documented error (a state straddling a
                      page: -EFAULT), where ret must be exactly that error.
  Provenance          every output byte is keystream of a known key or
                      fallback bytes; unattributable zeros are reported as
                      bytes of a dropped/wiped page, keystream of the all-zero
                      key as a wiped key.
  No repeats          no keystream position and no 16-byte window is handed
                      out twice: across calls, processes (parent and child
                      after a fork) and nested calls.
  Forward secrecy     after a return the state holds neither a key whose
                      keystream was handed out nor handed-out batch bytes.
  Termination         the call returns within its instruction bound; a
                      livelock is expected only under persistent OOM, in the
                      kernel's copy_to_user (either design) or in a user-mode
                      write under `retry` (DESIGN.md, kernel-mode accesses).
  Reentrancy          a nested call (a signal handler reusing the state) shares
                      no keystream with the call it interrupted, and falls
                      back to the syscall whenever the state is claimed
                      (in_use set on a backed page).
  Memory discipline   the call writes only the buffer, the state and its own
                      stack frame (checked by diffing every page; droppable
                      pages may additionally read back as zeros after a drop
                      or in a fork child).

Attribution is greedy: at each output offset the longest match wins, found
with bytes.find of a 4-byte probe in each keystream (any offset), or an
address-aligned match with fallback bytes.  Segments shorter than 4 bytes are
accepted only where the algorithm can produce them: at a block boundary or at
a keystream's first unused position (the old batch's tail), and only if they
end the output or end a 96-byte batch.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass, field

from vdso.abi import MAX_RW_COUNT, NR_getrandom, STATE_BATCH_LEN, STATE_KEY, STATE_KEY_LEN, STATE_SIZE

BLOCK = 64
KEY_LEN = 32
PROBE = 4                 # minimum length of a match at an arbitrary keystream offset
WINDOW = 16               # the No-repeats window
BATCH_END = (STATE_BATCH_LEN) % BLOCK    # a batch refilled at block c ends at 64c + 96: offset 32 mod 64
EFAULT = 14

INVARIANTS = ("Length", "Provenance", "No repeats", "Forward secrecy", "Termination", "Reentrancy",
              "Memory discipline")
OK_CLASSES = ("ok-fast", "ok-reseed", "ok-fallback", "ok-efault")
OUTCOMES = ("ok-fast", "ok-reseed", "ok-fallback", "ok-efault", "livelock", "violation", "crash")


# --------------------------------------------------------------------------
# ChaCha20, DJB layout (64-bit block counter in words 12-13, zero nonce).
#
# Written from RFC 8439 2.1-2.3, independently of vdso/chacha20.py and asm/.
# Blocks are computed many at a time: word w of every block in a batch lives
# in one Python int, one 64-bit slot per block (the 32-bit word plus 32 guard
# bits that absorb the carry of an addition or the spill of a shift, masked
# off after each step).  One int operation then advances all blocks, which is
# some 20 times faster than a block at a time in pure Python.
# --------------------------------------------------------------------------

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


ZERO_KEY = bytes(KEY_LEN)


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


# --------------------------------------------------------------------------
# What one call did, as the harness observed it
# --------------------------------------------------------------------------

@dataclass
class CallObs:
    label: str                      # "call 2 [parent]", "call 2 [child]", "call 2 [handler]"
    role: str                       # warm | swept | child | nested | after
    size: int
    expected_ret: int
    outcome: str                    # returned, livelock, budget, signal, killed, exit
    ret: int | None = None
    output: bytes = b""
    buffer: int = 0
    state: int = 0
    syscalls: list = field(default_factory=list)      # SyscallRecord (nr, args, data, data_addr, outcome)
    state_before: bytes | None = None                  # the state's bytes when the call started
    state_after: bytes | None = None                   # the state's bytes after a return
    outcome_detail: str = ""
    instructions: int = 0
    bound: int | None = None
    livelock_expected: bool = False  # persistent OOM was injected into this call
    policy: str = "skip"
    livelock_where: str = ""        # filled by the harness: "kernel copy ..." / "user write ..."
    livelock_user: bool = False
    must_fallback: bool = False     # nested while the state was claimed on a backed page
    pair: str = ""                  # label of the interrupted call (nested) / of the handler (outer)
    inherited: bytes | None = None  # fork child: bytes already in its buffer at the fork
    parent_output: bytes | None = None
    memory: list[str] = field(default_factory=list)   # Memory-discipline findings (harness diff)


@dataclass
class Violation:
    invariant: str
    call: str
    detail: str

    def as_dict(self) -> dict:
        return {"invariant": self.invariant, "call": self.call, "detail": self.detail}


@dataclass
class Segment:
    offset: int         # in the output
    length: int
    source: bytes       # key (32 bytes) or b"F" + fallback id
    pos: int            # position in the source
    kind: str           # key | fallback


@dataclass
class Verdict:
    cls: str                                   # ok-* or livelock or violation
    violations: list[Violation] = field(default_factory=list)
    livelock: str = ""


# --------------------------------------------------------------------------
# The judge
# --------------------------------------------------------------------------

class Judge:
    """Bookkeeping for one process tree's history.  clone() is cheap, so a sweep
    builds one per configuration (warm calls) and clones it for every run."""

    def __init__(self, streams: StreamCache | None = None, min_blocks: int = 8, expand_derived: bool = False):
        self.streams = streams or StreamCache()
        self.min_blocks = min_blocks
        self.expand_derived = expand_derived      # offline: states were not observed, try every refill key
        self.keys: dict[bytes, str] = {}                     # key -> where it came from
        self.ledger: dict[bytes, list[tuple[int, int, str]]] = {}   # source -> [(start, end, call label)]
        self.outputs: list[tuple[str, bytes]] = []           # every handed-out output (label, bytes)
        self.fallback_ids: dict[bytes, bytes] = {}           # fallback data -> source id

    def clone(self) -> "Judge":
        j = Judge.__new__(Judge)
        j.streams = self.streams
        j.min_blocks = self.min_blocks
        j.expand_derived = self.expand_derived
        j.keys = dict(self.keys)
        j.ledger = {k: list(v) for k, v in self.ledger.items()}
        j.outputs = list(self.outputs)
        j.fallback_ids = dict(self.fallback_ids)
        return j

    # ---- what the kernel supplied, what the states show ------------------------------
    def learn_syscalls(self, syscalls) -> None:
        for s in syscalls:
            if s.nr == NR_getrandom and len(s.data) == KEY_LEN and s.args[1] == KEY_LEN:
                self.keys.setdefault(bytes(s.data), "kernel getrandom")

    def _need(self, size: int) -> int:
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
        need = self._need(size)
        for k in list(self.keys):
            s = self.streams.get(k).ensure(need)
            p = s.find(key)
            while p != -1:
                if p % BLOCK == BATCH_END:
                    self.keys[key] = f"refill of {k[:4].hex()}.. at block {(p - STATE_BATCH_LEN) // BLOCK}"
                    return
                p = s.find(key, p + 1)

    # ---- attribution -------------------------------------------------------------------
    def _fallbacks(self, obs: CallObs) -> list[tuple[int, bytes]]:
        out = []
        for s in obs.syscalls:
            if s.nr == NR_getrandom and s.data and s.data_addr:
                out.append((s.data_addr, bytes(s.data)))
        return out

    def _fallback_id(self, data: bytes) -> bytes:
        fid = self.fallback_ids.get(data)
        if fid is None:
            fid = self.fallback_ids[data] = b"F%d" % len(self.fallback_ids)
        return fid

    def hwm(self, source: bytes) -> int:
        iv = self.ledger.get(source)
        return max(e for _, e, _ in iv) if iv else 0

    def attribute(self, out: bytes, size: int, fallbacks: list[tuple[int, bytes]] = (),
                  buf: int = 0, short_ok: bool = True) -> tuple[list[Segment], list[tuple[int, int]]]:
        """Split `out` into segments of known sources; return (segments, gaps)."""
        need = self._need(size)
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
                        fresh = not self._overlaps(k, p, p + L)
                        if best is None or L > best.length or (L == best.length and fresh and not best_fresh):
                            best = Segment(o, L, k, p, "key")
                            best_fresh = fresh
                        p = s.find(probe, p + 1)
            if best is not None and best.length < PROBE and o + best.length != n:
                best = None           # a short fallback match in the middle: chance
            if best is None and short_ok:
                best = self._short(rest, o, n, streams)
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

    def _attribute_expanded(self, out, size, fallbacks, buf):
        """Try every key a refill of a known key could have left in the state
        (keystream at 64c + 96); keep the ones the output really uses."""
        need = self._need(size)
        known = dict(self.keys)
        for k in known:
            s = self.streams.get(k).ensure(need)
            for p in range(STATE_BATCH_LEN, len(s) - KEY_LEN + 1, BLOCK):
                self.keys.setdefault(s[p:p + KEY_LEN], f"refill of {k[:4].hex()}.. at block {(p - 96) // 64}")
        segs, gaps = self.attribute(out, size, fallbacks, buf)
        used = {sg.source for sg in segs}
        self.keys = {k: v for k, v in self.keys.items() if k in known or k in used}
        return segs, gaps

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
                if L and (best is None or L > best.length) and not self._overlaps(k, p, p + L):
                    best = Segment(o, L, k, p, "key")
        return best

    def _overlaps(self, source: bytes, a: int, b: int) -> list[tuple[int, int, str]]:
        return [(s, e, who) for s, e, who in self.ledger.get(source, ()) if s < b and a < e]

    # ---- the verdict -------------------------------------------------------------------
    def judge(self, obs: CallObs) -> Verdict:
        v: list[Violation] = []

        def bad(inv: str, detail: str) -> None:
            v.append(Violation(inv, obs.label, detail))

        self.learn_syscalls(obs.syscalls)
        self.observe_state(obs.state_before, obs.size)
        # Termination (and the expected livelocks)
        livelock = ""
        if obs.outcome == "livelock":
            where = obs.livelock_where or obs.outcome_detail or "livelock (location unknown)"
            if obs.livelock_expected and (not obs.livelock_user or obs.policy == "retry"):
                livelock = where
            else:
                why = ("not under persistent OOM" if not obs.livelock_expected else
                       "a user-mode write spun although the skip design rescues user writes")
                bad("Termination", f"livelock {why}: {where}")
        elif obs.outcome == "budget":
            bad("Termination", f"still running after {obs.instructions} instructions "
                               f"(bound {obs.bound}): {obs.outcome_detail}")
        elif obs.outcome != "returned":
            bad("Termination", f"did not return: {obs.outcome} {obs.outcome_detail}".strip())
        elif obs.bound is not None and obs.instructions > obs.bound:
            bad("Termination", f"returned after {obs.instructions} instructions, over the bound {obs.bound}")
        for m in obs.memory:
            bad("Memory discipline", m)
        if obs.outcome != "returned":
            return self._verdict(v, livelock, "ok-fast")

        # Length
        ret = obs.ret
        if ret != obs.expected_ret:
            exp = obs.expected_ret
            bad("Length", f"returned {ret}, expected {exp}" + (" (-EFAULT: the state straddles a page)"
                                                               if exp == -EFAULT else ""))
        if obs.expected_ret < 0 or not obs.output:
            if obs.state_after is not None:
                self._forward_secrecy(obs, bad)
            return self._verdict(v, livelock, "ok-efault" if obs.expected_ret < 0 and ret == obs.expected_ret
                                 else "ok-fast")

        out = obs.output
        # A fork child returning what was already in its buffer at the fork, and
        # what the parent returned: the fork came after the call had committed its
        # output, exactly like a fork after the return.  Not new bytes.
        if obs.inherited is not None and out == obs.inherited and out == obs.parent_output:
            if obs.state_after is not None:
                self._forward_secrecy(obs, bad)
            return self._verdict(v, livelock, "ok-fast")

        fallbacks = self._fallbacks(obs)
        segs, gaps = self.attribute(out, obs.size, fallbacks, obs.buffer)
        if gaps and self.expand_derived:
            segs, gaps = self._attribute_expanded(out, obs.size, fallbacks, obs.buffer)
        # Provenance
        for a, b in gaps:
            chunk = out[a:b]
            if chunk == bytes(len(chunk)):
                bad("Provenance", f"output bytes {a}..{b - 1} are zeros (read from a dropped or wiped page)")
            elif self._zero_key_stream(chunk, obs.size):
                bad("Provenance", f"output bytes {a}..{b - 1} are keystream of the all-zero key (a wiped key)")
            else:
                bad("Provenance", f"output bytes {a}..{b - 1} are neither keystream of a key the kernel "
                                  f"supplied nor fallback bytes ({chunk[:8].hex()}..)")
        # No repeats / Reentrancy: keystream positions
        for sg in segs:
            for s, e, who in self._overlaps(sg.source, sg.pos, sg.pos + sg.length):
                a, b = max(s, sg.pos), min(e, sg.pos + sg.length)
                what = (f"keystream bytes {a}..{b - 1} of key {sg.source[:4].hex()}.." if sg.kind == "key"
                        else f"fallback bytes {a}..{b - 1}")
                inv = "Reentrancy" if obs.pair and who == obs.pair else "No repeats"
                bad(inv, f"output bytes {sg.offset + a - sg.pos}..{sg.offset + b - sg.pos - 1} repeat {what} "
                         f"already handed out by {who}")
        # No repeats: raw windows of what could not be attributed
        for a, b in gaps:
            lo, hi = max(0, a - WINDOW + 1), min(len(out), b + WINDOW - 1)
            hit = self._window_repeat(out[lo:hi])
            if hit:
                inv = "Reentrancy" if obs.pair and hit[0] == obs.pair else "No repeats"
                bad(inv, f"a 16-byte window at output offset {lo + hit[1]} repeats bytes handed out by {hit[0]}")
                break
        # Reentrancy: a handler reusing a claimed state must fall back
        fb_bytes = sum(sg.length for sg in segs if sg.kind == "fallback")
        if obs.must_fallback and fb_bytes != len(out):
            bad("Reentrancy", f"the state was claimed (in_use set, page backed) but the nested call "
                              f"produced {len(out) - fb_bytes} bytes without the fallback syscall")
        # record what was handed out
        for sg in segs:
            self.ledger.setdefault(sg.source, []).append((sg.pos, sg.pos + sg.length, obs.label))
        self.outputs.append((obs.label, out))
        if obs.state_after is not None:
            self.observe_state(obs.state_after, obs.size)
            self._forward_secrecy(obs, bad)
        if fb_bytes == len(out):
            cls = "ok-fallback"
        elif any(s.nr == NR_getrandom and s.args[1] == KEY_LEN and len(s.data) == KEY_LEN
                 and s.data_addr == obs.state + STATE_KEY for s in obs.syscalls):
            cls = "ok-reseed"
        else:
            cls = "ok-fast"
        return self._verdict(v, livelock, cls)

    @staticmethod
    def _verdict(v: list[Violation], livelock: str, cls: str) -> Verdict:
        if v:
            return Verdict("violation", v, livelock)
        if livelock:
            return Verdict("livelock", [], livelock)
        return Verdict(cls)

    def _zero_key_stream(self, chunk: bytes, size: int) -> bool:
        if len(chunk) < PROBE:
            return False
        s = self.streams.get(ZERO_KEY).ensure(self._need(size))
        return s.find(chunk[:min(len(chunk), WINDOW)]) != -1

    def _window_repeat(self, data: bytes) -> tuple[str, int] | None:
        for off in range(0, len(data) - WINDOW + 1):
            w = data[off:off + WINDOW]
            if w == bytes(WINDOW):
                continue
            for who, prev in self.outputs:
                if w in prev:
                    return who, off
        return None

    def _forward_secrecy(self, obs: CallObs, bad) -> None:
        raw = obs.state_after
        if raw is None or len(raw) < STATE_SIZE:
            return
        key = bytes(raw[STATE_KEY:STATE_KEY + STATE_KEY_LEN])
        if key != ZERO_KEY and self.ledger.get(key):
            s, e, who = self.ledger[key][0]
            bad("Forward secrecy", f"after the return the state still holds key {key[:4].hex()}.., whose "
                                   f"keystream {s}..{e - 1} was handed out by {who}")
        # batch and key: no byte of either may be one that was handed out
        for part, data in (("batch", bytes(raw[:STATE_BATCH_LEN])), ("key", key)):
            for lo, hi in _nonzero_runs(data):
                segs, _ = self.attribute(data[lo:hi], obs.size, short_ok=False)
                for sg in segs:
                    for s, e, who in self._overlaps(sg.source, sg.pos, sg.pos + sg.length):
                        a, b = max(s, sg.pos), min(e, sg.pos + sg.length)
                        bad("Forward secrecy", f"after the return state->{part}[{lo + sg.offset + a - sg.pos}.."
                                               f"{lo + sg.offset + b - sg.pos - 1}] still holds bytes handed out "
                                               f"by {who}")
                        return


def _nonzero_runs(b: bytes, min_len: int = PROBE, max_zeros: int = 3) -> list[tuple[int, int]]:
    """Stretches of b worth attributing: runs of non-zero bytes (joined across
    short zero gaps, which keystream has too) at least min_len long."""
    out = []
    n = len(b)
    i = 0
    while i < n:
        while i < n and b[i] == 0:
            i += 1
        if i >= n:
            break
        j = i
        zeros = 0
        end = i
        while j < n:
            if b[j]:
                zeros = 0
                end = j + 1
            else:
                zeros += 1
                if zeros > max_zeros:
                    break
            j += 1
        if end - i >= min_len:
            out.append((i, end))
        i = end + 1
    return out


# --------------------------------------------------------------------------
# Memory discipline: diff of page images
# --------------------------------------------------------------------------

def memory_diff(pre: dict[int, bytes], post: dict[int, bytes], allowed: list[tuple[int, int]],
                wiped: set[int] = frozenset(), page_size: int = 4096, limit: int = 3) -> list[str]:
    """Findings for bytes that changed outside `allowed` ranges.  Pages in
    `wiped` (droppable pages after a drop or in a fork child) may also read
    back as zeros."""
    found: list[str] = []
    for va in sorted(post):            # post: the pages to check (all, or those that may have changed)
        a = pre.get(va, bytes(page_size))
        b = post[va]
        if a == b:
            continue
        bb = bytearray(b)
        for lo, hi in allowed:
            s, e = max(lo, va), min(hi, va + page_size)
            if s < e:
                bb[s - va:e - va] = a[s - va:e - va]
        if bb == a:
            continue
        bad = [i for i in range(page_size) if bb[i] != a[i] and not (va in wiped and bb[i] == 0)]
        if not bad:
            continue
        runs = []
        for i in bad:
            if runs and runs[-1][1] == i:
                runs[-1][1] = i + 1
            else:
                runs.append([i, i + 1])
        for s, e in runs:
            found.append(f"wrote {e - s} byte(s) at {va + s:#x}..{va + e - 1:#x} outside the buffer, the state "
                         f"and its stack frame ({a[s:min(e, s + 8)].hex()} -> {bytes(bb[s:min(e, s + 8)]).hex()})")
            if len(found) >= limit:
                return found
    return found


def expected_ret(size: int, straddles: bool) -> int:
    return -EFAULT if straddles else min(size, MAX_RW_COUNT)


def judge_run_report(report: dict) -> list[Verdict]:
    """Judge the calls of a `faultpath run --json` report offline (Length,
    Provenance, No repeats, Termination; the states were not observed, so keys
    derived by refills are searched for, and Forward secrecy is not judged).
    Fork children in the report are not judged."""
    from types import SimpleNamespace
    cfg = report["config"]
    state, buf = int(cfg["state"], 16), int(cfg["buffer"], 16)
    straddles = (state & 0xFFF) + STATE_SIZE > 4096
    judge = Judge(StreamCache(), expand_derived=True)
    out = []
    for i, c in enumerate(report["calls"], start=1):
        sys_ = [SimpleNamespace(nr=x["nr"], name=x["name"], args=[int(a, 16) for a in x["args"]], ret=x["ret"],
                                data=bytes.fromhex(x["data"]), data_addr=int(x["data_addr"], 16),
                                rip=int(x["rip"], 16), outcome=x.get("outcome", "")) for x in c["syscalls"]]
        obs = CallObs(label=f"call {i} [{c.get('process', 'parent')}]", role="after", size=c["size"],
                      expected_ret=expected_ret(c["size"], straddles), outcome=c["outcome"], ret=c["ret"],
                      output=bytes.fromhex(c["output"]), buffer=buf, state=state, syscalls=sys_,
                      outcome_detail=c.get("outcome_detail", ""), instructions=c.get("instructions", 0),
                      livelock_expected=any(x.split("@")[0] == "oom" for x in c.get("injections", [])),
                      policy=cfg.get("droppable_oom", "skip"))
        out.append(judge.judge(obs))
    return out
