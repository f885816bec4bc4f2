"""What `faultpath calibrate` and `faultpath bench` measure natively on this
machine, in TSC ticks, with the harness of emulator/calibrate/harness.py.

What is measured (each a median of several repeats, so one noisy repeat on
this VM does not move it):

* the core-clock/TSC ratio: dependency chains of known latency (`add r,r` is
  1 core cycle on every x86 core since the Pentium 4; `imul r,r` is 3), and
  the latency of the handful of SIMD forms the ChaCha20 loop is made of;
* `__vdso_getrandom` at each size, called natively through its real address
  (AT_SYSINFO_EHDR + symbol offset) with a real MAP_DROPPABLE state
  (mmap(..., MAP_ANONYMOUS | MAP_DROPPABLE = 0x28)) and opaque_len 144,
  averaged over a long run of calls exactly like a C benchmark loop: the batch
  position, and with it the per-call work, cycles through all its values;
* the vDSO's ChaCha20 block function alone (1..64 blocks), for `bench`;
* the scheduler pools (profile [window]): a chain loop of each pool, called
  over and over with 512 and 2048 iterations;
* the getrandom syscall at each size, and an unknown syscall (-ENOSYS: the
  bare entry/exit path);
* anonymous page faults, one page at a time with rdtsc around the touching
  instruction: read (maps the zero page), first write (zero-fill), write
  after read (COW from the zero page), write to a re-armed (MADV_DONTNEED)
  MAP_DROPPABLE page, write to a MAP_PRIVATE page of a memfd (a real COW
  copy, no fork needed); THP is switched off for the test mappings;
* clear_page/copy_page stand-ins (`rep stosb`/`rep movsb` of 4 KiB), the
  per-page cost of MADV_PAGEOUT on droppable pages (reclaim), and fork().

Fitting a profile to these figures is emulator/calibrate/fit.py; writing it,
emulator/calibrate/output.py.
"""
from __future__ import annotations

import ctypes
import os
import platform
import time

from emulator.calibrate.harness import CHAINS, THROUGHPUT, U64, Harness, median, repeat
from emulator.calibrate.native import (MADV_DONTNEED, MADV_PAGEOUT, MAP_ANONYMOUS, MAP_DROPPABLE, MAP_PRIVATE, PAGE,
                                       PROT_READ, PROT_WRITE, Mapping, libc)
from emulator.calibrate.native_vdso import (OPAQUE_LEN, VDSO_SIZES, NativeVdso, calls_for, native_vdso,
                                            vdso_period)
from emulator.errors import FaultpathError

NR_memfd_create = 319


class Measurer:
    """All native measurements; each method returns plain numbers (TSC ticks)."""

    def __init__(self, quick: bool = False, log=None):
        self.h = Harness()
        self.quick = quick
        self.reps = 3 if quick else 9
        self.log = log or (lambda s: None)
        self.libc = libc()

    # --- clock and instruction forms -------------------------------------------
    def chains(self) -> dict[str, float]:
        iters = 2000 if self.quick else 20000
        out = {}
        for name in list(CHAINS) + list(THROUGHPUT):
            out[name] = min(self.h.chain(name, iters) for _ in range(self.reps))
        return out

    def window(self) -> dict[str, dict[int, float]]:
        """Per pool: TSC ticks per call of its chain loop at 512 and 2048 iterations
        (the empty call's ticks subtracted)."""
        from emulator.calibrate.harness import WINDOW_LOOPS
        base = self.empty_call()
        out: dict[str, dict[int, float]] = {}
        with Mapping(PAGE) as buf:
            for name in WINDOW_LOOPS:
                f = self.h.addr("window_" + name)
                out[name] = {}
                for n in (512, 2048):
                    calls = max(10, (20_000 if self.quick else 200_000) // n)
                    self.h.time_calls(f, [n, buf.addr], 5)
                    out[name][n] = repeat(lambda: self.h.time_calls(f, [n, buf.addr], calls), self.reps) - base
        return out

    def tsc_per_core_cycle(self, chains: dict[str, float] | None = None) -> float:
        """add r,r has a latency of exactly one core cycle; imul r,r of three."""
        c = chains or self.chains()
        a, m = c["add"], c["imul"] / 3.0
        return (a + m) / 2 if abs(a - m) / a < 0.05 else a

    # --- vDSO --------------------------------------------------------------------
    def vdso(self, v: NativeVdso, sizes=VDSO_SIZES) -> dict[int, float]:
        # One state per size, each started as the emulated run starts it (a fresh
        # state: reseed, then one call and whole batch periods): where in the batch
        # the calls of a size fall decides how many refills they make (64 B from
        # position 0 refills once every 3 calls, from position 16 twice), so a state
        # shared by all sizes would time another mix of calls than bench predicts.
        st = Mapping(PAGE * ((len(sizes) * OPAQUE_LEN) // PAGE + 1), flags=MAP_ANONYMOUS | MAP_DROPPABLE,
                     nohuge=False)
        per_page = PAGE // OPAQUE_LEN
        state = {s: st.addr + (i // per_page) * PAGE + (i % per_page) * OPAQUE_LEN for i, s in enumerate(sizes)}
        buf = Mapping(1 << 16)
        try:
            ctypes.memset(buf.addr, 0, buf.length)
            # Repeats go round-robin over the sizes: a stretch of interference on
            # this shared VM then spoils one repeat of every size, not all of one.
            out: dict[int, float] = {}
            for s in sizes:
                self.h.time_calls(v.getrandom, [buf.addr, s, 0, state[s], OPAQUE_LEN], vdso_period(s) + 1)  # warm
            for _ in range(self.reps):
                for s in sizes:
                    t = self.h.time_calls(v.getrandom, [buf.addr, s, 0, state[s], OPAQUE_LEN],
                                          calls_for(s, self.quick))
                    out[s] = min(out.get(s, t), t)
            ret = ctypes.CFUNCTYPE(ctypes.c_long, U64, U64, U64, U64, U64)(v.getrandom)(
                buf.addr, 32, 0, state[sizes[0]], OPAQUE_LEN)
            if ret != 32:
                raise FaultpathError(f"calibrate: native __vdso_getrandom(32) returned {ret}")
            return out
        finally:
            st.close()
            buf.close()

    def chacha_blocks(self, v: NativeVdso, counts=(1, 2, 4, 16, 64)) -> dict[int, float]:
        if v.chacha is None:
            return {}
        dst = Mapping(64 * max(counts) + PAGE)
        key = (ctypes.c_uint8 * 32)(*range(32))
        ctr = U64(0)
        try:
            ctypes.memset(dst.addr, 0, dst.length)
            out = {}
            for n in counts:
                iters = max(50, (400 if self.quick else 4000) // n)
                args = [dst.addr, ctypes.addressof(key), ctypes.addressof(ctr), n]
                self.h.time_calls(v.chacha, args, 10)
                out[n] = repeat(lambda: self.h.time_calls(v.chacha, args, iters), self.reps)
            return out
        finally:
            dst.close()

    def empty_call(self) -> float:
        return repeat(lambda: self.h.time_calls(self.h.addr("ret"), [0] * 5, 100_000 if not self.quick else 20_000),
                      self.reps)

    # --- syscalls ------------------------------------------------------------------
    def syscalls(self, sizes=VDSO_SIZES) -> dict[int, float]:
        buf = Mapping(1 << 16)
        try:
            ctypes.memset(buf.addr, 0, buf.length)
            f = self.h.addr("sys_getrandom")
            out: dict[int, float] = {}
            for s in sizes:
                self.h.time_calls(f, [buf.addr, s, 0], 20)
            # Many short bursts (~50 us each), the best one per size: long requests
            # are sometimes slowed for milliseconds at a time on this VM.
            for _ in range(self.reps * (2 if self.quick else 4)):
                for s in sizes:
                    n = max(4, 130_000 // int(1000 + 7 * s))
                    t = self.h.time_calls(f, [buf.addr, s, 0], n)
                    out[s] = min(out.get(s, t), t)
            return out
        finally:
            buf.close()

    def enosys(self) -> float:
        n = 5000 if self.quick else 50000
        return repeat(lambda: self.h.time_calls(self.h.addr("sys5"), [500], n), self.reps)

    # --- page faults ---------------------------------------------------------------
    def _per_page(self, access: str, addr: int, n: int) -> list[int]:
        return self.h.touch(access, addr, n)

    def faults(self) -> dict[str, float]:
        npages = 64 if self.quick else 128
        rounds = 5 if self.quick else 15
        length = npages * PAGE
        res: dict[str, list[float]] = {k: [] for k in
                                       ("overhead", "read_zero_page", "write_zero_fill", "write_after_zero_page",
                                        "write_droppable_dropped", "cow_copy")}
        for _ in range(rounds):
            with Mapping(length) as m:
                r = self._per_page("read", m.addr, npages)
                w = self._per_page("write", m.addr, npages)        # COW from the zero page
                again = self._per_page("write", m.addr, npages)    # mapped: the harness overhead
                res["overhead"].append(median(again))
                res["read_zero_page"].append(median(r))
                res["write_after_zero_page"].append(median(w))
            with Mapping(length) as m:
                res["write_zero_fill"].append(median(self._per_page("write", m.addr, npages)))
            with Mapping(length, flags=MAP_ANONYMOUS | MAP_DROPPABLE) as m:
                self._per_page("write", m.addr, npages)
                m.madvise(MADV_DONTNEED)                            # drop: the pages are gone
                res["write_droppable_dropped"].append(median(self._per_page("write", m.addr, npages)))
            res["cow_copy"].append(self._cow_copy(npages))
        # Each round's figure is the median over its pages; across rounds the
        # lowest, like the loops' best repeat: on this shared VM a round either
        # runs alone or next to a busy sibling thread (~25% slower, all pages).
        out = {k: min(x for x in v if x == x) if any(x == x for x in v) else float("nan")
               for k, v in res.items()}
        ov = out.pop("overhead")
        out = {k: max(0.0, v - ov) for k, v in out.items()}
        out["harness_overhead"] = ov
        return out

    def _cow_copy(self, npages: int) -> float:
        """Write to MAP_PRIVATE pages of a memfd already mapped read-only: wp_page_copy copies."""
        name = b"faultpath-calibrate\0"
        fd = self.h.syscall(NR_memfd_create, ctypes.addressof(ctypes.create_string_buffer(name)), 0)
        if fd < 0:
            return float("nan")
        try:
            os.ftruncate(fd, npages * PAGE)
            os.pwrite(fd, b"\x11" * (npages * PAGE), 0)
            with Mapping(npages * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE, fd=fd) as m:
                self._per_page("read", m.addr, npages)       # maps the page-cache pages read-only
                return median(self._per_page("write", m.addr, npages))
        finally:
            os.close(fd)

    def page_ops(self) -> dict[str, float]:
        """clear_page / copy_page stand-ins and reclaim (MADV_PAGEOUT) per page."""
        out = {}
        with Mapping(2 * PAGE) as m:
            ctypes.memset(m.addr, 1, 2 * PAGE)
            out["rep_stosb_4k"] = repeat(lambda: self.h.time_calls(self.h.addr("rep_stosb"), [m.addr, PAGE], 200),
                                         self.reps)
            out["rep_movsb_4k"] = repeat(lambda: self.h.time_calls(self.h.addr("rep_movsb"),
                                                                   [m.addr, PAGE, m.addr + PAGE], 200), self.reps)
            out["rep_stosb_64"] = repeat(lambda: self.h.time_calls(self.h.addr("rep_stosb"), [m.addr, 64], 2000),
                                         self.reps)
            out["rep_stosb_1k"] = repeat(lambda: self.h.time_calls(self.h.addr("rep_stosb"), [m.addr, 1024], 1000),
                                         self.reps)
        npages = 64 if self.quick else 256
        per = []
        for _ in range(3 if self.quick else 5):
            with Mapping(npages * PAGE, flags=MAP_ANONYMOUS | MAP_DROPPABLE) as m:
                self._per_page("write", m.addr, npages)
                t = self.h.time_calls(self.h.addr("sys5"), [28, m.addr, npages * PAGE, MADV_PAGEOUT], 1)
                per.append(t / npages)
        out["pageout_per_page"] = median(per)
        return out

    def fork(self) -> float:
        f = self.h.func("time_fork", U64, [ctypes.c_void_p])
        pid = U64(0)
        ts = []
        for _ in range(3 if self.quick else 7):
            t = f(ctypes.addressof(pid))
            p = ctypes.c_int64(pid.value).value
            if p <= 0:
                raise FaultpathError("calibrate: fork() failed")
            os.waitpid(p, 0)
            ts.append(t)
        return min(ts)

    def fork_model(self) -> tuple[float, float, int]:
        """(base, per resident page, resident pages): fork() timed at the current
        size and again with 64 MiB more populated memory."""
        rss0 = self.rss_pages()
        t0 = self.fork()
        extra = 16384
        with Mapping(extra * PAGE) as m:
            ctypes.memset(m.addr, 1, extra * PAGE)
            rss1 = self.rss_pages()
            t1 = self.fork()
        per = max(0.0, (t1 - t0) / max(1, rss1 - rss0))
        return max(0.0, t0 - per * rss0), per, rss0

    def rss_pages(self) -> int:
        """Resident anonymous pages (the ones fork copies PTEs for)."""
        try:
            with open("/proc/self/status") as f:
                for line in f:
                    if line.startswith("RssAnon:"):
                        return int(line.split()[1]) // 4
        except OSError:
            pass
        return 0



def tsc_mhz() -> float:
    """TSC frequency: ticks over a wall-clock interval (or the kernel's figure)."""
    h = Harness()
    f = h.func("chain_add", U64, [U64, U64])
    t0 = time.perf_counter_ns()
    ticks = f(200_000, 0)
    t1 = time.perf_counter_ns()
    return ticks / ((t1 - t0) / 1000.0)


def measure_all(quick: bool = False, image: str = "auto", log=None) -> dict:
    """Every native figure calibrate and bench need, in TSC ticks."""
    log = log or (lambda s: None)
    M = Measurer(quick=quick, log=log)
    out: dict = {"quick": quick, "host": platform.node(), "kernel": platform.release(), "when": time.strftime("%Y-%m-%d %H:%M:%S %Z")}
    log("clock and instruction forms")
    out["chains"] = M.chains()
    out["tsc_per_core_cycle"] = M.tsc_per_core_cycle(out["chains"])
    out["tsc_mhz"] = tsc_mhz()
    out["window"] = M.window()
    out["empty_call"] = M.empty_call()
    try:
        v = native_vdso(image)
        out["vdso_image"] = v.name
        out["vdso_note"] = v.note
        log(f"__vdso_getrandom ({v.name}) at each size")
        out["vdso"] = M.vdso(v)
        out["chacha"] = M.chacha_blocks(v)
    except FaultpathError as e:
        out["vdso_image"] = None
        out["vdso_note"] = str(e)
        out["vdso"] = {}
        out["chacha"] = {}
    log("getrandom syscall")
    out["syscall"] = M.syscalls()
    out["enosys"] = M.enosys()
    log("page faults")
    out["faults"] = M.faults()
    out["page_ops"] = M.page_ops()
    log("fork")
    base, per, rss = M.fork_model()
    out["fork"] = {"base": base, "per_page": per, "rss_pages": rss}
    return out


def check_measurements(meas: dict) -> list[str]:
    """Sanity of the native figures; a list of problems (empty: fine)."""
    bad = []
    v = {int(k): float(x) for k, x in meas.get("vdso", {}).items()}
    sizes = sorted(v)
    for a, b in zip(sizes, sizes[1:]):
        if v[b] < v[a] * 0.97:
            bad.append(f"vDSO cycles not monotonic in size: {a} B {v[a]:.0f} > {b} B {v[b]:.0f}")
    for s, x in v.items():
        lo, hi = 2.0, 40.0 + 50.0 * s
        if not lo <= x <= hi:
            bad.append(f"vDSO {s} B: {x:.0f} TSC ticks outside the sane range {lo:.0f}..{hi:.0f}")
    r = meas.get("tsc_per_core_cycle", 0)
    if not 0.1 <= r <= 4:
        bad.append(f"core-clock/TSC ratio {r:.3f} is implausible")
    return bad
