"""mm's cost follows what is touched, not what is mapped: mmap, munmap, fork and
the other range operations over 2^40- and 2^46-byte mappings, timed (best of
--rounds) and with their peak Python memory (tracemalloc, a separate run).

    python -m bench.mm_scale                  # the table; exit 1 if any op >= --limit-ms
    python -m bench.mm_scale --touch 1024     # with 1024 pages touched across each mapping

The kernel maps such ranges instantly for droppable memory (VM_NORESERVE: nothing
is reserved); so must mm.
"""

from __future__ import annotations

import argparse
import sys
import time
import tracemalloc
from typing import Callable

import mm as M

RW = M.PROT_READ | M.PROT_WRITE
KINDS = {
    "droppable": M.MAP_DROPPABLE | M.MAP_ANONYMOUS,
    "private-noreserve": M.MAP_PRIVATE | M.MAP_ANONYMOUS | M.MAP_NORESERVE,
}
SIZES = (1 << 40, 1 << 46)


def _new_mm() -> M.MM:
    return M.MM(M.PhysMem(4096, overcommit_memory=M.OVERCOMMIT_GUESS), cap_ipc_lock=True)


def _mapped(kind: int, size: int, touch: int) -> tuple[M.MM, int]:
    mm = _new_mm()
    a = mm.mmap(0, size, RW, kind)
    if a < 0:
        raise SystemExit(f"mm_scale: mmap of {size:#x} bytes failed with {a}")
    step = max(M.PAGE_SIZE, (size // max(touch, 1)) & M.PAGE_MASK)
    vma = mm.find_vma(a)
    for i in range(touch):
        addr = a + i * step
        mm.handle_mm_fault(vma, addr, M.FAULT_FLAG_WRITE | M.FAULT_FLAG_USER)
    mm.drain_change_ranges()
    return mm, a


# Each op: (setup -> state, timed op(state), teardown(state)).
def _ops(kind: int, size: int, touch: int) -> dict[str, tuple[Callable, Callable]]:
    def fresh():
        return (_new_mm(), 0)

    def mapped():
        return _mapped(kind, size, touch)

    def other_half():
        mm, a = _mapped(kind, size // 2, touch)
        return mm, a
    ops = {
        "mmap": (fresh, lambda st: st[0].mmap(0, size, RW, kind)),
        "munmap": (mapped, lambda st: st[0].munmap(st[1], size)),
        "fork": (mapped, lambda st: st[0].dup_mm()),
        "mprotect": (mapped, lambda st: st[0].mprotect(st[1], size, M.PROT_READ)),
        "madvise(DONTNEED)": (mapped, lambda st: st[0].madvise(st[1], size, M.MADV_DONTNEED)),
        "mlock2(ONFAULT)": (mapped, lambda st: st[0].mlock2(st[1], size, M.MLOCK_ONFAULT)),
        "munlock": (mapped, lambda st: st[0].munlock(st[1], size)),
        "mremap(move)": (other_half, lambda st: st[0].mremap(
            st[1], size // 2, size // 2, M.MREMAP_MAYMOVE | M.MREMAP_FIXED, st[1] - size // 2)),
        "snapshot": (mapped, lambda st: st[0].snapshot()),
        "smaps": (mapped, lambda st: st[0].smaps()),
        "coredump": (mapped, lambda st: st[0].coredump()),
    }
    if kind & M.MAP_TYPE == M.MAP_DROPPABLE:
        # mlock()/mlock2() populate a droppable VMA page by page, ONFAULT or not,
        # since the VMA never gets VM_LOCKONFAULT (the host does the same: see
        # tests/test_mm_probes.py mlock_droppable); that cost is the kernel's.
        del ops["mlock2(ONFAULT)"]
    return ops


def _check(name: str, res) -> None:
    if isinstance(res, int) and res < 0:
        raise SystemExit(f"mm_scale: {name} failed with {res}")


def measure(setup: Callable, op: Callable, name: str, rounds: int) -> tuple[float, int]:
    """(best time in seconds, peak bytes allocated during the op)."""
    best = float("inf")
    for _ in range(rounds):
        st = setup()
        t0 = time.perf_counter()
        res = op(st)
        dt = time.perf_counter() - t0
        _check(name, res)
        best = min(best, dt)
    st = setup()
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    tracemalloc.reset_peak()
    res = op(st)
    peak = tracemalloc.get_traced_memory()[1] - base
    tracemalloc.stop()
    _check(name, res)
    return best, peak


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.mm_scale", description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=20, help="timed repetitions per op (best is kept)")
    ap.add_argument("--touch", type=int, default=0, help="pages written across each mapping first")
    ap.add_argument("--limit-ms", type=float, default=10.0, help="fail (exit 1) at or above this")
    args = ap.parse_args(argv)
    if args.rounds < 1 or args.touch < 0 or args.limit_ms <= 0:
        print("mm_scale: --rounds must be >= 1, --touch >= 0, --limit-ms > 0", file=sys.stderr)
        return 2
    over = []
    print(f"{'mapping':<18} {'size':>6} {'operation':<18} {'best ms':>9} {'peak KiB':>9}"
          f"   (touched pages: {args.touch}, best of {args.rounds})")
    for kname, kind in KINDS.items():
        for size in SIZES:
            for name, (setup, op) in _ops(kind, size, args.touch).items():
                t, peak = measure(setup, op, name, args.rounds)
                ms = t * 1e3
                flag = "" if ms < args.limit_ms else "  <-- over the limit"
                if flag:
                    over.append((kname, size, name))
                print(f"{kname:<18} 2^{size.bit_length() - 1:<4} {name:<18} {ms:>9.3f} "
                      f"{peak / 1024:>9.1f}{flag}")
    if over:
        print(f"{len(over)} operations at or above {args.limit_ms} ms")
        return 1
    print(f"every operation under {args.limit_ms} ms")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
