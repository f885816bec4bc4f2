"""`faultpath exec`: run a real x86-64 Linux program (static, or dynamic with
its own loader and libc) in the emulated machine, from its entry to
exit_group, against the emulated vDSO and mm.

    faultpath exec [options] PROGRAM [ARGS...]

The program's stdout and stderr go to faultpath's own as it runs (with
--json or --native they are captured instead); faultpath's summary goes to
stderr.  The exit status is the program's (128 + N when signal N ended it);
bad input is one line and status 2.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

from emulator.errors import UsageError
from emulator.options import check_seed, nonempty
from emulator.outputs import check_output, write_output

MAX_PAGES = 1 << 22
MAX_BUDGET = 1 << 40


def _int(s: str) -> int:
    try:
        return int(s, 0)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{s!r} is not an integer") from None


def register(sub, parser_class) -> None:
    from emulator.execve import DEFAULT_EXEC_BUDGET, DEFAULT_EXEC_MEMORY
    p = sub.add_parser(
        "exec", help="run a real program (and its glibc) against the emulated vDSO and mm",
        description="Run PROGRAM in an emulated x86-64 Linux process from its entry to exit_group. Injection "
                    "points: getrandom#K:N (instruction N of the K-th __vdso_getrandom call), syscall:NAME#K, "
                    "sym:NAME[+OFF]#K, or N (an instruction index); without #K, every occurrence. Kinds: drop, "
                    "oom, oom-off, oom:K, fork, reseed, not-ready, ready, signal:SIGNAME.")
    p.add_argument("--image", default=None, help="host | builtin | builtin-v14 | PATH (as for run)")
    p.add_argument("--seed", type=_int, default=0, help="entropy seed, 0..2^64-1 (AT_RANDOM, getrandom bytes)")
    p.add_argument("--memory", type=_int, default=DEFAULT_EXEC_MEMORY, metavar="PAGES",
                   help=f"frame budget (default {DEFAULT_EXEC_MEMORY} pages)")
    p.add_argument("--droppable-oom", default="skip", choices=["skip", "retry"],
                   help="OOM design for droppable VMAs: skip (v13/v14) or retry (6.11)")
    p.add_argument("--inject", action="append", default=[], metavar="KIND@WHERE",
                   help="e.g. drop@getrandom#3:120, oom@syscall:mmap#2, fork@sym:__libc_early_init, "
                        "signal:SIGUSR1@getrandom#2:40")
    p.add_argument("--allow-read", action="append", default=[], metavar="DIR",
                   help="a directory the program may read besides its own file, loader and libraries")
    p.add_argument("--env", action="append", default=None, metavar="NAME=VALUE",
                   help="the program's environment (repeatable; default: PATH only)")
    p.add_argument("--budget", type=_int, default=DEFAULT_EXEC_BUDGET, metavar="N",
                   help="instructions each process may run before it is stopped")
    p.add_argument("--livelock", type=_int, default=None, metavar="N",
                   help="refaults without progress before a livelock is reported (default 1000)")
    p.add_argument("--profile", default="zen4", help="cycle profile (as for run)")
    p.add_argument("--json", metavar="FILE", help="the whole report as JSON ('-': stdout); the program's "
                                                  "output is captured into it")
    p.add_argument("--trace", action="store_true", help="print the syscalls, signals and exits (strace's "
                                                        "notation) on stderr")
    p.add_argument("--vdso-calls", action="store_true", help="count and list every __vdso_getrandom call")
    p.add_argument("--native", action="store_true",
                   help="also run PROGRAM natively under strace -f and print both syscall sequences side by "
                        "side, normalised")
    p.add_argument("program", metavar="PROGRAM")
    p.add_argument("args", nargs=argparse.REMAINDER, metavar="ARGS")
    p.set_defaults(func=cmd_exec)


def build_config(args: argparse.Namespace):
    from emulator.execve import ExecConfig
    from emulator.exec.triggers import parse_trigger
    from vdso.loader import default_image_name, load_image
    check_seed(args.seed)
    nonempty(args.profile, "--profile")
    if not 16 <= args.memory <= MAX_PAGES:
        raise UsageError(f"--memory {args.memory}: out of range (16..{MAX_PAGES} pages)")
    if not 1 <= args.budget <= MAX_BUDGET:
        raise UsageError(f"--budget {args.budget}: out of range (1..2^40)")
    livelock = check_livelock(args.livelock)
    env = args.env if args.env is not None else None
    check_program_inputs(args.program, env, args.allow_read)
    for spec in args.inject:
        parse_trigger(spec)
    image = load_image(args.image if args.image is not None else default_image_name())
    kw = {} if env is None else {"env": list(env)}
    if livelock is not None:
        kw["livelock_limit"] = livelock
    return ExecConfig(image=image, program=args.program, args=list(args.args), seed=args.seed,
                      memory_pages=args.memory, droppable_oom=args.droppable_oom, budget=args.budget,
                      allow_read=list(args.allow_read), profile=args.profile,
                      passthrough=not (args.json or args.native), **kw)


def check_livelock(n: int | None) -> int | None:
    if n is not None and not 2 <= n <= 1_000_000:
        raise UsageError(f"--livelock {n}: out of range (2..1000000)")
    return n


def check_program_inputs(program: str, env: list[str] | None, allow_read: list[str]) -> None:
    """What exec and sweep --exec refuse about the program before booting anything."""
    nonempty(program, "PROGRAM")
    for d in allow_read:
        if not os.path.isdir(d):
            raise UsageError(f"--allow-read {d}: not a directory")
    for e in env or ():
        if "=" not in e or e.startswith("="):
            raise UsageError(f"--env {e!r}: expected NAME=VALUE")
    if not os.path.lexists(program):
        raise UsageError(f"{program}: no such file")


def cmd_exec(args: argparse.Namespace) -> int:
    from emulator.binfmt_elf import ExecError
    from emulator.exec.report import summary_lines, trace_lines
    from emulator.exec.run import run_program
    target = check_output(args.json, "--json") if args.json is not None else None
    cfg = build_config(args)
    native = None
    if args.native:
        from emulator.exec.strace import have_strace
        if not have_strace():
            raise UsageError("--native: strace is not installed")
    try:
        report = run_program(cfg, args.inject, watch_vdso=args.vdso_calls)
    except ExecError as e:
        raise UsageError(str(e)) from None
    if args.native:
        from emulator.exec.native import run_native, side_by_side
        native = run_native(cfg)
        print(side_by_side(native, report.trace))
        same = native.stdout == report.stdout.decode("utf-8", "replace")
        print(f"program output: {'the same' if same else 'DIFFERENT'} natively and emulated")
    if args.trace:
        for line in trace_lines(report):
            print(line, file=sys.stderr)
    if target is not None:
        doc = report.as_dict()
        if native is not None:
            doc["native"] = {"syscalls": [[str(e) for e in p] for p in native.processes], "stdout": native.stdout}
        write_output(target, json.dumps(doc, indent=1) + "\n")
    if target is None or not target.is_stdout:
        for line in summary_lines(report):
            print(line, file=sys.stderr)
    return report.exit_status()
