"""faultpath benchmarks (`make bench`): ratios measured in one run.

1. Emulation speed: the marginal time per call of `faultpath run --image
   host --scenario none` at 4096 B and 4 B, against bare Unicorn with no
   hooks on the same call, interleaved, min over rounds.
"""
from __future__ import annotations

import struct
import sys
import time

from unicorn import UC_ARCH_X86, UC_HOOK_INSN, UC_MODE_64, UC_PROT_ALL, Uc
from unicorn import x86_const as X

from emulator.run import RunConfig, run
from vdso.elf_image import host_has_vgetrandom
from vdso.loader import default_image_name, load_image


def raw_unicorn_rate(image, size: int, calls: int) -> tuple[float, int]:
    """The same __vdso_getrandom calls in a bare Unicorn: no hooks but the syscall one."""
    uc = Uc(UC_ARCH_X86, UC_MODE_64)
    vv = image.vvar_start
    uc.mem_map(vv, image.base - vv + image.size, UC_PROT_ALL)
    uc.mem_write(image.base, image.text)
    uc.mem_write(image.rng_data_addr, struct.pack("<QB", 1, 1))
    data = 0x1000_0000
    uc.mem_map(data, 0x10_0000, UC_PROT_ALL)
    state, buf, stack, ret = data, data + 0x1000, data + 0xF_F000, data + 0xF_F800
    uc.mem_write(ret, b"\xf4")

    def sysc(u, _):
        rdi, rsi = u.reg_read(X.UC_X86_REG_RDI), u.reg_read(X.UC_X86_REG_RSI)
        u.mem_write(rdi, b"\x5a" * rsi)
        u.reg_write(X.UC_X86_REG_RAX, rsi)
    uc.hook_add(UC_HOOK_INSN, sysc, None, 1, 0, X.UC_X86_INS_SYSCALL)
    fn = image.symbol("__vdso_getrandom")

    def call():
        uc.reg_write(X.UC_X86_REG_RSP, stack)
        uc.mem_write(stack, struct.pack("<Q", ret))
        for r, v in zip((X.UC_X86_REG_RDI, X.UC_X86_REG_RSI, X.UC_X86_REG_RDX, X.UC_X86_REG_RCX, X.UC_X86_REG_R8),
                        (buf, size, 0, state, 144)):
            uc.reg_write(r, v)
        uc.emu_start(fn, ret)
    call()
    t = time.perf_counter()
    for _ in range(calls):
        call()
    return time.perf_counter() - t, calls


def _raw_seconds(image, size: int, calls: int) -> float:
    return raw_unicorn_rate(image, size, calls)[0]


def _faultpath_seconds(image, size: int, calls: int) -> float:
    """`faultpath run --image IMAGE --scenario none --size SIZE --calls CALLS`, in-process."""
    t = time.perf_counter()
    run(RunConfig(image=image, sizes=[size], calls=calls, scenario="none"))
    return time.perf_counter() - t


def bench_speed(image_name: str, size: int, few: int, many: int, rounds: int = 7) -> dict:
    """Marginal time per call: (T(many) - T(few)) / (many - few), so that
    start-up (kernel, process, first-call block analysis) cancels.  Each T is
    the min over rounds, faultpath and bare Unicorn interleaved in each round
    (the machine is shared and noisy); the min of each time, not of each
    difference, which noise in a round's T(few) would push low."""
    image = load_image(image_name)
    _faultpath_seconds(image, size, 2)          # warm the shared block-analysis cache
    t = {("fp", few): [], ("fp", many): [], ("raw", few): [], ("raw", many): []}
    for _ in range(rounds):
        for n in (few, many):
            t[("fp", n)].append(_faultpath_seconds(image, size, n))
            t[("raw", n)].append(_raw_seconds(image, size, n))
    f = (min(t[("fp", many)]) - min(t[("fp", few)])) / (many - few)
    r = (min(t[("raw", many)]) - min(t[("raw", few)])) / (many - few)
    return {"image": image_name, "size": size, "calls": (few, many), "faultpath_us": f * 1e6,
            "raw_us": r * 1e6, "ratio": r / f}


SPEED_TARGETS = {4096: 0.5, 4: 0.35}     # issue 12: ratio to bare Unicorn, marginal per call


def main() -> int:
    images = ["host"] if host_has_vgetrandom() else []
    if default_image_name() != "host":
        images.append(default_image_name())
    print("== emulation speed: marginal time per call of `faultpath run --scenario none` against bare Unicorn "
          "(only its syscall hook) on the same call; min over interleaved rounds ==")
    for name in images:
        for size, (few, many) in ((4096, (10, 60)), (4, (200, 1200))):
            r = bench_speed(name, size, few, many)
            verdict = "ok" if r["ratio"] >= SPEED_TARGETS[size] else "BELOW TARGET"
            print(f"{name:>8} {size:>5} B: faultpath {r['faultpath_us']:7.1f} us/call, bare Unicorn "
                  f"{r['raw_us']:7.1f} us/call -> ratio {r['ratio']:.2f} (target >= {SPEED_TARGETS[size]}: {verdict})")
    import importlib
    import importlib.util
    # mm at scale, instructions per call, sweeps, the cycle model (incl. the
    # validation set), the native twin, and the >= 100,000-sequence differential check.
    for extra in ("bench.mm_scale", "bench.images", "bench.sweep", "bench.cycles", "bench.twin", "bench.diffcheck"):
        if importlib.util.find_spec(extra) is not None:
            importlib.import_module(extra).main()
    return 0


if __name__ == "__main__":
    sys.exit(main())
