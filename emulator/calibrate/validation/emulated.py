"""Predict the validation set: every case run in the emulator (a Machine with
the profile), in TSC ticks per call, plus the native harness loop's own cost
(emulator/calibrate/predict.py Measured), which the native figure includes.

The memory and arguments are the native run's (bodies.py); the call is made
once to warm up (first-touch page faults, as natively before timing), then
the following calls are averaged.  vgetrandom cases are predict_vdso's: a
fresh state per size, warmed, averaged over whole batch periods.
"""
from __future__ import annotations

from emulator.calibrate.predict import Measured, _machine, _mmap, as_profile, predict_vdso
from emulator.calibrate.validation.bodies import BUF, Case, buffer_bytes
from emulator.cycles.profile import Profile

CALLS = 2


def predict(cases: list[Case], images: dict, profile: str | Profile, log=None) -> dict[Case, float]:
    """TSC ticks per call of each case, as the native loop would measure it."""
    p = as_profile(profile)
    out: dict[Case, float] = {}
    by_image: dict[str, list[Case]] = {}
    for c in cases:
        by_image.setdefault(c.image, []).append(c)
    for name, cs in by_image.items():
        img = images[name]
        vg = [c for c in cs if c.body.kind == "vgetrandom"]
        if vg:
            pv = predict_vdso(img, p, sorted({c.size for c in vg}))
            for c in vg:
                out[c] = pv[c.size]
        m = _machine(img, p)
        try:
            for c in cs:
                if c.body.kind == "vgetrandom":
                    continue
                out[c] = _call_cost(m, c, p)
        finally:
            m.close()
        if log:
            log(f"predicted {len(cs)} cases of {name} with {p.name}")
    return out


def returns(cases: list[Case], images: dict, profile: str | Profile = "zen4") -> dict[Case, int]:
    """What each (non-vgetrandom) case's function returns in the emulator on a
    fresh copy of its memory."""
    out = {}
    p = as_profile(profile)
    for name in sorted({c.image for c in cases}):
        m = _machine(images[name], p)
        try:
            for c in (c for c in cases if c.image == name and c.body.kind != "vgetrandom"):
                addrs = _buffers(m, c)
                r = m.call(m.kernel.image.symbol(c.body.symbol), c.body.args(c.size, addrs))
                if r.outcome != "returned":
                    raise RuntimeError(f"emulated {c.label} -> {r.outcome}: {r.outcome_detail}")
                out[c] = r.ret & ((1 << 64) - 1)
                _unmap(m, addrs)
        finally:
            m.close()
    return out


def _buffers(m, c: Case) -> list[int]:
    addrs = []
    for b in c.body.buffers:
        a = _mmap(m, BUF)
        m.user_write(a, buffer_bytes(b))
        addrs.append(a)
    return addrs


def _unmap(m, addrs: list[int]) -> None:
    for a in addrs:
        m.mm.munmap(a, BUF)
        m.sync_range(a, BUF)


def _call_cost(m, c: Case, p: Profile) -> float:
    addrs = _buffers(m, c)
    fn = m.kernel.image.symbol(c.body.symbol)
    args = c.body.args(c.size, addrs)
    loop = Measured(m, p)
    total = 0.0
    for i in range(1 + CALLS):
        r, ticks = loop.call(lambda: m.call(fn, args))
        if r.outcome != "returned":
            raise RuntimeError(f"emulated {c.label} -> {r.outcome}: {r.outcome_detail}")
        if i:
            total += ticks
    _unmap(m, addrs)
    return total / CALLS
