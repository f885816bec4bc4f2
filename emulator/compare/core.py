"""`faultpath compare`: the same scenarios under every proposed design.

Runs each (scenario, design) pair (in worker processes when --jobs > 1: each
pair builds its own kernel, so the results do not depend on the order or the
worker), then derives the summary matrix, designs x properties, from the
metrics of the runs alone:

swap        no key material (state key, or batch not handed out yet) and no
            state-held output ever written to the swap device (pressure, swap,
            and the post-fork reclaim of both processes' states in fork)
core dump   no key material and no state-held output in any core dump (coredump)
fork        no output the child returns duplicates the parent's, beyond bytes
            already in the buffer when fork happened (fork)
OOM         every call completes, persistent and transient failure (oom)
no rlimit   every thread gets a state page: no RLIMIT_MEMLOCK failure (memlock)
            and no strict-overcommit failure (strict-overcommit)
re-entrancy a signal handler using the state of the call it interrupted gets no
            zero or duplicate output, also when reclaim took the state page first
cost        cycles per call (mean / p99: steady, pressure; without them, every
            scenario that ran, and why a run that returned no call has no cost),
            and pages locked or pinned (memlock)

A property none of whose scenarios ran is `n/a` and names the scenarios it
needs; one read from only some of them says which.
"""
from __future__ import annotations

import multiprocessing
import os
import signal
import time
from dataclasses import asdict

from emulator.compare.scenarios import SCENARIOS, Options, describe, run_scenario
from emulator.compare.designs import Design
from vdso.image import VdsoImage

# Longest first, so that parallel runs finish together.
_COST_ORDER = ["fork", "reenter", "coredump", "pressure", "swap", "memlock", "steady", "oom", "strict-overcommit"]


def _job(args) -> tuple[str, str, dict, float]:
    scenario, design, image, opts = args
    t0 = time.perf_counter()
    res = run_scenario(scenario, design, image, opts)
    return scenario, design.name, res.as_dict(), time.perf_counter() - t0


def _ignore_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def run_compare(image: VdsoImage, designs: list[Design], scenarios: list[str], opts: Options,
                jobs: int = 1, progress=None) -> dict:
    t0 = time.perf_counter()
    work = [(s, d, image, opts) for s in sorted(scenarios, key=_COST_ORDER.index) for d in designs]
    results: dict[str, dict[str, dict]] = {s: {} for s in scenarios}
    timings: dict[str, float] = {}
    if jobs > 1 and len(work) > 1:
        # Workers ignore SIGINT and are killed at Ctrl-C: a ProcessPoolExecutor's
        # workers took the interrupt as one job's result and went on with the
        # queued ones, and its shutdown waited for them (20 s and more).
        pool = multiprocessing.get_context("fork").Pool(jobs, initializer=_ignore_sigint)
        try:
            for s, d, res, dt in pool.imap(_job, work):
                results[s][d] = res
                timings[f"{s}/{d}"] = round(dt, 2)
                if progress:
                    progress(s, d, dt)
            pool.close()
        except BaseException:
            pool.terminate()
            raise
        finally:
            pool.join()
    else:
        for w in work:
            s, d, res, dt = _job(w)
            results[s][d] = res
            timings[f"{s}/{d}"] = round(dt, 2)
            if progress:
                progress(s, d, dt)
    names = [d.name for d in designs]
    report = {
        "image": {"name": image.name, "abi": image.abi},
        "config": {"seed": opts.seed, "designs": names, "scenarios": scenarios,
                   "boundaries": opts.boundaries, "oom_modes": list(opts.oom_modes),
                   "oom_at": opts.oom_at, "livelock_limit": opts.livelock_limit,
                   "scale": opts.scale, "memlock_threads": opts.memlock_threads,
                   "memlock_rounds": opts.memlock_rounds, "profile": opts.profile},
        "designs": {d.name: asdict(d) for d in designs},
        "scenarios": {s: describe((SCENARIOS[s].__doc__ or "").strip(), opts.boundaries) for s in scenarios},
        "results": {s: {d: results[s][d] for d in names} for s in scenarios},
    }
    report["summary"] = summarize(report)
    report["skip_vs_retry"] = skip_vs_retry(report)
    report["cycles"] = cycle_table(report)
    report["elapsed_s"] = round(time.perf_counter() - t0, 1)
    report["timings_s"] = timings
    return report


def default_jobs() -> int:
    return max(1, min(os.cpu_count() or 1, 8))


# ---------------------------------------------------------------------- derived views
def _m(report: dict, scenario: str, design: str) -> dict | None:
    r = report["results"].get(scenario, {}).get(design)
    return r["metrics"] if r else None


def _cell(ok: bool | None, text: str, partial: bool = False) -> dict:
    verdict = "n/a" if ok is None else ("partial" if partial else ("yes" if ok else "no"))
    return {"verdict": verdict, "text": text}


# The scenarios each verdict of the summary is read from (see the module doc);
# the cost is read from whatever ran.
SOURCES = {"swap": ("pressure", "swap", "fork"), "coredump": ("coredump",), "fork": ("fork",), "oom": ("oom",),
           "rlimit": ("memlock", "strict-overcommit"), "reenter": ("reenter",)}


def _not_run(prop: str) -> str:
    return f"not run (needs {' or '.join(SOURCES[prop])})"


def _only(report: dict, design: str, prop: str) -> str:
    """' (from fork only)' when some of a property's scenarios did not run: the
    verdict then rests on fewer runs than a full comparison's."""
    ran = [s for s in SOURCES[prop] if _m(report, s, design) is not None]
    return "" if len(ran) == len(SOURCES[prop]) else f" (from {', '.join(ran)} only)"


def no_cost(m: dict) -> str | None:
    """Why a scenario's run has no cycles per call (no call returned), in the
    words of its outcomes (`killed`, `livelock`...); None when calls returned."""
    if m.get("returned"):
        return None
    why = [w for w, k in (("killed", "killed"), ("signal", "signals"), ("budget", "budget")) if m.get(k)]
    if m.get("livelock_user") or m.get("livelock_kernel"):
        why.append("livelock")
    return "/".join(why) or ("no calls" if not m.get("calls") else "no call returned")


_OOM_WORDS = {"returned": "completes", "killed": "OOM-killed", "livelock (user)": "spins at the vDSO's store",
              "livelock (kernel)": "spins in getrandom's copy_to_user"}


def summarize(report: dict) -> dict:
    out = {}
    for d in report["config"]["designs"]:
        row = {}
        # swap
        parts, bad, seen = [], [], False
        for s in ("pressure", "swap"):
            m = _m(report, s, d)
            if m is None:
                continue
            seen = True
            key, out_state = m.get("swap_key_bytes", 0), m.get("swap_output_state_bytes", 0)
            if key or out_state:
                bad.append(f"{s}: {key} key B, {out_state} output B from states")
        m = _m(report, "fork", d)
        if m is not None:
            seen = True
            kp, kc = m.get("post_fork_swap_key_parent", 0), m.get("post_fork_swap_key_child", 0)
            if kp or kc:
                bad.append(f"after fork: parent {kp} B, child {kc} B key")
        if seen:
            row["swap"] = _cell(not bad, ("; ".join(bad) if bad else "no key material reached swap")
                                + _only(report, d, "swap"))
        else:
            row["swap"] = _cell(None, _not_run("swap"))
        # core dump
        m = _m(report, "coredump", d)
        if m is None:
            row["coredump"] = _cell(None, _not_run("coredump"))
        else:
            k = m["dumps_with_key"]
            o = m["dumps_with_output_in_state"]
            ok = k == 0 and o == 0
            row["coredump"] = _cell(ok, f"key in {k}/{m['dumps']} dumps (max {m['dump_key_bytes_max']} B)"
                                    if not ok else f"0/{m['dumps']} dumps hold key material")
        # fork
        m = _m(report, "fork", d)
        if m is None:
            row["fork"] = _cell(None, _not_run("fork"))
        else:
            n = m["boundaries_dup_state"]
            inh = m["inherited_window"]
            if n:
                txt = f"child repeats parent output at {n}/{m['boundaries']} boundaries ({m['dup_state_bytes']} B)"
            else:
                txt = "no duplicate from the state" + (f"; buffer-inherited at {inh}" if inh != "-" else "")
            row["fork"] = _cell(n == 0, txt)
        # OOM
        m = _m(report, "oom", d)
        if m is None:
            row["oom"] = _cell(None, _not_run("oom"))
        else:
            rows = report["results"]["oom"][d]["rows"]
            outcomes = {}
            for r in rows:
                key = "persistent" if r["mode"] == "persistent" else "oom:K"
                outcomes.setdefault(key, set()).add(_OOM_WORDS.get(r["outcome"], r["outcome"]))
            txt = "; ".join(f"{k}: {' / '.join(sorted(v))}" for k, v in outcomes.items())
            ok = m["completed"] == m["runs"]
            row["oom"] = _cell(ok, txt, partial=not ok and m["completed"] > 0)
        # rlimit / commit
        parts, any_run = [], False
        ml, so = _m(report, "memlock", d), _m(report, "strict-overcommit", d)
        if ml is not None:
            any_run = True
            if ml["alloc_fail_rlimit"]:
                parts.append(f"{ml['threads'] - ml['threads_with_state']}/{ml['threads']} threads over RLIMIT_MEMLOCK")
        if so is not None:
            any_run = True
            if so["alloc_fail_overcommit"]:
                parts.append(f"{so['threads'] - so['threads_with_state']}/{so['threads']} threads refused by commit limit")
        if any_run:
            extra = ""
            if ml is not None and ml["pinned_pages"]:
                extra = f"; {ml['pinned_pages']} pinned pages charged to no limit"
            row["rlimit"] = _cell(not parts, ("; ".join(parts) if parts else "every thread got a state") + extra
                                  + _only(report, d, "rlimit"))
        else:
            row["rlimit"] = _cell(None, _not_run("rlimit"))
        # re-entrancy
        m = _m(report, "reenter", d)
        if m is None:
            row["reenter"] = _cell(None, _not_run("reenter"))
        else:
            z = m.get("evicted_boundaries_zero_output", 0) + m.get("plain_boundaries_zero_output", 0)
            du = m.get("evicted_boundaries_dup_output", 0) + m.get("plain_boundaries_dup_output", 0)
            n = m.get("plain_boundaries", 0)
            ok = z == 0 and du == 0
            bad = []
            if z:
                bad.append(f"zeros handed out at {z}/{n} boundaries ({m['zero_output_bytes']} B) when reclaim "
                           f"took the state before the handler ran")
            if du:
                bad.append(f"duplicate output at {du}/{n} boundaries")
            row["reenter"] = _cell(ok, "; ".join(bad) if bad else "no zero or duplicate output")
        # cost: steady and pressure are the cost runs; without them the cell
        # shows the scenarios that did run, so it never says "not run" beside a
        # cycle table that has numbers
        ran = [s for s in report["config"]["scenarios"] if _m(report, s, d) is not None]
        timed = [s for s in ("steady", "pressure") if s in ran] or ran
        bits = []
        for s in timed:
            m = _m(report, s, d)
            why = no_cost(m)
            bits.append(f"{s}: {why}, no cost" if why else f"{s} {m['cycles_mean']:.0f}/{m['cycles_p99']:.0f}")
        ml = _m(report, "memlock", d)
        if ml is not None:
            if ml["locked_pages"]:
                bits.append(f"{ml['locked_pages']} locked pages")
            if ml["pinned_pages"]:
                bits.append(f"{ml['pinned_pages']} pinned pages")
        row["cost"] = {"verdict": "info", "text": "; ".join(bits) if bits else "not run"}
        out[d] = row
    return out


def skip_vs_retry(report: dict) -> list[dict]:
    """What the skip design does that retry does not, run by run (oom scenario)."""
    res = report["results"].get("oom", {})
    if "droppable-skip" not in res or "droppable-retry" not in res:
        return []
    retry = {(r["at"], r["mode"]): r for r in res["droppable-retry"]["rows"]}
    out = []
    for r in res["droppable-skip"]["rows"]:
        q = retry.get((r["at"], r["mode"]))
        if q is None:
            continue
        s_ok, r_ok = r["outcome"] == "returned", q["outcome"] == "returned"
        if s_ok and not r_ok:
            verdict = "skip completes, retry does not"
        elif r_ok and not s_ok:
            verdict = "retry completes, skip does not"
        elif not s_ok:
            verdict = f"neither completes: skip {r['outcome']}, retry {q['outcome']}"
        elif r["fallbacks"] > q["fallbacks"]:
            verdict = "both complete; skip's lost state writes send it to the syscall fallback"
        elif r["kernel_refaults"] > q["kernel_refaults"]:
            verdict = "both complete; skip moves the remaining failures into the kernel's copy_to_user"
        else:
            verdict = "both complete"
        out.append({"at": r["at"], "mode": r["mode"], "verdict": verdict,
                    "skip": {k: r[k] for k in ("outcome", "skips", "kernel_refaults", "reseeds", "fallbacks", "cycles")},
                    "retry": {k: q[k] for k in ("outcome", "user_refaults", "kernel_refaults", "reseeds", "fallbacks",
                                                "cycles")}})
    return out


PROPERTIES = [("swap", "secure vs swap"), ("coredump", "secure vs core dump"), ("fork", "secure vs fork"),
              ("oom", "survives OOM"), ("rlimit", "no rlimit failure"), ("reenter", "re-entrancy"),
              ("cost", "cost (cyc mean/p99)")]


def cycle_table(report: dict) -> dict:
    out = {}
    for d in report["config"]["designs"]:
        out[d] = {}
        for s in report["config"]["scenarios"]:
            m = _m(report, s, d)
            if m is not None and m.get("returned"):
                out[d][s] = {"mean": m["cycles_mean"], "p99": m["cycles_p99"], "calls": m["returned"]}
    return out
