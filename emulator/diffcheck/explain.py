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
  split-xmm-load-at-a-fatal-fault
                    a 16-byte SSE load that straddles into a page it may not
                    read, when that fault ends the run (SIGSEGV): QEMU loads
                    the two halves straight into the register, so the first
                    8 bytes are there when the second half faults; the CPU
                    leaves the register alone.  A resolved fault restarts the
                    load and hides it.  Putting it right needs a hook on every
                    SSE load, the vDSOs' ChaCha loop included.

Undefined flags may come with any other entry: the flags part is explained
by the first, the rest by the second.

Entries are added here only with a measured reason and a check that covers
no more than that reason.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from emulator.diffcheck.build import EXIT
from emulator.diffcheck.compare import Difference
from emulator.diffcheck.eflags import FlagState
from emulator.diffcheck.layout import CODE_ADDR, DATA_ADDR, FLAG_BITS, PAGE
from emulator.diffcheck.operands import decode_at


@dataclass(frozen=True)
class Explanation:
    name: str
    reason: str
    # The reason for this difference's parts (undefined flags set apart), or
    # None: they are not (all) covered.
    why: Callable[[Difference, list[str]], str | None]


@dataclass(frozen=True)
class Explained:
    name: str
    reason: str             # the entry's reason, with what this difference shows


def _undefined_flags(d: Difference) -> str:
    seq = d.seq
    sig = d.native.signal
    stop = sig.rip if sig is not None and sig.rip is not None else CODE_ADDR + seq.exit_slot - len(EXIT)
    state = FlagState(seq.regs).walk_to(seq.code, CODE_ADDR, stop)
    left = sorted({state.by.get(1 << FLAG_BITS[f], "?") for f in _undefined_bits(d)})
    return f"{' '.join(_undefined_bits(d))} undefined after {'; '.join(left)}"


def _undefined_bits(d: Difference) -> list[str]:
    return [b for p in d.parts if p.startswith("rflags-undefined[") for b in p[len("rflags-undefined["):-1].split(",")]


def _refused_66h(d: Difference, parts: list[str]) -> str | None:
    if parts != ["refused"] or "66h-prefixed near" not in d.details[0]:
        return None
    return d.details[0].split(": ", 2)[-1]


# Loads of a whole xmm register from memory (no arithmetic): QEMU 5 moves the
# two 8-byte halves straight into the register (gen_ldo_env_A0).
_XMM_LOADS = {"movdqu", "movups", "movupd", "lddqu", "movdqa", "movaps", "movapd", "movntdqa"}


def _split_xmm_load(d: Difference, parts: list[str]) -> str | None:
    """A 16-byte load straddling into a page it may not read, and the fault
    ends the run: the CPU leaves the register alone; Unicorn has already
    written the first 8 bytes into it.  (A fault that is resolved restarts
    the load, which then writes the whole register.)  Covered only when the
    register differs in exactly those 8 bytes and they are the memory's."""
    sig, emu_sig = d.native.signal, d.emulated.signal
    if parts != ["xmm"] or sig is None or emu_sig is None or sig.name != "SIGSEGV" or emu_sig.rip != sig.rip:
        return None
    off = sig.rip - CODE_ADDR
    ins = decode_at(bytes(d.seq.code[off:off + 15]), sig.rip)
    if ins is None or ins.op not in _XMM_LOADS or len(ins.mems) != 1 or not ins.op_str.startswith("xmm"):
        return None
    reg = int(ins.op_str.split(",")[0][3:])
    if [i for i in range(16) if d.native.xmm[i] != d.emulated.xmm[i]] != [reg]:
        return None
    mem = ins.mems[0]
    g = d.native.gprs                   # the registers as the load found them
    ea = (mem.disp + (g.get(mem.base, 0) if mem.base else 0) + (g.get(mem.index, 0) * mem.scale if mem.index else 0)) \
        & (1 << 64) - 1
    if (ea & (PAGE - 1)) <= PAGE - 16:
        return None                     # not split across pages
    page = (ea - DATA_ADDR) // PAGE
    if not 0 <= page < len(d.emulated.pages) or (ea & (PAGE - 1)) > PAGE - 8:
        return None
    low = d.emulated.pages[page][ea & (PAGE - 1):(ea & (PAGE - 1)) + 8]
    nat, emu = d.native.xmm[reg], d.emulated.xmm[reg]
    if emu >> 64 != nat >> 64 or (emu & (1 << 64) - 1) != int.from_bytes(low, "little"):
        return None
    return f"xmm{reg}: the first 8 bytes of '{ins.text}' at {ea:#x}, loaded before its second half faulted"


REGISTRY = (
    Explanation("undefined-flags", "flags the SDM leaves undefined: this CPU and QEMU 5 set different values",
                lambda d, parts: "" if not parts else None),
    Explanation("refused-66h-near", "66h near call/ret: 2-byte operand on this CPU (AMD), 8 in Unicorn 2.1.4; "
                "refused before it runs", _refused_66h),
    Explanation("split-xmm-load-at-a-fatal-fault",
                "a 16-byte load faulting on its second page ends the run: Unicorn 2.1.4 has written the first "
                "8 bytes to the register; only a hook on every SSE load (the vDSOs' too) could undo it",
                _split_xmm_load),
)


def explain(d: Difference) -> Explained | None:
    """The entry that covers all of the difference (flags left undefined
    where the run ended may come with any of them), or None."""
    parts = [p for p in d.parts if not p.startswith("rflags-undefined[")]
    undefined = _undefined_flags(d) if len(parts) < len(d.parts) else ""
    for e in REGISTRY:
        why = e.why(d, parts)
        if why is not None:
            return Explained(e.name, "; ".join(w for w in (why, undefined) if w))
    return None
