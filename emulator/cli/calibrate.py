"""`faultpath calibrate`: measure this machine natively (keystone-assembled
rdtsc harness in executable memory, no compiler) and write a cycle profile."""
from __future__ import annotations

import argparse
import sys


def default_output() -> str:
    from emulator.cycles.profile import USER_PROFILE_DIR
    return str(USER_PROFILE_DIR / "calibrated.toml")


def register(sub, parser_class) -> None:
    p = sub.add_parser("calibrate", help="measure this machine natively and write a cycle profile")
    p.add_argument("-o", "--output", default=None,
                   help="profile file to write (default: ~/.config/faultpath/profiles/calibrated.toml, "
                        "then usable as --profile calibrated; that directory is made if missing, any other "
                        "must exist).  Checked before measuring; written whole or not at all; only a regular "
                        "file is replaced, a symlink is written through to its regular-file target")
    p.add_argument("--quick", action="store_true", help="fewer repeats (a few seconds; noisier)")
    p.add_argument("--image", default="auto", choices=["auto", "host", "builtin"],
                   help="which __vdso_getrandom to time natively (auto: the host's, else the builtin)")
    p.add_argument("--base", default="zen4", help="profile the result is a variant of")
    p.add_argument("--name", default=None, help="profile name (default calibrated-<hostname>)")
    p.set_defaults(func=cmd_calibrate)


def cmd_calibrate(args: argparse.Namespace) -> int:
    import os

    from emulator.calibrate.output import calibrate
    from emulator.cycles.profile import load_profile
    from emulator.errors import UsageError
    from emulator.outputs import check_output
    load_profile(args.base)             # a bad base is refused before anything is measured
    if args.name is not None:
        try:
            args.name.encode("utf-8")
        except UnicodeEncodeError:
            raise UsageError("calibrate --name: not valid UTF-8") from None
        if not args.name.strip() or len(args.name) > 200:
            raise UsageError("calibrate --name: expected a non-empty name of at most 200 characters")
    if args.output is None:
        out = default_output()
        # The default lives in faultpath's own config directory: made on first
        # use.  A directory the user names must exist (as for every output).
        try:
            os.makedirs(os.path.dirname(out), exist_ok=True)
        except OSError as e:
            raise UsageError(f"-o {out}: cannot make its directory: {e.strerror or e}") from None
    else:
        out = args.output
    check_output(out, "-o", allow_stdout=False)    # before anything is measured (emulator/outputs.py)
    meas, sec = calibrate(out, quick=args.quick, image=args.image, base=args.base, name=args.name,
                          log=lambda s: print(f"  measuring {s} ...", file=sys.stderr))
    m = sec["meta"]
    print(f"wrote {out}: {m['name']} (base {m['base']}), TSC {m['tsc_mhz']:.0f} MHz, "
          f"{m['tsc_per_core_cycle']:.4f} TSC ticks per core cycle "
          f"(core ~{m['tsc_mhz'] / m['tsc_per_core_cycle']:.0f} MHz)")
    if meas.get("vdso"):
        print(f"  vDSO ({meas['vdso_image']}): " + ", ".join(f"{s} B {v:.0f}" for s, v in meas["vdso"].items()))
    else:
        print(f"  vDSO: not measured ({meas.get('vdso_note')})")
    print("  syscall getrandom: " + ", ".join(f"{s} B {v:.0f}" for s, v in meas["syscall"].items()))
    print("  faults: " + ", ".join(f"{k} {v:.0f}" for k, v in meas["faults"].items()))
    return 0
