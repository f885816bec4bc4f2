"""Measure the validation set natively: TSC ticks per call of every case.

Each image is mapped into this process (emulator/calibrate/native_vdso.py
map_image, same page offsets as in the emulator), each case gets its own
buffers with the set's initial bytes, and the harness's call loop
(emulator/calibrate/harness.py time_calls) times it.  The figure is the
minimum over trials of the mean over many calls: on a shared machine,
interference only ever adds time.  Trials go round-robin over all cases, so
a noisy stretch spoils one trial of many cases rather than all trials of one.

Where the kernel happens to map the image and the buffers matters to short
calls: the same 64-byte copy takes 8.4 or 10.5 TSC ticks (3 core cycles
apart) depending on the placement of a fresh mapping, 12 placements in one
process splitting about evenly [MEAS].  No model of the code can know the
placement, so each case is measured in several placements (the images and
its buffers mapped afresh) and the figure is the median over placements of
each one's minimum over trials (the middle of an even split; an odd
placement, a 4 KiB index cycle that conflicts in the cache, does not move it).
vgetrandom cases call a whole number of batch periods per trial, starting
from the same batch position as the emulated run.
"""
from __future__ import annotations

import ctypes
import statistics
from dataclasses import dataclass, field

from emulator.calibrate.harness import Harness
from emulator.calibrate.native import MAP_ANONYMOUS, MAP_DROPPABLE, Mapping
from emulator.calibrate.native_vdso import OPAQUE_LEN, map_image, vdso_period
from emulator.calibrate.validation.bodies import BUF, Case, buffer_bytes

TRIAL_TICKS = 1_000_000         # ~0.4 ms a trial at 2.6 GHz
PLACEMENTS = 4                  # fresh mappings of every image and buffer a case is measured in


@dataclass
class _Prepared:
    case: Case
    fn: int
    args: list[int]
    period: int
    calls: int = 0
    keep: list = field(default_factory=list)
    best: float = float("inf")


def _prepare(case: Case, fn: int) -> _Prepared:
    keep = []
    if case.body.kind == "vgetrandom":
        st = Mapping(4096, flags=MAP_ANONYMOUS | MAP_DROPPABLE, nohuge=False)
        out = Mapping(BUF)
        keep += [st, out]
        return _Prepared(case, fn, [out.addr, case.size, 0, st.addr, OPAQUE_LEN], vdso_period(case.size),
                         keep=keep)
    addrs = []
    for b in case.body.buffers:
        m = Mapping(BUF)
        data = buffer_bytes(b)
        ctypes.memmove(m.addr, data, len(data))
        keep.append(m)
        addrs.append(m.addr)
    return _Prepared(case, fn, case.body.args(case.size, addrs), 1, keep=keep)


def returns(cases: list[Case], images: dict) -> dict[Case, int]:
    """What each case's function returns natively on a fresh copy of its memory
    (a check that the emulator runs the same code to the same result)."""
    import ctypes as C
    out = {}
    for name in sorted({c.image for c in cases}):
        img = map_image(images[name])
        try:
            for c in (c for c in cases if c.image == name):
                p = _prepare(c, img.symbol(c.body.symbol))
                try:
                    f = C.CFUNCTYPE(C.c_uint64, *[C.c_uint64] * len(p.args))(p.fn)
                    out[c] = f(*p.args)
                finally:
                    for m in p.keep:
                        m.close()
        finally:
            img.close()
    return out


def measure(cases: list[Case], images: dict, rounds: int = 7, log=None,
            placements: int = PLACEMENTS) -> dict[Case, float]:
    """TSC ticks per call (harness loop included) of each case; images maps a
    case's image name to its VdsoImage."""
    h = Harness()
    mapped = []
    prepared: list[_Prepared] = []
    try:
        for _ in range(placements):
            here = {name: map_image(images[name]) for name in sorted({c.image for c in cases})}
            mapped.extend(here.values())
            for c in cases:
                p = _prepare(c, here[c.image].symbol(c.body.symbol))
                prepared.append(p)
                # Warm (as the emulated run does: one call, then whole periods), then
                # size the trial from one period's time.
                h.time_calls(p.fn, p.args, 1 + p.period)
                est = h.time_calls(p.fn, p.args, p.period)
                p.calls = max(1, int(TRIAL_TICKS / max(est * p.period, 1.0))) * p.period
        if log:
            log(f"{len(cases)} validation cases natively, {placements} placements, {rounds} interleaved trials")
        for _ in range(rounds):
            for p in prepared:
                p.best = min(p.best, h.time_calls(p.fn, p.args, p.calls))
        out: dict[Case, list[float]] = {}
        for p in prepared:
            out.setdefault(p.case, []).append(p.best)
        return {c: statistics.median(v) for c, v in out.items()}
    finally:
        for p in prepared:
            for m in p.keep:
                m.close()
        for n in mapped:
            n.close()
