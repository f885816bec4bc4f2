"""The sweep's oracle: judges getrandom calls against the vDSO's claims.

What may legitimately come out of a call is the ledger's business
(ledger.py: known keys, what was handed out, attribution of output bytes to
them); this module holds the rules.

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
                      livelock is expected only under persistent OOM: in the
                      kernel's copy_to_user under `skip` (which rescues
                      user-mode writes only), in a user-mode write under
                      `retry` (whose rule spares user-mode faults only: the
                      kernel's copy takes -EFAULT).
  Reentrancy          a nested call (a signal handler reusing the state) shares
                      no keystream with the call it interrupted, and falls
                      back to the syscall whenever the state is claimed
                      (in_use set on a backed page).
  Memory discipline   the call writes only the buffer, the state and its own
                      stack frame (checked by diffing every page; droppable
                      pages may additionally read back as zeros after a drop
                      or in a fork child).
"""
from __future__ import annotations

from dataclasses import dataclass, field

from emulator.sweep.keystream import KEY_LEN, ZERO_KEY, StreamCache
from emulator.sweep.ledger import PROBE, WINDOW, Ledger
from vdso.abi import MAX_RW_COUNT, NR_getrandom, STATE_BATCH_LEN, STATE_KEY, STATE_KEY_LEN, STATE_SIZE

EFAULT = 14

INVARIANTS = ("Length", "Provenance", "No repeats", "Forward secrecy", "Termination", "Reentrancy",
              "Memory discipline")
OK_CLASSES = ("ok-fast", "ok-reseed", "ok-fallback", "ok-efault")
OUTCOMES = ("ok-fast", "ok-reseed", "ok-fallback", "ok-efault", "livelock", "violation", "crash")

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
class Verdict:
    cls: str                                   # ok-* or livelock or violation
    violations: list[Violation] = field(default_factory=list)
    livelock: str = ""


# --------------------------------------------------------------------------
# The judge
# --------------------------------------------------------------------------

class Judge:
    """The invariants, applied call by call to one process tree's history
    (kept in a Ledger).  clone() is cheap, so a sweep builds one per
    configuration (warm calls) and clones it for every run."""

    def __init__(self, streams: StreamCache | None = None, min_blocks: int = 8, expand_derived: bool = False):
        self.ledger = Ledger(streams, min_blocks, expand_derived)

    def clone(self) -> "Judge":
        j = Judge.__new__(Judge)
        j.ledger = self.ledger.clone()
        return j

    def learn_syscalls(self, syscalls) -> None:
        self.ledger.learn_syscalls(syscalls)

    # ---- the verdict -------------------------------------------------------------------
    def judge(self, obs: CallObs) -> Verdict:
        v: list[Violation] = []

        def bad(inv: str, detail: str) -> None:
            v.append(Violation(inv, obs.label, detail))

        led = self.ledger
        led.learn_syscalls(obs.syscalls)
        led.observe_state(obs.state_before, obs.size)
        # Termination (and the expected livelocks)
        livelock = ""
        if obs.outcome == "livelock":
            where = obs.livelock_where or obs.outcome_detail or "livelock (location unknown)"
            # Each design spins in one place only: skip rescues user-mode writes but
            # not the kernel's copy; retry (6.11+, measured on 6.18) spares only
            # user-mode faults, so the kernel's copy takes -EFAULT instead.
            spins_here = obs.livelock_user if obs.policy == "retry" else not obs.livelock_user
            if obs.livelock_expected and spins_here:
                livelock = where
            else:
                why = ("not under persistent OOM" if not obs.livelock_expected else
                       "a user-mode write spun although the skip design rescues user writes"
                       if obs.policy != "retry" else
                       "the kernel's copy spun although under retry it takes -EFAULT")
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

        fallbacks = led.fallbacks(obs.syscalls)
        segs, gaps = led.attribute(out, obs.size, fallbacks, obs.buffer)
        if gaps and led.expand_derived:
            segs, gaps = led.attribute_expanded(out, obs.size, fallbacks, obs.buffer)
        # Provenance
        for a, b in gaps:
            chunk = out[a:b]
            if chunk == bytes(len(chunk)):
                bad("Provenance", f"output bytes {a}..{b - 1} are zeros (read from a dropped or wiped page)")
            elif led.zero_key_stream(chunk, obs.size):
                bad("Provenance", f"output bytes {a}..{b - 1} are keystream of the all-zero key (a wiped key)")
            else:
                bad("Provenance", f"output bytes {a}..{b - 1} are neither keystream of a key the kernel "
                                  f"supplied nor fallback bytes ({chunk[:8].hex()}..)")
        # No repeats / Reentrancy: keystream positions
        for sg in segs:
            for s, e, who in led.overlaps(sg.source, sg.pos, sg.pos + sg.length):
                a, b = max(s, sg.pos), min(e, sg.pos + sg.length)
                what = (f"keystream bytes {a}..{b - 1} of key {sg.source[:4].hex()}.." if sg.kind == "key"
                        else f"fallback bytes {a}..{b - 1}")
                inv = "Reentrancy" if obs.pair and who == obs.pair else "No repeats"
                bad(inv, f"output bytes {sg.offset + a - sg.pos}..{sg.offset + b - sg.pos - 1} repeat {what} "
                         f"already handed out by {who}")
        # No repeats: raw windows of what could not be attributed
        for a, b in gaps:
            lo, hi = max(0, a - WINDOW + 1), min(len(out), b + WINDOW - 1)
            hit = led.window_repeat(out[lo:hi])
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
        led.record(obs.label, out, segs)
        if obs.state_after is not None:
            led.observe_state(obs.state_after, obs.size)
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

    def _forward_secrecy(self, obs: CallObs, bad) -> None:
        raw = obs.state_after
        if raw is None or len(raw) < STATE_SIZE:
            return
        key = bytes(raw[STATE_KEY:STATE_KEY + STATE_KEY_LEN])
        led = self.ledger
        if key != ZERO_KEY and led.handed_out.get(key):
            s, e, who = led.handed_out[key][0]
            bad("Forward secrecy", f"after the return the state still holds key {key[:4].hex()}.., whose "
                                   f"keystream {s}..{e - 1} was handed out by {who}")
        # batch and key: no byte of either may be one that was handed out
        for part, data in (("batch", bytes(raw[:STATE_BATCH_LEN])), ("key", key)):
            for lo, hi in _nonzero_runs(data):
                segs, _ = led.attribute(data[lo:hi], obs.size, short_ok=False)
                for sg in segs:
                    for s, e, who in led.overlaps(sg.source, sg.pos, sg.pos + sg.length):
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
