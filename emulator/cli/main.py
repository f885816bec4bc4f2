"""The `faultpath` command line.

Every FaultpathError becomes one line on stderr and exit status 2; nothing is
written to an output file unless the whole run succeeded.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

from emulator.errors import FaultpathError, UsageError
from emulator.options import check_seed, nonempty, split_list

EXIT_USAGE = 2


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, exit 2, no usage dump
        raise UsageError(f"{self.prog}: {message}")


def _int(s: str) -> int:
    try:
        return int(s, 0)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{s!r} is not an integer") from None


def _seed(s: str) -> int:
    try:
        return check_seed(_int(s))
    except UsageError as e:
        raise argparse.ArgumentTypeError(str(e).removeprefix("--seed ")) from None


def _sizes(values: list[str]) -> list[int]:
    """--size, repeatable or a comma list of numbers."""
    out = []
    for v in values:
        for part in split_list(v, "--size"):
            try:
                out.append(int(part, 0))
            except ValueError:
                raise UsageError(f"--size {part!r}: not an integer") from None
    return out


def add_run_options(p: argparse.ArgumentParser) -> None:
    """The options shared by run, step, gdb, sweep, ..."""
    from emulator.scenarios import describe
    p.add_argument("--image", default=None,
                   help="host | builtin | builtin-v14 | PATH (vdso.so, a .s file assembled on the fly, "
                        "or a .patch over asm/ such as a mutant)")
    p.add_argument("--size", action="append", help="request size; repeatable, or a comma list")
    p.add_argument("--calls", type=_int, default=None, help="number of calls")
    p.add_argument("--seed", type=_seed, default=0, help="entropy seed, 0..2^64-1 (same seed, same run)")
    p.add_argument("--memory", type=_int, default=4096, metavar="PAGES", help="frame budget")
    p.add_argument("--swap", type=_int, default=0, metavar="PAGES", help="swap size (0: no swap)")
    p.add_argument("--droppable-oom", default="skip", choices=["skip", "retry"],
                   help="OOM design for droppable VMAs: skip (v13/v14) or retry (6.11)")
    p.add_argument("--inject", action="append", default=[], metavar="KIND@N",
                   help="inject at instruction N of every call (KIND@C:N: of call C only); kinds: "
                        "drop, oom, oom-off, oom:K, fork, reseed, not-ready, ready")
    p.add_argument("--scenario", default=None,
                   help=f"canned scenario: {describe()}.  Default: fault-path when none of --image, --inject "
                        f"and --size is given (so a bare `faultpath run` or `step` shows the fault path), "
                        f"otherwise none")
    p.add_argument("--flags", type=_int, default=0, help="getrandom flags passed to the vDSO")
    p.add_argument("--livelock", type=_int, default=None, metavar="N",
                   help="refaults without progress before a livelock is reported")
    p.add_argument("--state-offset", type=_int, default=None, metavar="OFF",
                   help="place the state at offset OFF of its own 2-page droppable mapping "
                        "(e.g. 3952: end of a page; 4024: straddling two pages)")
    p.add_argument("--prefault", action="store_true", help="make the output buffer resident before the first call")
    p.add_argument("--profile", default="zen4",
                   help="cycle profile: zen4 (shipped), calibrated (from faultpath calibrate), or a .toml path")


def build_run_config(args: argparse.Namespace):
    from emulator.records import DEFAULT_LIVELOCK
    from emulator.run import RunConfig
    from vdso.loader import default_image_name, load_image
    nonempty(args.profile, "--profile")
    scenario = nonempty(args.scenario, "--scenario")
    image = load_image(args.image if args.image is not None else default_image_name())
    default_scenario = "fault-path" if args.image is None and not args.inject and args.size is None else "none"
    scenario = scenario if scenario is not None else default_scenario
    sizes = _sizes(args.size) if args.size is not None else [256]
    calls = args.calls if args.calls is not None else (3 if scenario != "none" else len(sizes))
    livelock = DEFAULT_LIVELOCK if args.livelock is None else args.livelock
    if livelock < 1 or livelock > 10_000_000:
        raise UsageError(f"--livelock {livelock}: out of range")
    cfg = RunConfig(image=image, sizes=sizes, calls=calls, seed=args.seed, memory_pages=args.memory,
                    swap_pages=args.swap, droppable_oom=args.droppable_oom, injections=list(args.inject),
                    scenario=scenario, flags=args.flags, livelock_limit=livelock, profile=args.profile,
                    state_offset=args.state_offset, prefault=args.prefault)
    cfg.validate()
    return cfg


def cmd_run(args: argparse.Namespace) -> int:
    from emulator.outputs import check_output, write_output
    from emulator.run import format_human, run_process
    cfg = build_run_config(args)
    trace_to = check_output(args.trace, "--trace", allow_stdout=False) if args.trace is not None else None
    report, (kernel, m, caller) = run_process(cfg)
    results = report.pop("_results")
    from emulator.debug.symbols import Symbols
    names = Symbols(kernel.image, caller, caller.func)       # named as `faultpath step` names them
    if trace_to is not None:
        from emulator.tracing.chrome import run_trace
        title = f"faultpath run: image={cfg.image.name} scenario={report['config']['scenario']}"
        write_output(trace_to, run_trace(kernel, m, results, title=title, where=names.where))
    if args.json:
        print(json.dumps(report, indent=1, allow_nan=False))
    else:
        report["_results"] = results
        print(format_human(report, where=names.where))
    return 0


def make_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="faultpath", description="x86-64 vDSO getrandom against a Python VM_DROPPABLE fault handler")
    sub = p.add_subparsers(dest="cmd", parser_class=_Parser)
    r = sub.add_parser("run", help="run __vdso_getrandom calls and report faults, syscalls, cycles")
    add_run_options(r)
    r.add_argument("--json", action="store_true",
                   help="one JSON object on stdout (exact cycles, every stage of every fault with its cycles)")
    r.add_argument("--trace", metavar="FILE", default=None,
                   help="also write the run as Chrome trace-event JSON (Perfetto UI, chrome://tracing)")
    r.set_defaults(func=cmd_run)
    import importlib
    import importlib.util
    for mod in _EXTRA_COMMANDS:
        if importlib.util.find_spec(mod) is not None:
            importlib.import_module(mod).register(sub, _Parser)
    return p


# Sub-commands living in their own modules register themselves here.
_EXTRA_COMMANDS = ["emulator.cli.asm", "emulator.cli.step", "emulator.cli.gdb", "emulator.cli.skipcheck",
                   "emulator.cli.decodecheck", "emulator.cli.sweep", "emulator.cli.calibrate", "emulator.cli.bench",
                   "emulator.cli.compare", "emulator.cli.diffcheck", "emulator.cli.exec", "emulator.cli.trace"]


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    try:
        p = make_parser()
        args = p.parse_args(argv if argv else ["run"])
        if not getattr(args, "cmd", None):
            args = p.parse_args(["run"] + argv)
        return args.func(args)
    except FaultpathError as e:
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        print(f"faultpath: error: {msg}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("faultpath: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        try:
            sys.stdout = open(os.devnull, "w")
        except OSError:
            pass
        return 0


if __name__ == "__main__":
    sys.exit(main())
