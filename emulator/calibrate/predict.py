"""Predicted cycles for the calls `faultpath bench` and `calibrate` measure
natively: the same code run in the emulator with a profile.

* vDSO: run.new_process + VgetrandomCaller, warmed up, averaged over a whole
  number of batch periods (the per-call work depends on the batch position,
  as in the native loop that averages thousands of calls), plus the harness
  loop's own instructions (argument loads, the call, the loop branch) put
  through the same scoreboard: the native loop includes them, the emulated
  call starts at the function.
* syscall: `mov eax, 318; syscall; ret` in the emulator (+ the harness).
* faults: one access per fresh page minus the same access on a mapped page,
  as the native per-page rdtsc pair minus its own overhead.
* the ChaCha20 block function alone: the slope between 1 and 17 blocks.
"""
from __future__ import annotations

import shutil
import statistics
import subprocess

from emulator.cycles.profile import Profile, load_profile

_SNIPPETS = {
    "touch_read": "movzx eax, byte ptr [rdi]\nret\n",
    "touch_write": "mov byte ptr [rdi], 0x5a\nret\n",
    "sys_getrandom": "mov eax, 0x13e\nsyscall\nret\n",
}

# The native harness loop of emulator/calibrate/harness.py (time_calls), as two blocks.
_HARNESS_CALL = """
    mov rdi, qword ptr [r12 + 8]
    mov rsi, qword ptr [r12 + 16]
    mov rdx, qword ptr [r12 + 24]
    mov rcx, qword ptr [r12 + 32]
    mov r8, qword ptr [r12 + 40]
    call qword ptr [r12]
"""
_HARNESS_LOOP = ".Lcall:\n    dec r13\n    jnz .Lcall\n"


def as_profile(profile: str | Profile) -> Profile:
    return profile if isinstance(profile, Profile) else load_profile(profile)


def harness_cost(profile: str | Profile) -> float:
    """TSC ticks the measuring loop adds to each call, by the same scoreboard,
    block by block (the syscall rows: their cost is the kernel's events)."""
    from emulator.cycles.blocks import analyse_code
    from vdso.asm_build import assemble_snippet
    p = as_profile(profile)
    total = 0.0
    for src in (_HARNESS_CALL, _HARNESS_LOOP):
        total += analyse_code(bytes(assemble_snippet(src, 0, "<harness>")), 0, p).cost
    return p.to_tsc(total)


def harness_charges(profile: str | Profile) -> tuple[float, float]:
    """(front end, back end) TSC ticks of the measuring loop's own straight code
    around each call, charged as emulator/cycles/context.py charges straight
    code: its `dec; jnz` reached by the function's return, its argument loads
    and call reached by the jnz.  The function's own blocks, its first one and
    its return included, are the emulated run's."""
    from emulator.cycles import fetch
    from emulator.cycles.blocks import analyse_code
    from vdso.asm_build import assemble_snippet
    p = as_profile(profile)
    front = back = 0.0
    for src, last in ((_HARNESS_LOOP, "cond"), (_HARNESS_CALL, "call")):
        code = bytes(assemble_snippet(src, 0, "<harness>"))
        bounds = analyse_code(code, 0, p).detail["bounds"]
        front += max(fetch.fetch_cycles(0, len(code), fetch.TAKEN, last, p), bounds.get("dispatch", 0.0))
        back += max((v for k, v in bounds.items() if k not in ("dispatch", "fetch")), default=0.0)
    return p.to_tsc(front), p.to_tsc(back)


class Measured:
    """Emulated calls as the native loop measures them: each call's cycles, with
    the loop's own straight code (harness_charges) overlapping the call's
    straight code the way straight code overlaps in the model: front ends add
    up, back ends add up, the larger sum is charged (emulator/entry.py)."""

    def __init__(self, m, profile: str | Profile):
        self.seq = m.blocks.seq
        self.front, self.back = harness_charges(profile)

    def call(self, run) -> tuple[object, float]:
        """(result, TSC ticks) of run(), a function making one emulated call."""
        before = list(self.seq.totals)
        r = run()
        after = self.seq.totals
        f, b = after[1] - before[1], after[2] - before[2]
        return r, r.cycles + max(f + self.front, b + self.back) - max(f, b)


def _snippet_image():
    from vdso.asm_build import assemble_snippet
    from vdso.image import RNG_DATA_OFFSET_6_15, VDSO_BASE, VdsoImage
    code, syms = b"", {}
    for name, src in _SNIPPETS.items():
        syms[name] = len(code)
        code += bytes(assemble_snippet(src, VDSO_BASE + len(code), f"<bench:{name}>"))
        code += b"\xcc" * ((-len(code)) % 64)
    code += b"\xcc" * ((-len(code)) % 4096)
    syms["__vdso_getrandom"] = syms["sys_getrandom"]
    return VdsoImage(name="bench-snippets", text=code, symbols=syms, rng_data_offset=RNG_DATA_OFFSET_6_15,
                     rng_data_source="snippet")


def _machine(image, profile: str | Profile):
    from emulator.kernel import Kernel
    from emulator.machine import Machine
    return Machine(Kernel(image, memory_pages=4096, profile=as_profile(profile)))


def _mmap(m, length: int, droppable: bool = False) -> int:
    from mm import flags as F
    fl = (F.MAP_DROPPABLE | F.MAP_ANONYMOUS) if droppable else (F.MAP_PRIVATE | F.MAP_ANONYMOUS)
    a = m.mm.mmap(0, length, F.PROT_READ | F.PROT_WRITE, fl, -1, 0)
    if a < 0:
        raise RuntimeError(f"emulated mmap failed: {a}")
    m.sync_range(a, length)
    return a


def predict_vdso(image, profile: str | Profile, sizes, quick: bool = False) -> dict[int, float]:
    from emulator.calibrate.native_vdso import vdso_period
    from emulator.kernel import Kernel
    from emulator.machine import Machine
    from emulator.libc import VgetrandomCaller
    p = as_profile(profile)
    out = {}
    for s in sizes:
        m = Machine(Kernel(image, profile=p))
        caller = VgetrandomCaller(m, buffer_size=max(s, 1))
        loop = Measured(m, p)
        per = vdso_period(s)
        for _ in range(per + 1):                  # warm: reseed, then one whole period
            caller.getrandom(s)
        reps = 1 if quick or s >= 1024 else 2
        total, n = 0.0, 0
        for _ in range(per * reps):
            r, ticks = loop.call(lambda: caller.getrandom(s))
            if r.outcome != "returned" or r.ret != s:
                raise RuntimeError(f"emulated getrandom({s}) -> {r.outcome} {r.ret}")
            total += ticks
            n += 1
        out[s] = total / n
        m.close()
    return out


def predict_syscall(profile: str | Profile, sizes) -> dict[int, float]:
    p = as_profile(profile)
    m = _machine(_snippet_image(), p)
    buf = _mmap(m, 1 << 16)
    m.user_write(buf, bytes(1 << 16))
    fn = m.kernel.image.symbol("sys_getrandom")
    extra = harness_cost(p)
    out = {}
    for s in sizes:
        r = m.call(fn, [buf, s, 0])
        if r.ret != s:
            raise RuntimeError(f"emulated getrandom syscall({s}) -> {r.ret}")
        out[s] = r.cycles + extra
    m.close()
    return out


def predict_faults(profile: str | Profile, npages: int = 8) -> dict[str, float]:
    from mm import flags as F
    m = _machine(_snippet_image(), profile)
    rd = m.kernel.image.symbol("touch_read")
    wr = m.kernel.image.symbol("touch_write")
    length = npages * 4096

    def per_page(fn: int, a: int) -> float:
        out = []
        for i in range(npages):
            r = m.call(fn, [a + i * 4096])
            if r.outcome != "returned":
                raise RuntimeError(f"emulated touch -> {r.outcome}: {r.outcome_detail}")
            out.append(r.cycles)
        return statistics.median(out)

    res: dict[str, float] = {}
    a = _mmap(m, length)
    read = per_page(rd, a)
    wz = per_page(wr, a)
    base_w = per_page(wr, a)
    base_r = per_page(rd, a)
    res["read_zero_page"] = read - base_r
    res["write_after_zero_page"] = wz - base_w
    res["write_zero_fill"] = per_page(wr, _mmap(m, length)) - base_w
    a = _mmap(m, length, droppable=True)
    per_page(wr, a)
    m.mm.madvise(a, length, F.MADV_DONTNEED)
    m.sync_range(a, length)
    res["write_droppable_dropped"] = per_page(wr, a) - base_w
    a = _mmap(m, length)
    per_page(wr, a)
    m.fork("bench-child")              # every written page becomes COW-shared
    res["cow_copy"] = per_page(wr, a) - base_w
    m.close()
    return res


# --- the ChaCha20 block function -----------------------------------------------

def chacha_entry(image) -> int | None:
    """Offset of __arch_chacha20_blocks_nostack: its symbol, or the first direct
    call target inside __vdso_getrandom (the host vDSO does not export it)."""
    from capstone import CS_ARCH_X86, CS_MODE_64, Cs
    off = image.symbols.get("__arch_chacha20_blocks_nostack")
    if off is not None:
        return off
    g = image.symbols.get("__vdso_getrandom")
    if g is None:
        return None
    for ins in Cs(CS_ARCH_X86, CS_MODE_64).disasm(image.text[g:g + 0x800], image.base + g):
        if ins.mnemonic == "call":
            try:
                return int(ins.op_str, 16) - image.base
            except ValueError:
                return None
    return None


def chacha_loop(image) -> tuple[bytes, int] | None:
    """The double-round loop body (code, address): up to the first backward jcc."""
    from capstone import CS_ARCH_X86, CS_MODE_64, Cs
    off = chacha_entry(image)
    if off is None:
        return None
    for ins in Cs(CS_ARCH_X86, CS_MODE_64).disasm(image.text[off:off + 0x400], image.base + off):
        if ins.mnemonic.startswith("j") and ins.mnemonic != "jmp":
            try:
                t = int(ins.op_str, 16)
            except ValueError:
                continue
            if t < ins.address:
                return image.text[t - image.base:ins.address + ins.size - image.base], t
    return None


def emulate_chacha(image, profile: str | Profile, counts=(1, 17)) -> dict[int, float] | None:
    """TSC ticks of the ChaCha20 block function for each block count, emulated."""
    off = chacha_entry(image)
    if off is None:
        return None
    m = _machine(image, profile)
    data = _mmap(m, 8 * 4096)
    m.user_write(data, bytes(range(32)) + bytes(32))
    out = {}
    for n in counts:
        m.call(image.base + off, [data + 4096, data, data + 64, n])    # warm the block cache
        r = m.call(image.base + off, [data + 4096, data, data + 64, n])
        if r.outcome != "returned":
            raise RuntimeError(f"emulated chacha({n}) -> {r.outcome}")
        out[n] = r.cycles
    m.close()
    return out


def chacha_block_cost(image, profile: str | Profile) -> float | None:
    """Predicted TSC ticks per 64-byte block (slope over 1..17 blocks)."""
    c = emulate_chacha(image, profile)
    if not c:
        return None
    lo, hi = min(c), max(c)
    return (c[hi] - c[lo]) / (hi - lo)


def llvm_mca_chacha_block(image, tsc_per_core: float) -> tuple[float, str] | None:
    """llvm-mca's steady-state cycles for the same loop x 10 double rounds, in TSC ticks."""
    exe = shutil.which("llvm-mca")
    if exe is None:
        for v in range(21, 13, -1):
            exe = shutil.which(f"llvm-mca-{v}")
            if exe:
                break
    lp = chacha_loop(image)
    if exe is None or lp is None:
        return None
    from capstone import CS_ARCH_X86, CS_MODE_64, Cs
    lines = [".intel_syntax noprefix"]
    for ins in Cs(CS_ARCH_X86, CS_MODE_64).disasm(lp[0], lp[1]):
        if not ins.mnemonic.startswith("j"):
            lines.append(f"{ins.mnemonic} {ins.op_str}")
    src = "\n".join(lines) + "\n"
    for cpu in ("znver4", "znver3"):
        try:
            r = subprocess.run([exe, "-mtriple=x86_64-unknown-linux-gnu", f"-mcpu={cpu}", "-iterations=100"],
                               input=src, capture_output=True, text=True, timeout=60)
        except (OSError, subprocess.TimeoutExpired):
            return None
        if r.returncode != 0 or "Total Cycles:" not in r.stdout or "not a recognized processor" in r.stderr:
            continue
        total = iters = None
        for line in r.stdout.splitlines():
            if line.startswith("Total Cycles:"):
                total = float(line.split(":")[1])
            elif line.startswith("Iterations:"):
                iters = float(line.split(":")[1])
        if total and iters:
            return tsc_per_core * 10 * total / iters, cpu
    return None
