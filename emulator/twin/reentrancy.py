"""The native twin of compare's reentrancy finding.

At every boundary of the swept call: reclaim drops the state page, a signal
handler calls getrandom with the same state (its `in_use` guard was on the
dropped page, so it reads 0 and the nested call proceeds: reseed, consume and
zero part of the refilled batch), then the interrupted call resumes with its
batch position in registers and may copy batch bytes the nested call already
zeroed: 8-byte zero words handed out as random.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

from emulator.twin.engine import Twin
from emulator.twin.process import TwinConfig

EVENT = "drop+reenter"


@dataclass
class ReentrancyCount:
    config: TwinConfig
    n: int                              # instructions of the swept call (boundaries 0..n)
    runs: int
    interrupted_zero_boundaries: int    # boundaries where the interrupted call handed out >= 1 zero word
    interrupted_zero_words: int
    any_zero_run_boundaries: int        # compare's metric: >= 16 zero bytes in a run in any call's output
    first: int | None = None
    last: int | None = None
    generation_moves: int = 0           # runs during which the kernel's generation moved by itself
    seconds: float = 0.0
    boundaries: list[int] = field(default_factory=list)


def count(cfg: TwinConfig, cpu: int | None = None) -> ReentrancyCount:
    t0 = time.monotonic()
    zb, words, anyz, moves, runs = [], 0, 0, 0, 0
    with Twin(cfg, cpu=cpu) as tw:
        base = tw.baseline()
        for run in tw.sweep([EVENT]):
            runs += 1
            outer = run.call(f"call {tw.K} [parent]")
            if outer is not None and outer.zero_words():
                zb.append(run.i)
                words += outer.zero_words()
            if any(c.zero_run_bytes() for c in run.calls):
                anyz += 1
            if run.generation_after != run.generation_before:
                moves += 1
    return ReentrancyCount(cfg, base.n, runs, len(zb), words, anyz, zb[0] if zb else None,
                           zb[-1] if zb else None, moves, time.monotonic() - t0, zb)


def main(argv: list[str]) -> int:
    """python -m emulator.twin.reentrancy SIZE [NESTED_SIZE [WARM_SIZE [AFTER_SIZE]]]"""
    import sys
    if not argv or not all(a.isdigit() for a in argv):
        print(main.__doc__, file=sys.stderr)
        return 2
    v = [int(a) for a in argv] + [None] * 3
    r = count(TwinConfig(v[0], nested_size=v[1], warm_size=v[2], after_size=v[3]))
    c = r.config
    print(f"native twin, drop+reenter at every boundary: {c.size} B call after a "
          f"{c.warm_size or c.size} B warm call, handler call {c.nested_size or c.size} B, further call "
          f"{c.after_size or c.size} B; n = {r.n} ({r.runs} runs, {r.seconds:.1f} s)")
    print(f"  interrupted call hands out 8-byte zero words at {r.interrupted_zero_boundaries} boundaries "
          f"({r.interrupted_zero_words} words; boundaries {r.first}..{r.last})")
    print(f"  a run of >= 16 zero bytes in any call's output (compare's metric): {r.any_zero_run_boundaries} "
          f"boundaries")
    if r.generation_moves:
        print(f"  (the kernel's generation moved by itself during {r.generation_moves} runs)")
    return 0


if __name__ == "__main__":
    import sys
    sys.exit(main(sys.argv[1:]))
