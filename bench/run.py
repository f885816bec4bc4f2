"""faultpath benchmarks (`make bench`): ratios measured in one run.

1. Emulation speed: `faultpath run --image host --size 4096 --calls 200`
   (instructions per second, cycle accounting on) against raw Unicorn with no
   hooks on the same call, same process, back to back.
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


def bench_speed(image_name: str, size: int = 4096, calls: int = 200) -> dict:
    image = load_image(image_name)
    t = time.perf_counter()
    rep = run(RunConfig(image=image, sizes=[size], calls=calls))
    dt = time.perf_counter() - t
    insns = sum(c.instructions for c in rep["_results"])
    steady = rep["_results"][-1].instructions
    raw_dt, n = raw_unicorn_rate(image, size, calls)
    raw_rate = steady * n / raw_dt
    rate = insns / dt
    # Steady state: the same process, calls after warm-up (no set-up, no first-touch faults).
    from emulator.run import new_process
    _, _, caller = new_process(RunConfig(image=image, sizes=[size], calls=1))
    for _ in range(20):
        caller.getrandom(size)
    t = time.perf_counter()
    n_steady = sum(caller.getrandom(size).instructions for _ in range(calls))
    steady_rate = n_steady / (time.perf_counter() - t)
    return {"image": image_name, "size": size, "calls": calls, "instructions": insns,
            "faultpath_insn_per_s": rate, "raw_unicorn_insn_per_s": raw_rate, "ratio": rate / raw_rate,
            "steady_insn_per_s": steady_rate, "steady_ratio": steady_rate / raw_rate,
            "faultpath_s": dt, "raw_s": raw_dt}


def main() -> int:
    images = ["host"] if host_has_vgetrandom() else []
    if default_image_name() != "host":
        images.append(default_image_name())
    print("== emulation speed: faultpath run --size 4096 --calls 200 vs raw Unicorn (no hooks), same run ==")
    for name in images:
        r = bench_speed(name)
        print(f"{name:>12}: faultpath {r['faultpath_insn_per_s'] / 1e6:6.1f} M insn/s "
              f"({r['faultpath_s']:.3f} s, {r['instructions']} insns incl. set-up), "
              f"raw Unicorn {r['raw_unicorn_insn_per_s'] / 1e6:6.1f} M insn/s -> ratio {r['ratio']:.2f}; "
              f"steady state {r['steady_insn_per_s'] / 1e6:6.1f} M insn/s -> ratio {r['steady_ratio']:.2f}")
    import importlib
    import importlib.util
    for extra in ("bench.images", "bench.sweep", "bench.cycles"):
        if importlib.util.find_spec(extra) is not None:
            importlib.import_module(extra).main()
    return 0


if __name__ == "__main__":
    sys.exit(main())
