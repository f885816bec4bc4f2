"""Differences that are not emulator bugs, each with its reason.

A difference is explained only when everything in it is covered by one
entry: an entry checks the difference's parts (compare.py) and what the
sequence ran, and says why the two sides may differ there.  Anything else
is unexplained, and `faultpath diffcheck` and the tests fail on it.

  undefined-flags   only flags the SDM leaves undefined where the run ended
                    differ (eflags.py decides which: AF after a logical op or
                    shift, OF after a multi-bit shift or rotate, SF ZF AF PF
                    after mul, all of them after div...).  Programs may not
                    rely on them; this AMD CPU and QEMU 5 compute different
                    values.  The reason names the instruction that left them.
  refused-66h-near  a 66h-prefixed near call or ret: this CPU (AMD) honours
                    the 16-bit operand size (pushes/pops 2 bytes, truncates
                    rip to 16 bits), Unicorn 2.1.4 pushes 8.  The emulator
                    refuses the block before it runs (emulator/instrument.py),
                    so nothing it reports can be wrong.

Entries are added here only with a measured reason and a check that covers
no more than that reason.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from emulator.diffcheck.build import EXIT
from emulator.diffcheck.compare import Difference
from emulator.diffcheck.eflags import FlagState
from emulator.diffcheck.layout import CODE_ADDR, FLAG_BITS


@dataclass(frozen=True)
class Explanation:
    name: str
    reason: str
    why: Callable[[Difference], str | None]     # the reason for this difference, or None: not covered


@dataclass(frozen=True)
class Explained:
    name: str
    reason: str             # the entry's reason, with what this difference shows


def _undefined_flags(d: Difference) -> str | None:
    if not d.parts or not all(p.startswith("rflags-undefined[") for p in d.parts):
        return None
    seq = d.seq
    sig = d.native.signal
    stop = sig.rip if sig is not None and sig.rip is not None else CODE_ADDR + seq.exit_slot - len(EXIT)
    state = FlagState(seq.regs).walk_to(seq.code, CODE_ADDR, stop)
    left = sorted({state.by.get(1 << FLAG_BITS[f], "?") for f in d.flag_bits})
    return f"{' '.join(d.flag_bits)} undefined after {'; '.join(left)}"


def _refused_66h(d: Difference) -> str | None:
    if d.parts != ["refused"] or "66h-prefixed near" not in d.details[0]:
        return None
    return d.details[0].split(": ", 2)[-1]


REGISTRY = (
    Explanation("undefined-flags", "flags the SDM leaves undefined: this CPU and QEMU 5 set different values",
                _undefined_flags),
    Explanation("refused-66h-near", "66h near call/ret: 2-byte operand on this CPU (AMD), 8 in Unicorn 2.1.4; "
                "refused before it runs", _refused_66h),
)


def explain(d: Difference) -> Explained | None:
    for e in REGISTRY:
        why = e.why(d)
        if why is not None:
            return Explained(e.name, why)
    return None
