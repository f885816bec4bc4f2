"""One validation run: build the set, measure it natively once, predict it
with each profile, and hand the figures to report.py."""
from __future__ import annotations

import os
import platform

from emulator.calibrate.validation import bodies, build, emulated, native_run
from emulator.calibrate.validation.kernels import KERNELS
from emulator.calibrate.validation.report import ProfileResult, Row, Validation
from emulator.cycles.profile import Profile, load_profile


def images(flavors: list[str] | None = None, log=None) -> tuple[dict, list[str], str]:
    """(image name -> VdsoImage, notes, compiler) for the set: every gcc flavour
    where gcc exists, and the keystone kernels."""
    notes: list[str] = []
    out = {bodies.ASM_IMAGE: build.build_asm(KERNELS)}
    try:
        compiler = f"gcc {build.gcc_version()}"
        for fl in flavors if flavors is not None else list(build.FLAVORS):
            if log:
                log(f"building the C bodies: {build.FLAVORS[fl].note}")
            out[f"gcc-{fl}"] = build.build_gcc(fl)
    except build.CompilerMissing as e:
        compiler = "no C compiler"
        notes.append(f"C bodies skipped: {e}")
    return out, notes, compiler


def validate(profiles: list[str | Profile], quick: bool = False, rounds: int | None = None,
             log=None) -> Validation:
    """Measure the validation set natively and predict it with every profile."""
    profs = [p if isinstance(p, Profile) else load_profile(p) for p in profiles]
    imgs, notes, compiler = images(log=log)
    flavors = [n.removeprefix("gcc-") for n in imgs if n.startswith("gcc-")]
    cases = bodies.cases(flavors=flavors, quick=quick)
    rounds = rounds or (3 if quick else 7)
    if log:
        log(f"{len(cases)} cases natively ({native_run.PLACEMENTS} placements, {rounds} interleaved trials)")
    measured = native_run.measure(cases, imgs, rounds=rounds)
    v = Validation(host=platform.node(), kernel=os.uname().release, compiler=compiler, rounds=rounds,
                   placements=native_run.PLACEMENTS, notes=notes)
    for p in profs:
        if log:
            log(f"the same cases in the emulator with {p.name}")
        predicted = emulated.predict(cases, imgs, p)
        v.results.append(ProfileResult(p.name, p.path, [Row(c, predicted[c], measured[c]) for c in cases]))
    return v
