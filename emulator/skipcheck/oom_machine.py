"""The Machine skipcheck runs on: user code against the `layout` mappings,
with a droppable page whose allocation fails for good (persistent OOM).

`new_machine` builds one per run; `set_cpu` and `cpu_state` write and read
the registers a run checks; `oom_machine` gives users (the pytest plugin's
``droppable_oom_machine``) the same bench around their own code.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

from unicorn import x86_const as X

from emulator.cycles.profile import load_profile
from emulator.errors import EmulationError, UsageError
from emulator.kernel import Kernel
from emulator.machine import Machine
from emulator.records import CallContext, CallResult
from emulator.skipcheck.corpus import assemble_body
from emulator.skipcheck.layout import (DROP_OFF, FS_BASE, GPR64, GS_BASE, HIGH, INSN_OFF, LOW, PRE_OFF,
                                       SDROP_OFF, SRC_OFF, code_page, data_pattern, gpr_pattern,
                                       mm_pattern, xmm_pattern)
from mm import flags as F
from mm.flags import DROPPABLE_OOM_POLICIES as POLICIES
from mm.flags import PAGE_SIZE
from vdso.image import RNG_DATA_OFFSET_6_15, VdsoImage

LIVELOCK = 4              # refaults before the Machine reports a livelock (retry)


@lru_cache(maxsize=1)
def _profile():
    """One cost profile for every run (loading it is the slow part)."""
    return load_profile()


def new_machine(layout: tuple[int, int], text: bytes, insn_addr: int, policy: str) -> Machine:
    """A Machine whose image text is ``text`` at the layout's code page,
    with the data mappings in place and every further allocation failing."""
    code_base, data = layout
    img = VdsoImage(name="skipcheck", text=text, symbols={"insn": insn_addr - code_base},
                    rng_data_offset=RNG_DATA_OFFSET_6_15, base=code_base, rng_data_source="skipcheck")
    k = Kernel(img, memory_pages=64, profile=_profile())
    # No process stack (_stack=False, as for a fork child): the runs set rsp
    # themselves, and the 16-page stack VMA would double the set-up time.
    m = Machine(k, droppable_oom=policy, livelock_limit=LIVELOCK, name="skipcheck", _stack=False)
    rw = F.PROT_READ | F.PROT_WRITE
    anon = F.MAP_PRIVATE | F.MAP_ANONYMOUS | F.MAP_FIXED
    drop = F.MAP_DROPPABLE | F.MAP_ANONYMOUS | F.MAP_FIXED
    for off, n, fl in ((SRC_OFF, PAGE_SIZE, anon), (PRE_OFF, PAGE_SIZE, anon), (DROP_OFF, 2 * PAGE_SIZE, drop),
                       (SDROP_OFF, 2 * PAGE_SIZE, drop)):
        r = m.mm.mmap(data + off, n, rw, fl, -1, 0)
        if r != data + off:
            raise EmulationError(f"skipcheck: mmap at {data + off:#x} failed ({r})")
    m.sync()
    for a in (data + SRC_OFF, data + PRE_OFF, data + SDROP_OFF + PAGE_SIZE):
        m.user_write(a, data_pattern(a, PAGE_SIZE))
    # the present pages are in: from here on every allocation fails
    m.kernel.phys.fail_allocations(persistent=True)
    return m


def cpu_state(m: Machine) -> dict[str, object]:
    """The registers a run must leave alone (rflags: the status flags and DF)."""
    uc = m.uc
    st = {r: uc.reg_read(getattr(X, f"UC_X86_REG_{r.upper()}")) for r in GPR64}
    st["rflags"] = uc.reg_read(X.UC_X86_REG_RFLAGS) & 0xCD5
    st["fs_base"] = uc.reg_read(X.UC_X86_REG_FS_BASE)
    st["gs_base"] = uc.reg_read(X.UC_X86_REG_GS_BASE)
    for i in range(16):
        st[f"xmm{i}"] = uc.reg_read(getattr(X, f"UC_X86_REG_XMM{i}"))
    for i in range(8):
        st[f"st{i}"] = uc.reg_read(getattr(X, f"UC_X86_REG_FP{i}"))
    st["mxcsr"] = uc.reg_read(X.UC_X86_REG_MXCSR)
    st["fpcw"] = uc.reg_read(X.UC_X86_REG_FPCW)
    st["fpsw"] = uc.reg_read(X.UC_X86_REG_FPSW)
    st["fptag"] = uc.reg_read(X.UC_X86_REG_FPTAG)
    return st


def set_cpu(m: Machine, regs: dict[str, int], rip: int, fs_base: int = FS_BASE, gs_base: int = GS_BASE) -> None:
    """``regs`` by name, every other register from its pattern, rip."""
    uc = m.uc
    for r in GPR64:
        uc.reg_write(getattr(X, f"UC_X86_REG_{r.upper()}"), regs.get(r, gpr_pattern(r)))
    uc.reg_write(X.UC_X86_REG_RFLAGS, 0x2C7)         # CF PF ZF SF set, DF clear
    uc.reg_write(X.UC_X86_REG_FS_BASE, fs_base)
    uc.reg_write(X.UC_X86_REG_GS_BASE, gs_base)
    uc.reg_write(X.UC_X86_REG_MXCSR, 0x1F80)
    uc.reg_write(X.UC_X86_REG_FPCW, 0x037F)
    for i in range(16):
        uc.reg_write(getattr(X, f"UC_X86_REG_XMM{i}"), xmm_pattern(i))
    for i in range(8):
        uc.reg_write(getattr(X, f"UC_X86_REG_FP{i}"), (mm_pattern(i), 0xFFFF))
    uc.reg_write(X.UC_X86_REG_RIP, rip)


@dataclass
class OomMachine:
    """A Machine running user code against a droppable page under persistent
    OOM.  Addresses (HIGH layout, or LOW with low=True: everything < 4 GiB):

      code          the first byte of the code (an int3 follows it)
      oom_page      droppable, not present: every write there needs an allocation, which fails
      present_page  an anonymous page right below oom_page, present, filled with a pattern
      source_page   a present, readable page (data_pattern)
      stack_oom     a droppable "stack" page, not present (stack_oom + PAGE_SIZE is present)
    """
    machine: Machine
    code: int
    oom_page: int
    present_page: int
    source_page: int
    stack_oom: int
    fs_base: int = FS_BASE
    gs_base: int = GS_BASE

    def run(self, regs: dict[str, int] | None = None, budget: int = 100_000) -> CallResult:
        """Set the registers (others get gpr_pattern values) and run from
        ``code`` until the trailing int3 (outcome "signal"), a livelock, a
        real signal or the budget; returns the CallResult."""
        m = self.machine
        set_cpu(m, dict(regs or {}), self.code, self.fs_base, self.gs_base)
        ctx = CallContext(result=CallResult(size=0, process=m.name), rip=self.code, budget=budget)
        m.run(ctx)
        return ctx.result

    def close(self) -> None:
        self.machine.close()


def oom_machine(code: str | bytes, policy: str = "skip", low: bool = False) -> OomMachine:
    """Assemble ``code`` (keystone, Intel syntax, several lines allowed) or
    take its bytes, and build an OomMachine around it."""
    if policy not in POLICIES:
        raise UsageError(f"unknown policy {policy!r} (expected skip or retry)")
    layout = LOW if low else HIGH
    addr = layout[0] + INSN_OFF
    raw = bytes(code) if isinstance(code, (bytes, bytearray)) else assemble_body(code, addr)
    if len(raw) + INSN_OFF + 1 > PAGE_SIZE:
        raise UsageError(f"{len(raw)} bytes of code: more than a page")
    m = new_machine(layout, code_page(addr, raw, None), addr, policy)
    data = layout[1]
    return OomMachine(m, addr, data + DROP_OFF, data + PRE_OFF, data + SRC_OFF, data + SDROP_OFF)
