"""`faultpath sweep --exec PROGRAM [ARGS...]`: every instruction boundary of
one glibc getrandom() call of a real program, glibc's wrapper and the vDSO,
times every event, judged by the sweep's oracle (emulator/sweep/
process_harness.py).  --exec takes the rest of the command line, so it comes
last.

Exit status: 0 when every run passed, 1 on a violation or crash, 2 on bad
input (refused before any work: a program that cannot be run, a --call
beyond its calls or not made through glibc's getrandom(), reenter without a
handler of the program's)."""
from __future__ import annotations

import argparse
import os
import sys

from emulator.errors import UsageError

# Options of `sweep` that set up the vDSO sweep's own process, meaningless here.
_REFUSED = (("size", "--size (the program decides its request)"), ("calls", "--calls"),
            ("calls_before", "--calls-before (use --call K)"), ("placements", "--placements"),
            ("state_offset", "--state-offset"), ("scenario", "--scenario"), ("inject", "--inject"),
            ("prefault", "--prefault"), ("flags", "--flags"), ("swap", "--swap"), ("mutants", "--mutants"),
            ("native", "--native"), ("native_repro", "--native-repro"), ("warm_size", "--warm-size"),
            ("handler_size", "--handler-size"), ("after_size", "--after-size"))


def add_exec_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("a real program (sweep --exec)")
    g.add_argument("--exec", dest="exec_argv", nargs=argparse.REMAINDER, default=None, metavar="PROGRAM [ARGS]",
                   help="sweep one glibc getrandom() call of this program, run in the emulated machine as "
                        "`faultpath exec` runs it (the rest of the command line: PROGRAM and its arguments)")
    g.add_argument("--call", type=int, default=None, metavar="K",
                   help="the call that made the K-th __vdso_getrandom call (as exec's getrandom#K counts: "
                        "glibc's start-up query is 1; default 3, the first warm call)")
    g.add_argument("--reenter-signal", default=None, metavar="SIGNAME",
                   help="the signal reenter and drop+reenter deliver; the program's handler for it must call "
                        "getrandom() (default SIGUSR1)")
    g.add_argument("--allow-read", action="append", default=None, metavar="DIR",
                   help="a directory the program may read (as for exec)")
    g.add_argument("--env", action="append", default=None, metavar="NAME=VALUE",
                   help="the program's environment (as for exec)")


def wants_exec(args: argparse.Namespace) -> bool:
    if args.exec_argv is not None:
        return True
    for opt, name in (("call", "--call"), ("reenter_signal", "--reenter-signal"), ("allow_read", "--allow-read"),
                      ("env", "--env")):
        if getattr(args, opt) is not None:
            raise UsageError(f"sweep: {name} is for --exec PROGRAM")
    return False


def build_exec_config(args: argparse.Namespace):
    from emulator.cli.exec import check_livelock, check_program_inputs
    from emulator.cli.sweep_common import profile_arg
    from emulator.options import check_seed
    from emulator.signal import parse_signal
    from emulator.sweep.config import SWEEP_LIVELOCK
    from emulator.sweep.exec_config import DEFAULT_CALL, ExecSweepConfig
    for opt, name in _REFUSED:
        v = getattr(args, opt, None)
        if v not in (None, False, [], 0) or (opt == "scenario" and v not in (None, "none")):
            raise UsageError(f"sweep --exec: {name} is not used")
    if not args.exec_argv:
        raise UsageError("sweep --exec: PROGRAM missing (--exec PROGRAM [ARGS...] comes last)")
    program, *pargs = args.exec_argv
    check_seed(args.seed)
    check_program_inputs(program, args.env, args.allow_read or [])
    if os.path.isdir(program) or not os.access(program, os.X_OK):
        raise UsageError(f"{program}: not an executable file")
    call = DEFAULT_CALL if args.call is None else args.call
    if not 1 <= call <= 1 << 20:
        raise UsageError(f"--call {call}: out of range (1..{1 << 20})")
    sig = args.reenter_signal or "SIGUSR1"
    signo = parse_signal(sig)
    if signo is None or signo in (9, 19):
        raise UsageError(f"--reenter-signal {sig!r}: not a signal a handler can catch")
    if not 16 <= args.memory <= 1 << 22:
        raise UsageError(f"--memory {args.memory}: out of range (16..{1 << 22} pages)")
    if not 0 <= args.after <= 100:
        raise UsageError(f"--after {args.after}: out of range (0..100)")
    livelock = check_livelock(args.livelock) or SWEEP_LIVELOCK
    return ExecSweepConfig(
        program=program, args=tuple(pargs), env=tuple(args.env) if args.env is not None else None,
        allow_read=tuple(args.allow_read or ()), image_spec=args.image or "builtin", call=call, after=args.after,
        seed=args.seed, memory_pages=args.memory, droppable_oom=args.droppable_oom or "skip",
        livelock_limit=livelock, profile=profile_arg(args.profile), reenter_signal=sig)


def cmd_sweep_exec(args: argparse.Namespace) -> int:
    from emulator.binfmt_elf import ExecError
    from emulator.cli.sweep_common import MAX_REPORT, json_target, write_json
    from emulator.sweep.config import parse_boundaries
    from emulator.sweep.coordinator import sweep
    from emulator.sweep.exec_config import parse_exec_events
    from emulator.sweep.executors import check_executor, cpu_count
    from emulator.sweep.process_harness import cached_harness
    from emulator.sweep.process_report import ExecSweepReport
    from vdso.loader import load_image
    target = json_target(args)
    cfg = build_exec_config(args)
    events = parse_exec_events(args.events, cfg.livelock_limit)
    boundaries = parse_boundaries(args.boundaries) if args.boundaries is not None else None
    if args.max_report is not None and args.max_report < 0:
        raise UsageError(f"--max-report {args.max_report}: must be 0 or more")
    check_executor(args.executor)
    jobs = cpu_count() if args.jobs is None else args.jobs
    if not 0 <= jobs <= 1024:
        raise UsageError(f"--jobs {jobs}: out of range (0..1024)")
    image = load_image(cfg.image_spec)
    # The program's start-up, run here first: what cannot be swept is refused
    # before any work (the harness is kept: --jobs 0 sweeps with it).
    try:
        h = cached_harness(image, cfg)
    except ExecError as e:
        raise UsageError(str(e)) from None
    if any(ev.endswith("reenter") for ev in events):
        h.check_reenter()
    res = sweep(image, cfg.image_spec, [cfg], events, jobs=jobs, executor=args.executor, progress=args.progress,
                boundaries=boundaries)
    report = ExecSweepReport(res, cfg)
    out = sys.stderr if args.json_path == "-" else sys.stdout
    print(report.format(MAX_REPORT if args.max_report is None else args.max_report), file=out)
    if target:
        write_json(target, report.as_dict())
    return 1 if report.failed else 0
