"""`faultpath sweep --native` and `--native-repro`: the sweep's configuration
in the emulator (the host image) and on the running kernel, compared run by
run (emulator/twin/agreement.py; the exit statuses are in cli/sweep.py).

Safety: the native side traces and signals only its own tracees (processes
it started, and their fork children), by pid; every resumed stretch is
bounded in seconds (TwinConfig.seconds) and every call in single steps
(TwinConfig.step_limit); a memory cgroup it makes for oom events is removed
when it ends.
"""
from __future__ import annotations

import argparse
import sys

from emulator.errors import UsageError
from emulator.outputs import OutputTarget

MAX_GROUPS = 30
REPRO_RUNS = 64           # --native-repro prints every run in full: a handful, not a sweep


def _explicit_events(spec: str) -> set[str]:
    """The events the user named (not those `all` stands for)."""
    from emulator.sweep.config import split_list
    return {e if not e.startswith("oom:") else f"oom:{int(e[4:])}" for e in split_list(spec, "--events")
            if e != "all"}


def _native_skips(events: list[str], explicit: set[str]) -> dict[str, str]:
    """event -> why it cannot be made natively here; an event the user named
    that cannot be made is an error (exit 2), one from `all` is skipped."""
    from emulator.twin import why_not
    skip = {}
    for e in events:
        why = why_not(e)
        if why and e in explicit:
            raise UsageError(f"--native --events {e}: {why}")
        if why:
            skip[e] = why
    return skip


def _check_host(args: argparse.Namespace) -> None:
    """The native side runs the host's own __vdso_getrandom: the image must be
    the host's, the host must have one, and this process must be able to trace."""
    from emulator.twin import check_ptrace
    from emulator.twin.errors import TwinUnavailable
    from vdso.elf_image import host_has_vgetrandom
    if args.image not in (None, "host"):
        raise UsageError(f"--native compares the running kernel's own __vdso_getrandom: use --image host "
                         f"(or no --image), not {args.image!r}")
    if not host_has_vgetrandom():
        raise TwinUnavailable("--native: the running kernel's vDSO has no __vdso_getrandom (needs Linux 6.11+)")
    check_ptrace()


def cmd_native(args: argparse.Namespace, opts: dict, target: OutputTarget | None) -> int:
    from emulator.cli.sweep_common import MAX_REPORT, write_json
    from emulator.sweep.coordinator import Progress, sweep
    from emulator.twin.agreement import compare_config
    from emulator.twin.native_report import (format_disagreements, format_repro, format_table, format_violations,
                                             header)
    from vdso.loader import load_image
    repro = args.native_repro
    if repro and opts["boundaries"] is None:
        raise UsageError("--native-repro re-runs given runs: name them with --boundaries I[,J-K] and --events")
    configs, events, boundaries = opts["configs"], opts["events"], opts["boundaries"]
    if repro:
        runs = sum(hi - lo + 1 for lo, hi in boundaries) * len(events) * len(configs)
        if runs > REPRO_RUNS:
            raise UsageError(f"--native-repro prints every run in full: {runs} runs asked for, at most {REPRO_RUNS} "
                             f"(use --native for a sweep)")
    _check_host(args)
    skip = _native_skips(events, _explicit_events(args.events))
    image = load_image("host")
    out = sys.stderr if args.json_path == "-" else sys.stdout
    res = sweep(image, "host", configs, events, jobs=opts["jobs"], executor=args.executor, progress=args.progress,
                boundaries=boundaries, detail=True)
    native_runs = sum(1 for r in res.records if r.event not in skip)
    bar = Progress(native_runs, enabled=args.progress)
    ccs = []
    try:
        for ci, cfg in enumerate(configs):
            recs = [r for r in res.records if r.ci == ci]
            ccs.append(compare_config(cfg, "host", events, res.baselines[ci], recs, boundaries, skip,
                                      progress=lambda bad: bar.update(1, bad)))
    finally:
        bar.close()
    max_groups = MAX_REPORT if args.max_report is None else args.max_report
    lines = [header(events, configs[0].droppable_oom, res.jobs), ""]
    if repro:
        for cc in ccs:
            for p in cc.pairs:
                lines += format_repro(cc, p) + [""]
    else:
        for cc in ccs:
            lines += format_table(cc) + [""]
        lines += format_disagreements(ccs, max_groups)
        lines += [""] + format_violations(ccs, max_groups)
    print("\n".join(lines), file=out)
    if target:
        write_json(target, {"image": "host", "events": events, "native_skipped": skip,
                             "emulator": res.as_dict(), "configs": [cc.as_dict() for cc in ccs]})
    disagree = any(cc.disagreements or cc.baseline_differences() for cc in ccs)
    if repro:
        return 1 if disagree else 0
    violated = res.failed or any(cc.violations or cc.warm_violations for cc in ccs)
    return 1 if disagree or violated else 0
