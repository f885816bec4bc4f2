"""The scenarios of `faultpath compare`: each one builds a World for one design,
drives it, and returns what happened as numbers (metrics) plus detail rows.

Every scenario uses its own fixed random stream (seeded from --seed and the
scenario's name), so every design sees the same sizes, threads and reclaim
points. Nothing is tabulated by hand: each number is read back from the runs.
"""
from __future__ import annotations

import math
import random
import re
from collections import Counter
from dataclasses import dataclass, field

from emulator.compare.ledger import duplicate_bytes, windows_of, zero_run_bytes
from emulator.compare.world import Call, World, secret_bytes
from emulator.compare.designs import PAGE_SIZE, Design
from emulator.errors import UsageError
from emulator.options import split_list
from emulator.records import DEFAULT_LIVELOCK
from mm import flags as F
from vdso.image import VdsoImage

SIZE_MIX = (1, 4, 16, 32, 64, 96, 128, 256, 512, 1024, 4096)
SMALL_MIX = (1, 4, 16, 32, 64, 96, 128, 256)
OOM_MODES = ("persistent", "oom:1", "oom:2", "oom:8", "oom:64")
FORK_CALL = 128          # the call forked at every boundary: batch copy, a block, a refill
FORK_AFTER = (64, 256)   # calls both processes make afterwards
REENTER_CALL = 128
NESTED_CALL = 32


@dataclass
class Options:
    seed: int = 0
    boundaries: int | None = None     # fork/coredump/reenter: at most this many boundaries (None: all)
    oom_at: list[int] | None = None   # oom: instruction indices (None: call start and first state write)
    oom_modes: tuple[str, ...] = OOM_MODES
    livelock_limit: int = DEFAULT_LIVELOCK
    profile: str = "zen4"
    scale: float = 1.0                # call counts of steady/pressure/swap
    memlock_threads: int = 1024
    memlock_rounds: int = 4
    reuse_children: bool = True       # fork: hand an exited child's Machine to the next child


@dataclass
class ScenarioResult:
    scenario: str
    design: str
    metrics: dict
    rows: list[dict] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        return {"scenario": self.scenario, "design": self.design, "metrics": self.metrics,
                "rows": self.rows, "notes": self.notes}


# ---------------------------------------------------------------------- helpers
def _rng(opts: Options, name: str) -> random.Random:
    return random.Random(f"faultpath-compare:{opts.seed}:{name}")


def _n(opts: Options, n: int) -> int:
    return max(4, int(round(n * opts.scale)))


def percentile(values: list[float], p: float) -> float:
    if not values:
        return 0.0
    v = sorted(values)
    return v[max(0, math.ceil(p / 100 * len(v)) - 1)]


def select_boundaries(n: int, limit: int | None) -> list[int]:
    """The boundaries before each of a call's n instructions (0..n-1), or `limit`
    of them spread evenly, always with the first and the last."""
    every = list(range(n))
    if limit is None or limit >= len(every):
        return every
    if limit <= 1:
        return [n - 1]
    step = (n - 1) / (limit - 1)
    return sorted({round(i * step) for i in range(limit)})


# The words of the boundary scenarios' descriptions that --boundaries changes
# (a docstring may break them across lines).
EVERY_BOUNDARY = re.compile(r"every\s+instruction\s+boundary")


def describe(doc: str, boundaries: int | None) -> str:
    """A scenario's description as run: `every instruction boundary` becomes the
    boundaries --boundaries selected (select_boundaries). Idempotent, so that a
    report saved before the wording followed the options renders right too."""
    if boundaries is None:
        return doc
    if boundaries <= 1:
        return EVERY_BOUNDARY.sub("the last instruction boundary", doc)
    return EVERY_BOUNDARY.sub(f"{boundaries} instruction boundaries, spread evenly,", doc)


_PREDICTABLE: dict | None = None


def predictable_windows() -> dict:
    """Windows of ChaCha20 under an all-zero key (counters 0..63): what output
    generated from a key whose stores were lost would look like."""
    global _PREDICTABLE
    if _PREDICTABLE is None:
        from vdso.chacha20 import chacha20_blocks
        data, _ = chacha20_blocks(bytes(32), 0, 64)
        _PREDICTABLE = windows_of(data)
    return _PREDICTABLE


def call_metrics(calls: list[Call]) -> dict:
    ok = [c for c in calls if c.ok]
    out = Counter(c.outcome for c in calls)
    cyc = [c.cycles for c in ok]
    pred = predictable_windows()
    return {
        "calls": len(calls), "returned": out["returned"], "killed": out["killed"],
        "signals": out["signal"], "budget": out["budget"],
        "livelock_user": sum(1 for c in calls if c.livelock == "user"),
        "livelock_kernel": sum(1 for c in calls if c.livelock == "kernel"),
        "short": sum(1 for c in ok if c.ret is not None and 0 <= c.ret < c.size),
        "errors": sum(1 for c in ok if c.ret is not None and c.ret < 0),
        "cycles_mean": round(sum(cyc) / len(cyc), 1) if cyc else 0.0,
        "cycles_p99": round(percentile(cyc, 99), 1),
        "instructions_mean": round(sum(c.instructions for c in ok) / len(ok), 1) if ok else 0.0,
        "reseeds": sum(c.reseeds for c in calls),
        "vdso_fallbacks": sum(c.vdso_fallbacks for c in calls),
        "libc_fallbacks": sum(1 for c in calls if c.via == "syscall"),
        "faults": sum(c.faults for c in calls),
        "skips": sum(c.skips for c in calls),
        "user_refaults": sum(c.user_refaults for c in calls),
        "kernel_refaults": sum(c.kernel_refaults for c in calls),
        "zero_output_bytes": sum(zero_run_bytes(c.output) for c in ok),
        "predictable_output_bytes": sum(duplicate_bytes(c.output, pred) for c in ok),
    }


def world_metrics(w: World, calls: list[Call] | None = None, *, scan_swap: bool = True,
                  dup_within: bool = True) -> dict:
    calls = w.calls if calls is None else calls
    m = call_metrics(calls)
    fails: Counter = Counter()
    for p in [w.parent] + [q for q in w.procs if q is not w.parent]:
        fails.update(p.caller.alloc_failures)
    m["alloc_fail_rlimit"] = fails["rlimit"]
    m["alloc_fail_overcommit"] = fails["overcommit"]
    m["alloc_fail_other"] = sum(n for k, n in fails.items() if k not in ("rlimit", "overcommit"))
    m["locked_pages"] = w.locked_peak
    m["pinned_pages"] = w.pinned_peak
    m["frames_peak"] = w.frames_peak
    m["state_frames"] = w.state_frames()
    st = w.phys.stats
    m["drops"] = st.drops
    m["swapouts"] = st.swapouts
    m["swapins"] = st.swapins
    m["app_write_oom"] = w.events["app_write_oom"]
    if dup_within:
        # duplicate output inside each process (its outputs in call order); the
        # scenarios that restore snapshots count duplicates per trial themselves
        dup = 0
        for name in sorted({c.process for c in calls}):
            stream = b"".join(c.output for c in calls if c.process == name and c.ok)
            dup += duplicate_bytes(stream)
        m["dup_output_bytes"] = dup
    if scan_swap:
        s = w.scan_swap()
        key, out_state, out_all = secret_bytes(s["bytes"])
        m["swap_writes"] = s["writes"]
        m["swap_state_writes"] = s["state_page_writes"]
        m["swap_key_bytes"] = key
        m["swap_output_state_bytes"] = out_state
        m["swap_output_bytes"] = out_all
        m["swap_found"] = dict(sorted(s["bytes"].items()))
    return m


def _world(design: Design, image: VdsoImage, opts: Options, **kw) -> World:
    return World(design, image, seed=opts.seed, livelock_limit=opts.livelock_limit, profile=opts.profile,
                 reuse_children=opts.reuse_children, **kw)


# ---------------------------------------------------------------------- steady
def steady(design: Design, image: VdsoImage, opts: Options) -> ScenarioResult:
    """Mixed-size calls on 4 threads' states, memory to spare."""
    rng = _rng(opts, "steady")
    w = _world(design, image, opts, nthreads=4)
    for i in range(_n(opts, 200)):
        w.call(w.parent, rng.randrange(4), rng.choice(SIZE_MIX))
    return ScenarioResult("steady", design.name, world_metrics(w))


# ---------------------------------------------------------------------- pressure
def _budget_below(w: World, extra: int) -> None:
    """Shrink the frame budget to what the process uses now plus `extra` frames."""
    w.phys.memory_pages = w.phys.charged + extra


def pressure(design: Design, image: VdsoImage, opts: Options) -> ScenarioResult:
    """4 hot threads while the application cycles through a 64-page heap with a
    frame budget 24 pages above its base use: every heap write and every fault in
    a call reclaims, and kswapd reclaims 8 pages at a random boundary inside each
    call. Swap is present (512 pages), so anonymous pages can be reclaimed too."""
    rng = _rng(opts, "pressure")
    filler = _rng(opts, "pressure-filler")
    w = _world(design, image, opts, nthreads=4, swap_pages=512)
    heap = w.add_heap(w.parent, 64)
    for t in range(4):                     # every thread has called once: the states are live
        w.call(w.parent, t, 16, tag="warm")
    _budget_below(w, 24)
    cursor = 0
    for _ in range(_n(opts, 150)):
        for _ in range(4):
            w.touch(w.parent, heap + cursor * PAGE_SIZE, filler.randbytes(64))
            cursor = (cursor + 1) % 64
        w.call(w.parent, rng.randrange(4), rng.choice(SIZE_MIX), pause_at=rng.randrange(1500),
               on_pause=lambda ctx: w.shrink(8))
    return ScenarioResult("pressure", design.name, world_metrics(w))


# ---------------------------------------------------------------------- swap
def swap(design: Design, image: VdsoImage, opts: Options) -> ScenarioResult:
    """Cold states: 64 threads, each calling now and then, while heap churn under a
    tight budget (32 frames above base use, 1024 pages of swap) pushes idle pages
    out. Every page ever written to the swap device is scanned, including blocks
    whose slot was freed by a later swap-in (a disk keeps them)."""
    rng = _rng(opts, "swap")
    filler = _rng(opts, "swap-filler")
    nthreads = 64
    w = _world(design, image, opts, nthreads=nthreads, swap_pages=1024)
    heap = w.add_heap(w.parent, 128)
    for t in range(nthreads):
        w.call(w.parent, t, rng.choice(SMALL_MIX), tag="warm")
    _budget_below(w, 32)
    cursor = 0
    for _ in range(_n(opts, 200)):
        for _ in range(6):
            w.touch(w.parent, heap + cursor * PAGE_SIZE, filler.randbytes(64))
            cursor = (cursor + 1) % 128
        w.call(w.parent, rng.randrange(nthreads), rng.choice(SMALL_MIX))
    return ScenarioResult("swap", design.name, world_metrics(w))


# ---------------------------------------------------------------------- oom
def oom_points(image: VdsoImage, opts: Options) -> list[tuple[str, int]]:
    if opts.oom_at is not None:
        return [(f"insn {i}", i) for i in opts.oom_at]
    from emulator.run import RunConfig, find_state_write
    first = find_state_write(RunConfig(image=image, sizes=[256], calls=2, seed=opts.seed), 256)
    return [("call start", 0), (f"first state write (insn {first})", first)]


def _set_failure(w: World, mode: str) -> None:
    if mode == "persistent":
        w.phys.fail_allocations(persistent=True)
    elif mode.startswith("oom:"):
        w.phys.fail_allocations(count=int(mode[4:]))
    else:
        raise UsageError(f"unknown OOM mode {mode!r}")


def oom(design: Design, image: VdsoImage, opts: Options, points: list[tuple[str, int]] | None = None) -> ScenarioResult:
    """A warm 256-byte call; at the chosen instruction reclaim takes the state page
    (dropped if droppable, swapped out if anonymous, kept if locked or pinned) and
    allocations start failing: for good (persistent) or for the next K attempts
    (oom:K, the OOM killer freed memory elsewhere). One row per point and mode."""
    w = _world(design, image, opts, nthreads=1, swap_pages=64)
    p = w.parent
    w.call(p, 0, 256, tag="warm")
    w.call(p, 0, 256, tag="warm")
    snap = p.m.snapshot()
    points = points or oom_points(image, opts)
    rows = []
    calls: list[Call] = []
    for label, at in points:
        for mode in opts.oom_modes:
            p.m.restore(snap)
            evicted: Counter = Counter()

            def on_pause(ctx, mode=mode, evicted=evicted):
                evicted.update(w.evict(p, p.caller.state_pages))
                _set_failure(w, mode)

            c = w.call(p, 0, 256, pause_at=at, on_pause=on_pause, tag=f"{mode}@{at}")
            w.phys.fail_allocations(None)
            after = w.call(p, 0, 256, tag="after") if c.ok else None
            calls.append(c)
            trial = b"".join(x.output for x in (c, after) if x is not None and x.ok)
            rows.append({
                "at": label, "index": at, "mode": mode, "evicted": "+".join(sorted(evicted)) or "-",
                "outcome": c.outcome + (f" ({c.livelock})" if c.livelock else ""),
                "ret": c.ret, "skips": c.skips, "user_refaults": c.user_refaults,
                "kernel_refaults": c.kernel_refaults, "reseeds": c.reseeds, "fallbacks": c.vdso_fallbacks,
                "zero_output_bytes": zero_run_bytes(c.output) if c.ok else 0,
                "predictable_output_bytes": duplicate_bytes(c.output, predictable_windows()) if c.ok else 0,
                "cycles": round(c.cycles), "detail": c.detail,
                "next_call": after.outcome if after is not None else "-",
                "_dup": duplicate_bytes(trial),
            })
    m = world_metrics(w, calls, scan_swap=False, dup_within=False)
    m["dup_output_bytes"] = sum(r.pop("_dup") for r in rows)
    m["completed"] = sum(1 for r in rows if r["outcome"] == "returned")
    m["runs"] = len(rows)
    m["persistent_completed"] = sum(1 for r in rows if r["outcome"] == "returned" and r["mode"] == "persistent")
    m["persistent_runs"] = sum(1 for r in rows if r["mode"] == "persistent")
    m["transient_completed"] = sum(1 for r in rows if r["outcome"] == "returned" and r["mode"] != "persistent")
    m["transient_runs"] = sum(1 for r in rows if r["mode"] != "persistent")
    return ScenarioResult("oom", design.name, m, rows)


# ---------------------------------------------------------------------- fork
def _call_length(w: World, thread: int, size: int) -> int:
    p = w.parent
    c = p.caller
    ctx = p.m.prepare_call(c.func, c.args(size, 0, c.thread_states[thread]), size=size)
    snap = p.m.snapshot(ctx)
    p.m.run(ctx)
    n = ctx.index
    p.m.restore(snap)
    w.hold(snap)
    return n


def fork(design: Design, image: VdsoImage, opts: Options) -> ScenarioResult:
    """fork() at every instruction boundary of a 128-byte call (as from a signal
    handler: the child goes on with the call), then parent and child both call
    twice more. Output the child returns that the parent also returned is a
    duplicate: `inherited` when the bytes were already in the buffer at the fork,
    `state` otherwise (the state was copied). Then, once, a fork between calls
    followed by reclaim of both processes' state pages with swap present."""
    w = _world(design, image, opts, nthreads=1, swap_pages=256)
    p = w.parent
    m, c = p.m, p.caller
    w.call(p, 0, 40, tag="warm")
    n = _call_length(w, 0, FORK_CALL)
    st = c.thread_states[0]
    ctx = m.prepare_call(c.func, c.args(FORK_CALL, 0, st), size=FORK_CALL)
    boundaries = select_boundaries(n, opts.boundaries)
    dup_any = dup_state = inh_bytes = state_bytes = 0
    inh_at: list[int] = []
    state_at: list[int] = []
    child_ok = 0
    within = 0
    calls: list[Call] = []
    child_locked = 0
    for b in boundaries:
        if b > ctx.index:
            m.run(ctx, stop_at=b)
        if ctx.done:
            break
        snap = m.snapshot(ctx)
        at_fork = m.read(c.buffer, FORK_CALL)
        child = w.fork(p)
        if child is None:
            ctx = m.restore(snap)
            w.hold(snap)
            continue
        child_locked = max(child_locked, child.mm.locked_vm)
        cc = w.finish_call(child, 0, w.continue_in_child(child, ctx), tag=f"fork@{b}")
        pc = w.finish_call(p, 0, ctx, tag=f"fork@{b}")
        pstream, cstream = [pc.output], [cc.output]
        calls += [cc, pc]
        for size in FORK_AFTER:
            a = w.call(p, 0, size, tag="after fork")
            bb = w.call(child, 0, size, tag="after fork")
            calls += [a, bb]
            pstream.append(a.output)
            cstream.append(bb.output)
        child_ok += cc.ok
        within += duplicate_bytes(b"".join(pstream)) + duplicate_bytes(b"".join(cstream))
        pw = windows_of(b"".join(pstream))
        cs = b"".join(cstream)
        total = duplicate_bytes(cs, pw)
        inherited_w = {k: 0 for k in windows_of(at_fork) if k in pw}
        inherited = duplicate_bytes(cs, inherited_w) if inherited_w else 0
        from_state = max(0, total - inherited)
        if total:
            dup_any += 1
        if inherited:
            inh_at.append(b)
            inh_bytes += inherited
        if from_state:
            dup_state += 1
            state_at.append(b)
            state_bytes += from_state
        w.exit(child)
        ctx = m.restore(snap)
        w.hold(snap)
    m_ = world_metrics(w, calls, scan_swap=False, dup_within=False)
    m_.update({
        "dup_output_bytes": within,
        "boundaries": len(boundaries), "call_instructions": n, "child_completed": child_ok,
        "boundaries_dup": dup_any, "boundaries_dup_state": dup_state,
        "boundaries_dup_inherited": len(inh_at),
        "dup_state_bytes": state_bytes, "dup_inherited_bytes": inh_bytes,
        "inherited_window": f"{min(inh_at)}..{max(inh_at)}" if inh_at else "-",
        "state_dup_window": f"{min(state_at)}..{max(state_at)}" if state_at else "-",
        "child_locked_pages": child_locked,
    })
    m_.update(_fork_then_reclaim(design, image, opts))
    return ScenarioResult("fork", design.name, m_)


def _fork_then_reclaim(design: Design, image: VdsoImage, opts: Options) -> dict:
    """fork() between calls; both call; then reclaim takes both state pages."""
    w = _world(design, image, opts, nthreads=1, swap_pages=256)
    p = w.parent
    w.call(p, 0, 40, tag="warm")
    child = w.fork(p)
    if child is None:
        return {"post_fork_swap_key_parent": 0, "post_fork_swap_key_child": 0, "post_fork_child_locked": 0}
    for size in FORK_AFTER:
        w.call(p, 0, size)
        w.call(child, 0, size)
    since = len(w.swap_log)
    w.evict(p, p.caller.state_pages)
    w.evict(child, child.caller.state_pages)
    found: Counter = Counter()
    for wr in w.swap_log[since:]:
        who = w.by_mm.get(wr.origin[0][0]).name if wr.origin else "?"
        for kind, k in w.ledger.scan(wr.data).items():
            if kind in ("key", "batch"):
                found[who] += k
    return {"post_fork_swap_key_parent": found["parent"], "post_fork_swap_key_child": found[child.name],
            "post_fork_child_locked": child.mm.locked_vm}


# ---------------------------------------------------------------------- coredump
def coredump(design: Design, image: VdsoImage, opts: Options) -> ScenarioResult:
    """A core dump (mm.coredump()) at every instruction boundary of each of
    three calls on a fresh state (16 bytes: reseed and first refill; 128; 300),
    each dump scanned for key material and output."""
    w = _world(design, image, opts, nthreads=1)
    p = w.parent
    m, c = p.m, p.caller
    st = c.thread_states[0]
    intern: dict[bytes, int] = {}
    dumps: list[list[tuple[int, int]]] = []
    zero = bytes(PAGE_SIZE)
    calls = []
    for size in (16, 128, 300):
        n = _call_length(w, 0, size)
        ctx = m.prepare_call(c.func, c.args(size, 0, st), size=size)
        for b in select_boundaries(n, opts.boundaries):
            if b > ctx.index:
                m.run(ctx, stop_at=b)
            dump = m.mm.coredump()
            pages = []
            for seg in dump.segments:
                data = seg.data
                for off in range(0, len(data), PAGE_SIZE):
                    pg = data[off:off + PAGE_SIZE]
                    if pg == zero:
                        continue
                    pages.append((seg.start + off, intern.setdefault(pg, len(intern))))
            dumps.append(pages)
            w.observe(p, 0)
            if ctx.done:
                break
        calls.append(w.finish_call(p, 0, ctx, tag="coredump"))
    scans = [None] * len(intern)
    for pg, i in intern.items():
        scans[i] = w.ledger.scan(pg)
    with_key = with_key_state = with_out_state = 0
    max_key = max_out = max_out_state = 0
    for pages in dumps:
        found: Counter = Counter()
        for addr, i in pages:
            region = p.region(addr)
            for kind, k in scans[i].items():
                found[f"{kind}@{region}"] += k
        key, out_state, out = secret_bytes(found)
        key_state = found["key@state"] + found["batch@state"]
        with_key += key > 0
        with_key_state += key_state > 0
        with_out_state += out_state > 0
        max_key, max_out, max_out_state = max(max_key, key), max(max_out, out), max(max_out_state, out_state)
    met = world_metrics(w, calls, scan_swap=False)
    met.update({"dumps": len(dumps), "dumps_with_key": with_key, "dumps_with_key_in_state": with_key_state,
                "dumps_with_output_in_state": with_out_state, "dump_key_bytes_max": max_key,
                "dump_output_bytes_max": max_out, "dump_output_state_bytes_max": max_out_state,
                "state_dumped": any(p.region(s.start) == "state" or
                                    any(p.region(a) == "state" for a in range(s.start, s.end, PAGE_SIZE))
                                    for s in m.mm.coredump().segments)})
    return ScenarioResult("coredump", design.name, met)


# ---------------------------------------------------------------------- memlock
def memlock(design: Design, image: VdsoImage, opts: Options) -> ScenarioResult:
    """RLIMIT_MEMLOCK of 64 KiB and 1024 threads, each getting its state as it
    starts, then calling getrandom(16) four times each, round robin."""
    nthreads = opts.memlock_threads
    w = _world(design, image, opts, nthreads=0, rlimit_memlock=64 << 10)
    p = w.parent
    p.caller.alloc_states(nthreads)
    w._note_frames()
    for _ in range(opts.memlock_rounds):
        for t in range(nthreads):
            w.call(p, t, 16)
    met = world_metrics(w, scan_swap=False)
    met["threads"] = nthreads
    met["threads_with_state"] = sum(1 for s in p.caller.thread_states if s is not None)
    met["state_pages"] = len(p.caller.state_pages)
    return ScenarioResult("memlock", design.name, met)


# ---------------------------------------------------------------------- reenter
def reenter(design: Design, image: VdsoImage, opts: Options) -> ScenarioResult:
    """A signal handler calls getrandom(32) with the same state between two
    instructions of a 128-byte call, at every instruction boundary; variant
    `evicted`: reclaim took the state page just before the handler ran. Then the
    interrupted call finishes and the thread calls once more."""
    w = _world(design, image, opts, nthreads=1, swap_pages=64)
    p = w.parent
    m, c = p.m, p.caller
    w.add_handler_buffer(p)
    w.call(p, 0, 40, tag="warm")
    n = _call_length(w, 0, REENTER_CALL)
    ctx = m.prepare_call(c.func, c.args(REENTER_CALL, 0, c.thread_states[0]), size=REENTER_CALL)
    rows = {v: Counter() for v in ("plain", "evicted")}
    calls: list[Call] = []
    boundaries = select_boundaries(n, opts.boundaries)
    for b in boundaries:
        if b > ctx.index:
            m.run(ctx, stop_at=b)
        if ctx.done:
            break
        snap = m.snapshot(ctx)
        for variant in ("plain", "evicted"):
            cx = m.restore(snap)
            r = rows[variant]
            if variant == "evicted":
                r.update(f"evict:{k}" for k, v in w.evict(p, c.state_pages).items() for _ in range(v))
            nested = w.nested_call(p, 0, NESTED_CALL, tag=f"handler@{b}:{variant}")
            outer = w.finish_call(p, 0, cx, tag=f"interrupted@{b}:{variant}")
            follow = w.call(p, 0, 64, tag=f"follow@{b}:{variant}")
            calls += [nested, outer, follow]
            r["boundaries"] += 1
            r["nested_fallback"] += nested.vdso_fallbacks > 0
            r["nested_used_state"] += nested.ok and nested.vdso_fallbacks == 0 and nested.via == "vdso"
            r["outer_completed"] += outer.ok
            r["nested_completed"] += nested.ok
            outs = [x.output for x in (outer, nested, follow) if x.ok]
            z = sum(zero_run_bytes(o) for o in outs)
            d = duplicate_bytes(b"".join(outs))
            r["zero_output_bytes"] += z
            r["boundaries_zero_output"] += z > 0
            r["dup_output_bytes"] += d
            r["boundaries_dup_output"] += d > 0
        ctx = m.restore(snap)
        w.hold(snap)
    met = world_metrics(w, calls, scan_swap=False, dup_within=False)
    met["dup_output_bytes"] = sum(r["dup_output_bytes"] for r in rows.values())
    for v, r in rows.items():
        for k, x in r.items():
            met[f"{v}_{k}"] = x
    return ScenarioResult("reenter", design.name, met,
                          rows=[{"variant": v, **dict(r)} for v, r in rows.items()])


# ---------------------------------------------------------------------- strict overcommit
def _commit_headroom(mm, limit: int = 64) -> int:
    """How many more pages one private writable mapping may commit (probing)."""
    n = 0
    while n < limit:
        r = mm.mmap(0, (n + 1) * PAGE_SIZE, F.PROT_READ | F.PROT_WRITE, F.MAP_PRIVATE | F.MAP_ANONYMOUS)
        if r < 0:
            break
        mm.munmap(r, (n + 1) * PAGE_SIZE)
        n += 1
    return n


def strict_overcommit(design: Design, image: VdsoImage, opts: Options) -> ScenarioResult:
    """vm.overcommit_memory=2 with overcommit_ratio=10 (a commit limit of 10% of
    RAM): the application's heap has committed all but one page of what it may,
    then 64 threads start, get their states (28 per page) and call getrandom(64)
    once."""
    nthreads = 64
    w = _world(design, image, opts, nthreads=0, overcommit_memory=F.OVERCOMMIT_NEVER, overcommit_ratio=10)
    p = w.parent
    mm = p.mm
    lo, hi = 0, w.phys.memory_pages
    while lo < hi:                           # the largest mapping the commit limit allows now
        mid = (lo + hi + 1) // 2
        r = mm.mmap(0, mid * PAGE_SIZE, F.PROT_READ | F.PROT_WRITE, F.MAP_PRIVATE | F.MAP_ANONYMOUS)
        if r >= 0:
            mm.munmap(r, mid * PAGE_SIZE)
            lo = mid
        else:
            hi = mid - 1
    p.m.sync()
    # Map the heap so that exactly one more page can be committed afterwards (the
    # user reserve shrinks as total_vm grows, so look at what is left, not at lo).
    heap_pages = lo
    while heap_pages > 1:
        w.add_heap(p, heap_pages)
        if _commit_headroom(mm, limit=1) >= 1:
            break
        mm.munmap(w.parent.heap[0], heap_pages * PAGE_SIZE)
        p.m.sync()
        heap_pages -= 1
    p.caller.alloc_states(nthreads)
    for t in range(nthreads):
        w.call(p, t, 64)
    met = world_metrics(w, scan_swap=False)
    met["threads"] = nthreads
    met["threads_with_state"] = sum(1 for s in p.caller.thread_states if s is not None)
    met["heap_pages"] = heap_pages
    met["committed_pages"] = w.phys.vm_committed_as
    return ScenarioResult("strict-overcommit", design.name, met)


SCENARIOS = {
    "steady": steady,
    "pressure": pressure,
    "oom": oom,
    "fork": fork,
    "coredump": coredump,
    "swap": swap,
    "memlock": memlock,
    "reenter": reenter,
    "strict-overcommit": strict_overcommit,
}


def parse_scenarios(spec: str | None) -> list[str]:
    """--scenarios: None or `all` for every scenario, else a comma list of
    names (an empty list or item is an error)."""
    if spec is None or spec == "all":
        return list(SCENARIOS)
    out = []
    for name in split_list(spec, "--scenarios"):
        if name not in SCENARIOS:
            raise UsageError(f"--scenarios: unknown scenario {name!r} (one of: {', '.join(SCENARIOS)})")
        if name not in out:
            out.append(name)
    return out


def run_scenario(name: str, design: Design, image: VdsoImage, opts: Options) -> ScenarioResult:
    return SCENARIOS[name](design, image, opts)
