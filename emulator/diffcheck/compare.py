"""The two final states of a sequence, compared, and the difference named.

A difference is described by what differs, in this order, each part a
short word the report groups by:

  error           the emulator could not run the sequence at all
  refused         the emulator refused it before it ran: an instruction
                  Unicorn 2.1.4 cannot run faithfully (a 66h near call...)
  ending[...]     the two sides stopped at different places or for different
                  reasons (native SIGSEGV/SI_KERNEL, emulated end...); what
                  differs after that is a consequence, kept in the details only
  signal[...]     the same signal at the same rip, different si_code or si_addr
  si_code?        the same signal, but the emulator records no si_code
  faults[...]     the faults taken and resolved (rip, address, access, error
                  code): read-then-write, extra, missing, address, error-code
  rflags[CF,AF]   arithmetic flags (and DF), by bit
  rflags-undefined[OF]  flags the CPU leaves undefined where the run ended
                  (eflags.py): never an error, explained by explain.py
  gpr             general registers
  xmm, mxcsr      SSE state
  memory          data page bytes

The class of a difference is the list of its parts ("rflags gpr"; which
flag bits is counted separately); the details say which registers, bits and
bytes, with both values.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from emulator.diffcheck.build import EXIT
from emulator.diffcheck.layout import (CODE_ADDR, FLAG_BITS, FLAGS_MASK, GPRS, PAGE, SILENT_STATES, data_page,
                                       flag_names)
from emulator.diffcheck.records import RunState, Sequence, Signal, si_code_name


@dataclass
class Difference:
    seq: Sequence
    native: RunState
    emulated: RunState
    parts: list[str] = field(default_factory=list)
    details: list[str] = field(default_factory=list)

    @property
    def klass(self) -> str:
        """What differs, without the flag bits (those are counted apart)."""
        return " ".join(p.split("[")[0] if p.startswith("rflags") else p for p in self.parts)

    @property
    def flag_bits(self) -> list[str]:
        """The flags that differ (undefined ones included)."""
        return [b for p in self.parts if p.startswith("rflags") for b in p[p.index("[") + 1:-1].split(",")]

    def as_dict(self) -> dict:
        return {"class": self.klass, "details": self.details, "sequence": self.seq.as_dict(),
                "native": self.native.as_dict(), "emulated": self.emulated.as_dict(),
                "reproduce": self.seq.reproduce()}


def compare(seq: Sequence, native: RunState, emulated: RunState) -> Difference | None:
    d = Difference(seq, native, emulated)
    if emulated.error:
        # A refusal is the emulator saying, before the code runs, that it
        # cannot run it faithfully (emulator/instrument.py); anything else
        # is a failure of the emulator.
        d.parts.append("refused" if emulated.error.startswith("UnfaithfulInstruction") else "error")
        d.details.append(f"emulator: {emulated.error}")
        return d
    ended_apart = _signals(d, native.signal, emulated.signal)
    parts_before = len(d.parts)
    _faults(d, seq, native, emulated)
    mask = _flag_mask(seq, native)
    diff = (native.rflags ^ emulated.rflags) & mask
    if diff:
        d.parts.append(f"rflags[{','.join(flag_names(diff))}]")
        d.details.append(f"rflags native {native.rflags & mask:#x} emulated {emulated.rflags & mask:#x}"
                         f" ({' '.join(flag_names(diff))}; compared {' '.join(flag_names(mask))})")
    undefined = (native.rflags ^ emulated.rflags) & FLAGS_MASK & ~mask
    if undefined:
        # Flags the CPU leaves undefined where the run stopped: any value is
        # right, but the difference is named (explain.py says which
        # instruction left them so).
        d.parts.append(f"rflags-undefined[{','.join(flag_names(undefined))}]")
        d.details.append(f"undefined flags native {native.rflags & undefined:#x} emulated "
                         f"{emulated.rflags & undefined:#x} ({' '.join(flag_names(undefined))})")
    regs = [r for r in GPRS if native.gprs.get(r) != emulated.gprs.get(r)]
    if regs:
        d.parts.append("gpr")
        d.details += [f"{r} native {native.gprs.get(r, 0):#x} emulated {emulated.gprs.get(r, 0):#x}" for r in regs]
    xmm = [i for i in range(16) if native.xmm[i] != emulated.xmm[i]]
    if xmm:
        d.parts.append("xmm")
        d.details += [f"xmm{i} native {native.xmm[i]:#034x} emulated {emulated.xmm[i]:#034x}" for i in xmm]
    if native.mxcsr != emulated.mxcsr:
        d.parts.append("mxcsr")
        d.details.append(f"mxcsr native {native.mxcsr:#x} emulated {emulated.mxcsr:#x}")
    mem = _memory(native.pages, emulated.pages)
    if mem:
        d.parts.append("memory")
        d.details += mem
    if ended_apart:
        # The two ran different instructions from the point where one of them
        # stopped: the state differences that follow are consequences, kept in
        # the details; the class is the ending.
        del d.parts[parts_before:]
    return d if d.parts else None


def _flag_mask(seq: Sequence, native: RunState) -> int:
    """The flags to compare where the native run stopped: DF, and the
    arithmetic flags the CPU defines there (eflags.py)."""
    if native.signal is not None and native.signal.rip is not None:
        at = native.signal.rip
    else:
        at = CODE_ADDR + seq.exit_slot - len(EXIT)
    defined = seq.flag_masks.get(at, FLAGS_MASK) if seq.flag_masks else FLAGS_MASK
    return (defined | 1 << FLAG_BITS["DF"]) & FLAGS_MASK


def _end(sig: Signal | None) -> str:
    if sig is None:
        return "end"
    if sig.si_code is None:
        return sig.name
    return f"{sig.name}/{si_code_name(sig.name, sig.si_code)}"


def _signals(d: Difference, n: Signal | None, e: Signal | None) -> bool:
    """Compare the endings; True when the two sides did not stop at the same
    place for the same reason."""
    if n is None and e is None:
        return False
    if n is None or e is None or n.name != e.name or (e.rip is not None and n.rip != e.rip):
        d.parts.append(f"ending[native {_end(n)}, emulated {_end(e)}]")
        d.details.append(f"end: native {n.text() if n else 'reached the end'}; "
                         f"emulated {e.text() if e else 'reached the end'}")
        return True
    what = []
    if e.address is not None and n.address != e.address:
        what.append("si_addr")
    if e.si_code is not None and n.si_code != e.si_code:
        what.append("si_code")
    if what:
        d.parts.append(f"signal[{','.join(what)}]")
        d.details.append(f"{n.name} differs in {', '.join(what)}: native {n.text()}; emulated {e.text()}")
    elif e.si_code is None:
        # Same signal at the same place, but the emulator keeps no si_code to compare.
        d.parts.append("si_code?")
        d.details.append(f"{n.name}: native {n.text()}; the emulator records no si_code")
    return False


def _faults(d: Difference, seq: Sequence, native: RunState, emulated: RunState) -> None:
    silent = {data_page(i) for i, s in enumerate(seq.pages) if s in SILENT_STATES}
    nat = [f for f in native.faults if (f.address & ~(PAGE - 1)) not in silent or f.access != "write"]
    if [_key(f) for f in nat] == [_key(f) for f in emulated.faults]:
        return
    d.parts.append(f"faults[{','.join(fault_kinds(nat, emulated.faults))}]")
    d.details.append(f"faults native [{', '.join(f.text() for f in nat)}] "
                     f"emulated [{', '.join(f.text() for f in emulated.faults)}]")


def _key(f) -> tuple:
    return (f.rip, f.address, f.access, f.error_code)


def fault_kinds(nat: list, emu: list) -> list[str]:
    """How two fault lists differ, in words:
      read-then-write  the emulator took a read fault, then a write fault, at
                       an address where the CPU took one write fault (a
                       read-modify-write faults as a write on the CPU)
      extra            an emulated fault the CPU did not take
      missing          a fault the CPU took and the emulator did not
      address          the same instruction and access, another address
      error-code       the same fault, another error code"""
    kinds = []
    emu = list(emu)
    merged = []
    k = 0
    while k < len(emu):
        f = emu[k]
        nxt = emu[k + 1] if k + 1 < len(emu) else None
        if f.access == "read" and nxt is not None and nxt.access == "write" and (nxt.rip, nxt.address) == \
                (f.rip, f.address) and any((n.rip, n.address, n.access) == (f.rip, f.address, "write") for n in nat):
            kinds.append("read-then-write")
            merged.append(("merged", nxt))
            k += 2
            continue
        merged.append(("plain", f))
        k += 1
    left = list(nat)
    unmatched = []
    for how, f in merged:
        hit = next((n for n in left if (n.rip, n.address, n.access) == (f.rip, f.address, f.access)), None)
        if hit is None:
            unmatched.append(f)
            continue
        left.remove(hit)
        if how == "plain" and hit.error_code != f.error_code:
            kinds.append("error-code")
    for f in unmatched:
        twin = next((n for n in left if (n.rip, n.access) == (f.rip, f.access)), None)
        if twin is not None:
            left.remove(twin)
            kinds.append("address")
        else:
            kinds.append("extra")
    kinds += ["missing"] * len(left)
    return list(dict.fromkeys(kinds)) or ["order"]


def _memory(a: list[bytes], b: list[bytes]) -> list[str]:
    out = []
    for i, (x, y) in enumerate(zip(a, b)):
        if x == y:
            continue
        k = 0
        runs = []
        while k < PAGE:
            if x[k] != y[k]:
                j = k
                while j < PAGE and x[j] != y[j]:
                    j += 1
                runs.append((k, j))
                k = j
            k += 1
        for lo, hi in runs[:4]:
            show = slice(lo, min(hi, lo + 16))
            out.append(f"page {i} +{lo:#x}..+{hi:#x}: native {x[show].hex()} emulated {y[show].hex()}")
        if len(runs) > 4:
            out.append(f"page {i}: {len(runs) - 4} more differing runs")
    return out
