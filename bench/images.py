"""Side by side: instructions and model cycles per call, builtin vs host,
steady state (averaged over a long sequence, as a native loop averages)."""
from __future__ import annotations

from emulator.run import RunConfig, run
from vdso.elf_image import host_has_vgetrandom
from vdso.loader import load_image

SIZES = [1, 64, 256, 4096]
CALLS = 300


def measure(name: str, size: int) -> tuple[float, float]:
    rep = run(RunConfig(image=load_image(name), sizes=[size], calls=CALLS))
    steady = rep["_results"][20:]
    return (sum(c.instructions for c in steady) / len(steady), sum(c.cycles for c in steady) / len(steady))


def main() -> None:
    names = ["builtin", "builtin-v14"] + (["host"] if host_has_vgetrandom() else [])
    print(f"== instructions and model cycles per call (steady state, mean of {CALLS - 20} calls) ==")
    print(f"{'bytes':>6} " + " ".join(f"{n + ' insns':>18} {n + ' cycles':>19}" for n in names))
    for s in SIZES:
        row = [measure(n, s) for n in names]
        print(f"{s:>6} " + " ".join(f"{i:>18.1f} {c:>19.1f}" for i, c in row))


if __name__ == "__main__":
    main()
