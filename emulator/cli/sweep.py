"""`faultpath sweep`: every instruction boundary x every event, judged by the
oracle; `--mutants` proves the oracle has teeth on asm/mutants/*.patch;
`--native` runs every (boundary, event) on the running kernel too and
compares (emulator/twin/agreement.py), `--native-repro` one run of each side.

Why --native is a sweep option rather than a command of its own: it is the
same sweep configuration (sizes, placements, warm calls, events, boundaries)
judged by the same oracle, and its reproduction lines are sweep lines.

Exit status: 0 when every run passed (or, with --mutants, every mutant was
killed; with --native, every run agreed and neither side broke an invariant;
with --native-repro, the kernel showed what the emulator did), 1 otherwise
(any violation or crash, a surviving mutant, a disagreement), 2 on bad input.
--native is asked for explicitly, so where it cannot run at all (no
__vdso_getrandom, no ptrace rights) that is one line and exit 2, as is an
event named in --events that cannot be made natively here (not-ready never
can; reseed, drop and oom need root); the same events reached through
`--events all` are skipped with their reason and do not change the status."""
from __future__ import annotations

import argparse
import os
import sys
import time

from emulator.cli.sweep_common import MAX_REPORT, json_target, profile_arg, write_json
from emulator.errors import UsageError

DEFAULT_SIZES = [4, 64, 256]
MUTANT_SIZES = [4, 70]
MUTANT_CALLS_BEFORE = [0, 1]
MUTANT_PLACEMENTS = "start,straddle"


def register(sub, parser_class) -> None:
    from emulator.cli.main import add_run_options
    p = sub.add_parser("sweep", help="inject every event at every instruction boundary and judge each run "
                                     "with the oracle (exit 1 on a violation)")
    add_run_options(p)
    p.add_argument("--events", default="all",
                   help="comma list of drop, oom, oom:K, fork, reenter, reseed, not-ready, or all "
                        "(all = drop,oom,oom:2,fork,reenter,reseed,not-ready)")
    p.add_argument("--calls-before", action="append", metavar="K",
                   help="warm the state with K calls before the swept call (repeatable or comma list; default 1; "
                        "with --mutants 0,1)")
    p.add_argument("--placements", default=None,
                   help="where the state sits: start of its page, end of its page, straddling two pages "
                        "(default start,end,straddle; with --mutants start,straddle)")
    p.add_argument("--boundaries", default=None, metavar="I[-J],...",
                   help="sweep only these instruction boundaries of the swept call (default: all, 0..n)")
    p.add_argument("--after", type=int, default=1, metavar="N",
                   help="further calls each process makes after the swept call (default 1)")
    for opt, what in (("--warm-size", "the warm calls"), ("--handler-size", "a signal handler's nested call"),
                      ("--after-size", "the further calls")):
        p.add_argument(opt, type=int, default=None, metavar="BYTES",
                       help=f"request size of {what} (default: --size)")
    nat = p.add_mutually_exclusive_group()
    nat.add_argument("--native", action="store_true",
                     help="run every (boundary, event) on the running kernel's own __vdso_getrandom too "
                          "(ptrace; the host image) and compare run by run: outcome class, returns, syscalls, "
                          "verdicts (exit 1 on a disagreement or a violation)")
    nat.add_argument("--native-repro", action="store_true",
                     help="only the --boundaries and --events given, on the running kernel and in the emulator, "
                          "every call of both printed: does the kernel show the same? (exit 1 if not)")
    p.add_argument("--jobs", type=int, default=None, metavar="N",
                   help="worker processes (default: the CPUs available; 0 = in this process, no isolation)")
    p.add_argument("--executor", default="local", metavar="local|dask://HOST:PORT",
                   help="where tasks run: local worker processes, or a Dask scheduler (optional extra)")
    p.add_argument("--json", dest="json_path", metavar="PATH", default=None,
                   help="write the full report as JSON to PATH ('-' for stdout); checked before the sweep "
                        "runs, written whole or not at all, never over a non-regular file (a symlink is "
                        "written through to its regular-file target)")
    p.add_argument("--mutants", action="store_true",
                   help="sweep every asm/mutants/*.patch instead and show which invariant and event killed each")
    p.add_argument("--max-report", type=int, default=None, metavar="N",
                   help=f"violation groups to print (default {MAX_REPORT}; the JSON report has them all)")
    prog = p.add_mutually_exclusive_group()
    prog.add_argument("--progress", dest="progress", action="store_true", default=None,
                      help="progress bar on stderr (default: when stderr is a terminal)")
    prog.add_argument("--no-progress", dest="progress", action="store_false")
    # --droppable-oom's default depends on --native (the kernel's design, retry): None until resolved.
    from emulator.cli.sweep_exec import add_exec_options
    add_exec_options(p)
    p.set_defaults(func=cmd_sweep, droppable_oom=None)


def _ints(values: list[str] | None, what: str, lo: int, hi: int) -> list[int]:
    """Integers from a repeatable comma-list option, each in lo..hi."""
    from emulator.sweep.config import split_list
    out = []
    for v in values or []:
        for part in split_list(str(v), what):
            try:
                k = int(part, 0)
            except ValueError:
                raise UsageError(f"{what} {part!r}: not an integer") from None
            if not lo <= k <= hi:
                raise UsageError(f"{what} {k}: out of range ({lo}..{hi})")
            out.append(k)
    return out


def _options(args: argparse.Namespace, mutants: bool, native: bool = False) -> dict:
    from emulator.run import MAX_PAGES
    from emulator.sweep.config import SWEEP_LIVELOCK, make_configs, parse_boundaries, parse_events, split_list
    from emulator.sweep.executors import check_executor, cpu_count
    if args.inject:
        raise UsageError("sweep: --inject is not used (the sweep injects --events at every boundary)")
    if args.calls is not None:
        raise UsageError("sweep: use --calls-before K (calls that warm the state before the swept call)")
    if args.scenario not in (None, "none"):
        raise UsageError("sweep: --scenario is not used")
    if args.state_offset is not None:
        raise UsageError("sweep: use --placements start,end,straddle (where the state sits in its page)")
    if args.prefault:
        raise UsageError("sweep: --prefault is not used (the sweep's caller buffer is always resident)")
    sizes = (_ints(args.size, "--size", 0, 1 << 20) if args.size is not None
             else MUTANT_SIZES if mutants else DEFAULT_SIZES)
    cbs = (_ints(args.calls_before, "--calls-before", 0, 1000) if args.calls_before is not None
           else MUTANT_CALLS_BEFORE if mutants else [1])
    if not 0 <= args.after <= 100:
        raise UsageError(f"--after {args.after}: out of range (0..100)")
    livelock = args.livelock if args.livelock is not None else SWEEP_LIVELOCK
    if not 2 <= livelock <= 1_000_000:
        raise UsageError(f"--livelock {livelock}: out of range (2..1000000)")
    events = parse_events(args.events, livelock)
    placements = split_list(args.placements if args.placements is not None
                            else MUTANT_PLACEMENTS if mutants else "start,end,straddle", "--placements")
    if not 16 <= args.memory <= MAX_PAGES:
        raise UsageError(f"--memory {args.memory}: out of range (16..{MAX_PAGES} pages)")
    if not 0 <= args.swap <= MAX_PAGES:
        raise UsageError(f"--swap {args.swap}: out of range (0..{MAX_PAGES} pages)")
    if not 0 <= args.flags < 1 << 32:
        raise UsageError(f"--flags {args.flags:#x}: out of range (a 32-bit value)")
    if args.max_report is not None and args.max_report < 0:
        raise UsageError(f"--max-report {args.max_report}: must be 0 or more")
    if args.max_report is not None and mutants:
        raise UsageError("sweep --mutants: --max-report is not used (the mutant table shows one example each)")
    check_executor(args.executor)
    call_sizes = {}
    for opt, key in (("warm_size", "warm_size"), ("handler_size", "nested_size"), ("after_size", "after_size")):
        v = getattr(args, opt)
        if v is not None and not 0 <= v <= 1 << 20:
            raise UsageError(f"--{opt.replace('_', '-')} {v}: out of range (0..{1 << 20})")
        call_sizes[key] = v
    if mutants and any(v is not None for v in call_sizes.values()):
        raise UsageError("sweep --mutants: --warm-size, --handler-size and --after-size are not used")
    # The kernel running here implements retry (6.11+); the emulator's own default is the seed's skip.
    policy = args.droppable_oom or ("retry" if native else "skip")
    configs = make_configs(sizes, placements, cbs, policy, seed=args.seed, memory_pages=args.memory,
                           swap_pages=args.swap, flags=args.flags, after=args.after, livelock_limit=livelock,
                           profile=profile_arg(args.profile), **call_sizes)
    jobs = cpu_count() if args.jobs is None else args.jobs
    if not 0 <= jobs <= 1024:
        raise UsageError(f"--jobs {jobs}: out of range (0..1024)")
    boundaries = parse_boundaries(args.boundaries) if args.boundaries is not None else None
    return {"configs": configs, "events": events, "jobs": jobs, "boundaries": boundaries}


def cmd_sweep(args: argparse.Namespace) -> int:
    from emulator.cli.sweep_exec import cmd_sweep_exec, wants_exec
    if wants_exec(args):
        return cmd_sweep_exec(args)
    if args.mutants:
        if args.native or args.native_repro:
            raise UsageError("sweep --mutants: --native is not used (the mutants are not the running kernel's code)")
        return cmd_mutants(args)
    if args.native or args.native_repro:
        from emulator.cli.sweep_native import cmd_native
        target = json_target(args)
        return cmd_native(args, _options(args, mutants=False, native=True), target)
    from emulator.sweep.coordinator import sweep
    from vdso.loader import default_image_name, load_image
    target = json_target(args)
    opts = _options(args, mutants=False)
    spec = args.image if args.image is not None else default_image_name()
    image = load_image(spec)
    res = sweep(image, spec, opts["configs"], opts["events"], jobs=opts["jobs"], executor=args.executor,
                progress=args.progress, boundaries=opts["boundaries"])
    out = sys.stderr if args.json_path == "-" else sys.stdout
    print(res.format(MAX_REPORT if args.max_report is None else args.max_report), file=out)
    if target:
        write_json(target, res.as_dict())
    return 1 if res.failed else 0


# --------------------------------------------------------------------------
# Mutants
# --------------------------------------------------------------------------

def mutant_files() -> list[str]:
    from vdso.mutants import mutant_files as files
    return files()


def mutant_header(path: str) -> dict:
    """`# mutant:`, `# removes:` and `# breaks:` lines at the top of a mutant."""
    info = {"name": os.path.splitext(os.path.basename(path))[0], "removes": "", "breaks": ""}
    with open(path) as f:
        for line in f:
            if not line.startswith("#"):
                break
            for key in ("mutant", "removes", "breaks"):
                tag = f"# {key}:"
                if line.lower().startswith(tag):
                    info["name" if key == "mutant" else key] = line[len(tag):].strip()
    return info


def run_mutants(args: argparse.Namespace, files: list[str] | None = None) -> list[dict]:
    from emulator.sweep.coordinator import sweep
    from vdso.loader import load_image
    opts = _options(args, mutants=True)
    out = []
    for path in files or mutant_files():
        info = mutant_header(path)
        rel = os.path.relpath(path)
        t0 = time.perf_counter()
        image = load_image(path)
        res = sweep(image, rel, opts["configs"], opts["events"], jobs=opts["jobs"], executor=args.executor,
                    progress=args.progress, boundaries=opts["boundaries"])
        kills = res.kills()
        by_inv: dict[str, int] = {}
        by_event: dict[str, dict[str, int]] = {}
        for (inv, ev), k in kills.items():
            by_inv[inv] = by_inv.get(inv, 0) + k
            by_event.setdefault(inv, {})[ev] = by_event.setdefault(inv, {}).get(ev, 0) + k
        example = None
        designed = [r for r in res.violations if any(v["invariant"] == info["breaks"] for v in r.violations)]
        pick = sorted(designed or res.violations,              # reproducible as is: state at the start
                      key=lambda r: (res.configs[r.ci].placement != "start", r.i == 0))
        if pick:
            example = res._viol_dict(pick[0])
        out.append({"file": rel, **info, "killed": bool(kills), "designed_invariant_fired": info["breaks"] in by_inv,
                    "runs": res.runs, "violating_runs": len(res.violations), "by_invariant": by_inv,
                    "by_event": by_event, "elapsed_s": round(time.perf_counter() - t0, 2), "example": example})
    return out


def format_mutants(rows: list[dict]) -> str:
    lines = ["faultpath sweep --mutants: every mutant removes one safety property of asm/vgetrandom.s", ""]
    w = max([len(r["name"]) for r in rows] + [6])
    lines.append(f"{'mutant':<{w}}  {'designed to break':<18} {'killed':<7} runs killed by (invariant: runs [events])")
    for r in rows:
        kills = "; ".join(f"{inv}: {n} [{', '.join(sorted(r['by_event'][inv]))}]"
                          for inv, n in sorted(r["by_invariant"].items(), key=lambda kv: -kv[1]))
        mark = "yes" if r["killed"] else "NO"
        if r["killed"] and not r["designed_invariant_fired"]:
            mark = "yes*"
        lines.append(f"{r['name']:<{w}}  {r['breaks']:<18} {mark:<7} {r['violating_runs']}/{r['runs']} {kills}")
    lines.append("")
    for r in rows:
        lines.append(f"{r['name']}: removes {r['removes']}")
        if r["example"]:
            ex = r["example"]
            v = next((x for x in ex["violations"] if x["invariant"] == r["breaks"]), ex["violations"][0])
            lines.append(f"  e.g. {ex['event']} at boundary {ex['boundary']} ({ex['instruction']}), size {ex['size']}, "
                         f"state at {ex['placement']}, {ex['calls_before']} call(s) before:")
            lines.append(f"    [{v['invariant']}] {v['call']}: {v['detail']}")
            lines.append(f"    reproduce (breaks {ex['breaks']}): {ex['reproduce']}")
    if any(r["killed"] and not r["designed_invariant_fired"] for r in rows):
        lines.append("* killed, but not by the invariant the mutant was designed to break")
    return "\n".join(lines)


def cmd_mutants(args: argparse.Namespace) -> int:
    if args.image is not None:
        raise UsageError("sweep --mutants: the images are asm/mutants/*.patch (drop --image)")
    target = json_target(args)
    files = mutant_files()
    if not files:
        raise UsageError("sweep --mutants: no asm/mutants/*.patch found")
    rows = run_mutants(args, files)
    out = sys.stderr if args.json_path == "-" else sys.stdout
    print(format_mutants(rows), file=out)
    if target:
        write_json(target, {"mutants": rows, "all_killed": all(r["killed"] for r in rows)})
    return 0 if all(r["killed"] for r in rows) else 1
