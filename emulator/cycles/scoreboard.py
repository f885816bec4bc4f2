"""Per-basic-block scoreboard: what one execution of a block costs in steady state.

Computed once per block (emulator/cycles/blocks.py caches it) from the instruction
models of emulator/cycles/uarch.py and the profile's machine parameters:

* throughput bound: macro-ops over the dispatch width, uops over the pipes
  they may use (port pressure; the exact fractional assignment bound: for
  every union U of port groups, the uops confined to U over |U|), loads and
  stores over their pipes, loads served by stores in flight (one a cycle),
  and the front end (emulator/cycles/fetch.py: the 64-byte lines the block
  touches, the taken branch or return that ends it);
* register dependencies: a max-plus scoreboard over the block gives, for
  every register live at the block's exit, the latest path from every
  register at its entry (a matrix D[r][s]);
* loop-carried chains across repeated executions of the same block: the
  maximum cycle mean of D (Karp), i.e. how far apart two executions must be
  when each one waits for values the previous one produced (the ChaCha20
  double round: 34 core cycles an iteration on Zen 4, however wide the core);
* memory dependencies by address (emulator/cycles/memdeps.py): stores and
  loads matched by address join the same graph, so a value kept in a stack
  slot carries its chain through memory;
* the critical path from the block's entry (reported, not charged: across
  blocks, out-of-order execution overlaps it with the neighbours' work);
* for a latency-bound loop, what it leaves waiting in the schedulers each
  iteration (emulator/cycles/window.py): the block after its exit is credited
  with the overlap.

cost = max(throughput bound, recurrence), in core cycles; BlockCache converts
it to TSC ticks with the profile's measured core-clock/TSC ratio.  That is a
block on its own; a run charges blocks as they ran, each after the one before
it, and loops of several blocks as one body (emulator/cycles/context.py).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from itertools import combinations

from emulator.cycles import fetch, pipeline, window
from emulator.cycles.memdeps import MemWalk
from emulator.cycles.walk import Walk
from emulator.cycles.profile import Profile
from emulator.cycles.uarch import FLAGS, InsnModel

NEG = float("-inf")
CLOSE = 0.5         # throughput and recurrence this close: the pipeline model decides


@dataclass
class BlockTiming:
    cost: float                 # core cycles per execution, steady state
    throughput: float           # resource bound
    recurrence: float           # loop-carried chain per execution
    latency: float              # critical path from entry (all inputs ready at 0)
    bound: str                  # what binds: dispatch | ports:<groups> | branch | recurrence | rep
    weights: list[float] = field(default_factory=list)   # per-instruction share of the cost
    rep_elem: float = 0.0       # core cycles per further element of a rep string tail
    loop_window: "window.LoopWindow | None" = None   # a latency-bound loop: what waits in the schedulers
    startup: float = 0.0        # a rep string tail's start-up, on top
    detail: dict = field(default_factory=dict)


def port_bound(counts: dict[str, float], profile: Profile) -> tuple[float, str]:
    """min over fractional assignments of the busiest pipe's load.

    By the max-flow/min-cut argument this equals max over unions U of port
    groups of (uops whose group lies inside U) / |pipes of U|."""
    groups = [g for g, n in counts.items() if n > 0]
    if not groups:
        return 0.0, ""
    pipes = {g: frozenset(profile.ports.get(g, (g,))) for g in groups}
    best, which = 0.0, ""
    unions: dict[frozenset, None] = {}
    for k in range(1, min(len(groups), 6) + 1):
        for combo in combinations(groups, k):
            u = frozenset().union(*(pipes[g] for g in combo))
            unions[u] = None
    for u in unions:
        load = sum(counts[g] for g in groups if pipes[g] <= u)
        v = load / len(u)
        if v > best:
            best = v
            which = "+".join(sorted(g for g in groups if pipes[g] <= u))
    return best, which


def max_cycle_mean(nodes: list[str], w: dict[tuple[str, str], float]) -> float:
    """Karp's maximum cycle mean over the graph nodes/w (edges u->v weight w)."""
    n = len(nodes)
    if n == 0 or not w:
        return 0.0
    idx = {v: i for i, v in enumerate(nodes)}
    edges = [(idx[u], idx[v], c) for (u, v), c in w.items()]
    d = [[NEG] * n for _ in range(n + 1)]
    d[0] = [0.0] * n
    for k in range(1, n + 1):
        prev, cur = d[k - 1], d[k]
        for u, v, c in edges:
            if prev[u] != NEG and prev[u] + c > cur[v]:
                cur[v] = prev[u] + c
    best = NEG
    for v in range(n):
        if d[n][v] == NEG:
            continue
        worst = float("inf")
        for k in range(n):
            if d[k][v] != NEG:
                worst = min(worst, (d[n][v] - d[k][v]) / (n - k))
        if worst != float("inf"):
            best = max(best, worst)
    return max(best, 0.0)


def _merge(vs: list[dict[str, float]], add: float) -> dict[str, float]:
    out: dict[str, float] = {}
    for v in vs:
        for k, t in v.items():
            if t > out.get(k, NEG):
                out[k] = t
    if add:
        for k in out:
            out[k] += add
    return out


def dependencies(models: list[InsnModel], profile: Profile, looping: bool = True) -> Walk:
    """D[s][r] = longest path from register (or memory node) r at entry to s at
    exit (only entries that exist), and the critical path from the entry.  Memory nodes `mem:<k>` are the loop-carried stores of
    a block that loops on itself (emulator/cycles/memdeps.py): a first pass
    finds them, the second lets loads read them.  A block that does not loop
    is not run again right after itself, so nothing is carried through memory
    (a vDSO call updates its state once per call)."""
    written = frozenset(d for m in models for d in m.dsts if not (d == "rsp" and m.rsp_delta is not None))
    first = _walk(models, profile, [], written)
    if not looping:
        return first
    # A register the block writes but pops back to its entry value (a call's
    # push rbp / pop rbp) addresses the same slots in the next execution.
    back = {r for r, v in first.mem.final_versions().items() if v == 0 and r in written}
    if back:
        written = written - back
        first = _walk(models, profile, [], written)
    return _walk(models, profile, first.mem.carried_stores(), written)


def _walk(models: list[InsnModel], profile: Profile, carried: list, written: frozenset) -> Walk:
    ready: dict[str, dict[str, float]] = {}       # reg -> {entry reg: latest path}
    abs_ready: dict[str, float] = {}              # reg -> time, all inputs ready at 0
    crit = 0.0
    net = 0
    for m in models:
        if "rsp" in m.dsts and m.rsp_delta is None:
            net = None
            break
        net += m.rsp_delta or 0
    mem = MemWalk(profile, written, net, carried=carried)
    deps: list[frozenset] = []

    def vec(r: str) -> dict[str, float]:
        v = ready.get(r)
        return v if v is not None else {r: 0.0}

    for i, m in enumerate(models):
        if m.zero_idiom:
            for d in m.dsts:
                ready[d] = {}
                abs_ready[d] = 0.0
            mem.wrote(m.dsts, m.rsp_delta)
            deps.append(frozenset())
            continue
        if m.eliminated:
            src = [s for s in m.data_srcs if s not in m.dsts or len(m.data_srcs) == 1] or list(m.data_srcs)
            v = _merge([vec(s) for s in src], 0.0)
            t = max([abs_ready.get(s, 0.0) for s in src] or [0.0])
            for d in m.dsts:
                ready[d] = v
                abs_ready[d] = t
            mem.wrote(m.dsts, m.rsp_delta)
            deps.append(frozenset(v))
            continue
        load_lat = sum(u.lat for u in m.uops if u.kind == "load")
        op_lat = sum(u.lat for u in m.uops if u.kind in ("op", "branch"))
        parts: list[dict[str, float]] = []
        t_in = 0.0
        if m.load:
            addr = _merge([vec(s) for s in m.addr_srcs], 0.0)
            t_addr = max([abs_ready.get(s, 0.0) for s in m.addr_srcs] or [0.0])
            if m.mem is not None and m.mem.load:
                lv, t_in = mem.load(m.mem, addr, t_addr, load_lat, i)
            else:
                lv, t_in = {k: x + load_lat for k, x in addr.items()}, t_addr + load_lat
            parts.append(lv)
        srcs = [s for s in m.data_srcs]
        parts.append(_merge([vec(s) for s in srcs], 0.0))
        t_in = max([t_in] + [abs_ready.get(s, 0.0) for s in srcs])
        v = _merge(parts, op_lat)
        t = t_in + op_lat
        crit = max(crit, t)
        if m.mem is not None and m.mem.store:
            whole = m.data_srcs[0] if len(m.data_srcs) == 1 and m.mem.size == 8 and not m.load else None
            mem.store(m.mem, v, t, i, whole)
        for d in m.dsts:
            ready[d] = v
            abs_ready[d] = t
        mem.wrote(m.dsts, m.rsp_delta, restores=m.load and m.rsp_delta == 8)
        deps.append(frozenset(v))
    ready.update(mem.carried_out())
    return Walk(ready, crit, mem, deps)


def loop_start(models: list[InsnModel]) -> int | None:
    """Index of the instruction the block's final branch jumps back to, if it
    jumps into the block itself (a self-loop; Unicorn may also have merged a
    loop's pre-header with its first iteration, then the target is inside)."""
    if not models:
        return None
    last = models[-1]
    if last.target is None or last.branch not in ("cond", "jmp"):
        return None
    for i, m in enumerate(models):
        if m.address == last.target:
            return i
    return None


def recurrence(models: list[InsnModel], profile: Profile, looping: bool = True) -> tuple[float, float, Walk]:
    """(loop-carried chain per execution, critical path from entry, the walk)."""
    walk = dependencies(models, profile, looping)
    ready, crit = walk.ready, walk.crit
    w: dict[tuple[str, str], float] = {}
    for s, v in ready.items():
        if s == FLAGS:
            continue
        for r, t in v.items():
            if r != FLAGS and t > 0:
                w[(r, s)] = max(t, w.get((r, s), NEG))
    nodes = sorted({a for a, _ in w} | {b for _, b in w})
    return (max_cycle_mean(nodes, w) if w else 0.0), crit, walk


def resource_bounds(models: list[InsnModel], walk: Walk, profile: Profile, looping: bool
                    ) -> tuple[dict[str, float], dict[str, float]]:
    """(core cycles per execution each resource needs: dispatch, the pipes (port
    pressure, forwarded stores included), failed forwards; the uops per pipe
    group).  The front end (emulator/cycles/fetch.py) is the caller's: it
    depends on how the code is reached."""
    core = profile.core
    width = float(core.get("dispatch_width", 6))
    mops = sum(m.mops for m in models)
    # Stores drain from the store queue (64 entries on Zen 4 [SOG]): outside a
    # loop they do not hold up dispatch, so the store pipes only bound loops.
    store_groups = {str(core.get("store_ports", "ST")), str(core.get("vec_store_data_ports", "VST"))}
    counts: dict[str, float] = {}
    for m in models:
        for u in m.uops:
            if u.ports and (looping or u.kind != "store" or u.ports not in store_groups):
                counts[u.ports] = counts.get(u.ports, 0.0) + 1.0
    rmw_group = core.get("rmw_forward_ports")
    if walk.mem.forwards and rmw_group:
        # Loads served by a store in flight go one a cycle (emulator/cycles/memdeps.py).
        counts[str(rmw_group)] = counts.get(str(rmw_group), 0.0) + walk.mem.forwards
    pb, pwhich = port_bound(counts, profile)
    bounds = {"dispatch": mops / width if width else 0.0, f"ports:{pwhich}": pb}
    if walk.mem.fails:
        # A load that needs several stores' bytes waits until they reach the cache,
        # and so does everything behind it [MEAS: two such loads an iteration, nothing
        # depending on them: 40 cycles]: a stall, not just a latency.
        bounds["forward-fail"] = walk.mem.fails * float(core.get("store_forward_fail_latency", 19))
    return bounds, counts


def analyse(models: list[InsnModel], profile: Profile) -> BlockTiming:
    core = profile.core
    start = loop_start(models)
    looping = start is not None
    mops = sum(m.mops for m in models)
    # Loop-carried chains across repeated executions: of the whole block, and of
    # the loop inside it when its final branch goes back into the block (the
    # first iteration executed as part of this block belongs to the same chain).
    rec, crit, walk = recurrence(models, profile, looping)
    body_walk = walk
    if start:
        sub, _, body_walk = recurrence(models[start:], profile)
        rec = max(rec, sub)
    bounds, counts = resource_bounds(models, walk, profile, looping)
    last = models[-1] if models else None
    if last is not None:
        # Fetching the block, the blocks around it unknown (emulator/cycles/fetch.py);
        # a run charges it as it was reached (emulator/cycles/context.py).
        bounds["fetch"] = fetch.standalone(models[0].address, last.address + last.size, last.branch,
                                           models[start].address if looping else None, profile)
    throughput, bound = max(((v, k) for k, v in bounds.items()), default=(0.0, "dispatch"))
    cost = max(throughput, rec)
    sim = None
    body_uops = sum(len(m.uops) for m in models[start:]) if looping else 0
    if looping and rec > 0 and throughput > 0 and min(rec, throughput) >= CLOSE * max(rec, throughput) \
            and body_uops >= float(core.get("pipeline_min_uops", float("inf"))):
        # The bounds meet: run the body on the pipeline model (emulator/cycles/pipeline.py),
        # which sees the cycles lost when a chain's next op finds its pipe taken.
        sim = pipeline.simulate(models[start:], body_walk, profile)
        if sim is not None and sim > cost:
            cost = sim
            bound = "pipeline"
    loop_window = None
    if rec > throughput:
        if bound != "pipeline":
            bound = "recurrence"
        if looping:
            # What the loop leaves waiting in the schedulers each iteration: the
            # work after its exit overlaps its last chains (emulator/cycles/window.py).
            loop_window = window.loop_window(models[start:], body_walk, rec, profile, period=cost)
    rep_elem = 0.0
    startup = 0.0
    if last is not None and last.rep:
        startup = float(core.get("rep_startup", 14))
        cost += startup
        bpc = float(core.get("rep_bytes_per_cycle", 32))
        rep_elem = max(last.rep_elem / bpc if bpc else 1.0, float(core.get("rep_min_element", 0.0)))
        bound = "rep"
    weights = [m.mops if m.mops > 0 else 0.0 for m in models]
    if not any(weights):
        weights = [1.0] * len(models)
    return BlockTiming(cost=cost, throughput=throughput, recurrence=rec, latency=crit, bound=bound,
                       weights=weights, rep_elem=rep_elem, loop_window=loop_window, startup=startup,
                       detail={"mops": mops, "ports": counts, "bounds": bounds, "loop": looping,
                               "loop_target": models[start].address if looping else None,
                               "target": last.target if last is not None else None})
