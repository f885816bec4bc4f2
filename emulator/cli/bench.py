"""`faultpath bench`: predicted cycles (the emulator with a profile) against
measured cycles (native rdtsc loops on this machine, calibrate's code).
`--validate` runs the validation set instead (emulator/calibrate/validation/):
code nobody tuned the model on, with its held-out part printed apart.

Rows: __vdso_getrandom at each size, the getrandom syscall, each anonymous
fault kind, and the ChaCha20 block (per 64-byte block, the vDSO's loop alone;
llvm-mca's prediction for it is a peer column where llvm-mca exists).

How each prediction is made (emulator/calibrate/predict.py), so it compares with
its measurement:
* vDSO: the same calls in the emulator (run.new_process's Kernel/Machine +
  VgetrandomCaller), after a warm-up, averaged over a whole number of batch
  periods: the per-call work depends on the batch position, exactly as in the
  native loop, which averages over many thousands of calls.  Plus the
  measuring loop's own instructions (argument loads, call, loop branch) put
  through the same scoreboard: the native loop includes them.
* syscall: `mov eax, 318; syscall; ret` run in the emulator.
* faults: one access per fresh page in the emulator minus the same access on
  a mapped page, as the native per-page rdtsc pair minus its own overhead.
* ChaCha20 block: the block function emulated for 1 and 17 blocks (slope),
  against the native slope over 1..64 blocks.
Error % = (predicted - measured) / measured.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from dataclasses import dataclass, field

SIZES = (1, 4, 16, 32, 64, 96, 128, 256, 512, 1024, 4096)
QUICK_SIZES = (1, 64, 256, 4096)
FAULT_KINDS = ("read_zero_page", "write_zero_fill", "write_after_zero_page", "write_droppable_dropped", "cow_copy")

def register(sub, parser_class) -> None:
    p = sub.add_parser("bench", help="predicted vs measured cycles: vDSO sizes, syscall, faults")
    p.add_argument("--profile", action="append", default=None,
                   help="profile(s) to predict with (default: zen4, plus 'calibrated' if it exists)")
    p.add_argument("--calibrate", action="store_true",
                   help="also calibrate now (in memory, nothing written) and predict with that profile")
    p.add_argument("--image", default="auto", choices=["auto", "host", "builtin"],
                   help="vDSO to run natively and emulated (auto: the host's, else the builtin)")
    p.add_argument("--quick", action="store_true", help="fewer sizes and repeats (for tests)")
    p.add_argument("--json", action="store_true", help="one JSON object")
    p.add_argument("--validate", action="store_true",
                   help="the validation set instead: C bodies built with gcc at -O0/-O2/-O3 (scalar and SSE2) "
                        "and assembly kernels, each measured natively and predicted; the held-out part apart")
    p.set_defaults(func=cmd_bench)
    if "calibrate" not in sub.choices:       # until cli.py lists emulator.cli.calibrate itself
        from emulator.cli import calibrate as cmd_calibrate
        cmd_calibrate.register(sub, parser_class)


# ---------------------------------------------------------------------------
# the table
# ---------------------------------------------------------------------------

@dataclass
class Row:
    name: str
    predicted: float | None
    measured: float | None
    peer: float | None = None
    group: str = "vdso"

    @property
    def error(self) -> float | None:
        if self.predicted is None or not self.measured:
            return None
        return 100.0 * (self.predicted - self.measured) / self.measured


@dataclass
class BenchResult:
    profile: str
    rows: list[Row] = field(default_factory=list)
    mca_cpu: str | None = None

    def errors(self, group: str) -> list[float]:
        return [abs(r.error) for r in self.rows if r.group == group and r.error is not None]

    def summary(self) -> dict:
        out = {}
        for g in ("vdso", "syscall", "fault"):
            e = self.errors(g)
            if e:
                out[g] = {"median_abs_error_pct": statistics.median(e), "max_abs_error_pct": max(e)}
        return out


def _image(kind: str, meas: dict):
    from vdso.loader import load_image
    name = meas.get("vdso_image") or ("host" if kind in ("auto", "host") else "builtin")
    return load_image(name)


def run_bench(profiles: list[str], meas: dict, quick: bool = False, image: str = "auto") -> list[BenchResult]:
    from emulator.cycles.profile import load_profile
    from emulator.calibrate.predict import (chacha_block_cost, llvm_mca_chacha_block, predict_faults, predict_syscall,
                                        predict_vdso)
    sizes = [s for s in (QUICK_SIZES if quick else SIZES) if s in meas.get("vdso", {}) or not meas.get("vdso")]
    img = _image(image, meas)
    chacha_meas = None
    ch = meas.get("chacha") or {}
    if len(ch) >= 2:
        lo, hi = min(ch), max(ch)
        chacha_meas = (ch[hi] - ch[lo]) / (hi - lo)
    results = []
    for prof in profiles:
        p = load_profile(prof)
        res = BenchResult(p.name + ("" if prof in (p.name,) else f" ({prof})"))
        pv = predict_vdso(img, prof, sizes, quick)
        for s in sizes:
            res.rows.append(Row(f"vdso {s} B", pv[s], meas.get("vdso", {}).get(s)))
        ss = [s for s in sizes if s in meas.get("syscall", {})]
        ps = predict_syscall(prof, ss)
        for s in ss:
            res.rows.append(Row(f"syscall {s} B", ps[s], meas["syscall"][s], group="syscall"))
        pf = predict_faults(prof)
        for k in FAULT_KINDS:
            if k in meas.get("faults", {}):
                res.rows.append(Row(f"fault {k}", pf[k], meas["faults"][k], group="fault"))
        mca = llvm_mca_chacha_block(img, p.tsc_per_core_cycle)
        res.mca_cpu = mca[1] if mca else None
        res.rows.append(Row("chacha20 block (64 B)", chacha_block_cost(img, prof), chacha_meas,
                            mca[0] if mca else None, group="chacha"))
        results.append(res)
    return results


def format_results(results: list[BenchResult], meas: dict) -> str:
    out = [f"faultpath bench: measured natively on {meas.get('host')} (Linux {meas.get('kernel')}), "
           f"vDSO {meas.get('vdso_image')}; TSC ticks per call; core/TSC "
           f"{1 / meas['tsc_per_core_cycle']:.3f} ({meas.get('tsc_mhz', 0) / meas['tsc_per_core_cycle']:.0f} MHz core)"]
    if meas.get("vdso_note"):
        out.append(f"  note: {meas['vdso_note']}")
    for res in results:
        mca_cpu = res.mca_cpu
        out.append("")
        out.append(f"profile {res.profile}")
        out.append(f"  {'':28} {'predicted':>10} {'measured':>10} {'error':>8}" +
                   (f"  {'llvm-mca (' + mca_cpu + ')':>18}" if mca_cpu else ""))
        for r in res.rows:
            pred = f"{r.predicted:10.0f}" if r.predicted is not None else f"{'-':>10}"
            mea = f"{r.measured:10.0f}" if r.measured is not None else f"{'-':>10}"
            err = f"{r.error:+7.1f}%" if r.error is not None else f"{'-':>8}"
            peer = f"  {r.peer:18.0f}" if r.peer is not None else ""
            out.append(f"  {r.name:28} {pred} {mea} {err}{peer}")
        for g, s in res.summary().items():
            out.append(f"  {g}: median |error| {s['median_abs_error_pct']:.1f}%, max {s['max_abs_error_pct']:.1f}%")
    return "\n".join(out)


def default_profiles() -> list[str]:
    from emulator.cycles.profile import USER_PROFILE_DIR
    out = ["zen4"]
    if (USER_PROFILE_DIR / "calibrated.toml").exists():
        out.append("calibrated")
    return out


def cmd_bench(args: argparse.Namespace) -> int:
    import os
    import tempfile

    from emulator.calibrate.fit import fit_profile
    from emulator.calibrate.measure import check_measurements, measure_all
    from emulator.calibrate.output import dump_toml, write_atomic
    from emulator.cycles.profile import load_profile
    log = (lambda s: print(f"  {s} ...", file=sys.stderr)) if not args.json else None
    profiles = list(args.profile or default_profiles())
    for prof in profiles:
        load_profile(prof)                  # a bad name fails before anything is measured
    tmp = None
    if args.calibrate:
        cal = measure_all(quick=args.quick, image=args.image, log=log)
        problems = check_measurements(cal)
        if problems:
            from emulator.errors import FaultpathError
            raise FaultpathError("calibrate: " + "; ".join(problems))
        sec, com = fit_profile(cal, name="calibrated-now", image_hint=args.image)
        fd, tmp = tempfile.mkstemp(suffix=".toml", prefix="faultpath-cal-")
        os.close(fd)
        write_atomic(tmp, dump_toml(sec, "", com))
        profiles.append(tmp)
    try:
        if args.validate:
            return _validate(args, [load_profile(p) for p in profiles], log)
        meas = measure_all(quick=args.quick, image=args.image, log=log)
        results = run_bench(profiles, meas, quick=args.quick, image=args.image)
    finally:
        if tmp:
            os.unlink(tmp)
    if args.json:
        print(json_text({"measured_on": {k: meas.get(k) for k in ("host", "kernel", "vdso_image", "tsc_mhz",
                                                                    "tsc_per_core_cycle")},
                         "profiles": [{"profile": r.profile, "summary": r.summary(),
                                       "rows": [{"name": x.name, "group": x.group, "predicted": x.predicted,
                                                 "measured": x.measured, "error_pct": x.error,
                                                 "llvm_mca": x.peer} for x in r.rows]} for r in results]}))
    else:
        print(format_results(results, meas))
        print(format_targets(results))
    return 0


def _validate(args: argparse.Namespace, profiles, log) -> int:
    from emulator.calibrate.validation.report import as_json, format_text
    from emulator.calibrate.validation.run import validate
    v = validate(profiles, quick=args.quick, log=log)
    print(json_text(as_json(v)) if args.json else format_text(v))
    return 0


def _finite(x):
    """The value with every non-finite float replaced by None (JSON has no NaN or Infinity)."""
    import math
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: _finite(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_finite(v) for v in x]
    return x


def json_text(obj) -> str:
    return json.dumps(_finite(obj), indent=1, allow_nan=False)


# Issue 7's targets (a benchmark, not a unit test).
TARGETS = {"calibrated": {"vdso_median": 10.0, "vdso_max": 25.0, "fault_max": 25.0},
           "default": {"vdso_median": 20.0}}


def format_targets(results: list[BenchResult]) -> str:
    out = ["", "targets:"]
    for res in results:
        kind = "default" if res.profile.startswith("zen4-default") else "calibrated"
        t = TARGETS[kind]
        s = res.summary()
        v, f = s.get("vdso", {}), s.get("fault", {})
        checks = []
        if "vdso_median" in t and v:
            checks.append(("vDSO median", v["median_abs_error_pct"], t["vdso_median"]))
        if "vdso_max" in t and v:
            checks.append(("vDSO max", v["max_abs_error_pct"], t["vdso_max"]))
        if "fault_max" in t and f:
            checks.append(("faults max", f["max_abs_error_pct"], t["fault_max"]))
        line = ", ".join(f"{n} {x:.1f}% <= {lim:.0f}% {'ok' if x <= lim else 'MISSED'}" for n, x, lim in checks)
        out.append(f"  {res.profile} ({kind}): {line}")
    return "\n".join(out)
