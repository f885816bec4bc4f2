"""Windows of real vDSO code: a straight-line slice around every memory
access of every image the project ships (the host's vDSO when it has
__vdso_getrandom, builtin, builtin-v14), run with its operands pointed into
the data pages.

A window is up to WINDOW instructions before the access and after it, cut at
the first jump, call, return or syscall (straight line only), copied byte for
byte to CODE_ADDR.  Registers are given values as the instructions are read
in order: the base and index of a memory operand that nothing in the window
wrote before get values that put the operand in a data page: the window's
access in a page in a faulting state (inside it or straddling into it),
every other access in a present page.  RIP-relative operands are re-aimed
the same way by patching their displacement (the vDSO's vdso_rng_data
references then read a data page).  A register the window moves before its
first use as an address starts in the middle of a present page; one it
loads from memory is the code's business: if that leaves the data pages,
both sides must agree on the signal.
"""
from __future__ import annotations

import random
from dataclasses import dataclass
from functools import lru_cache

from emulator.diffcheck.build import SequenceBuilder, patch_disp, value
from emulator.diffcheck.layout import FAULTING_STATES, GPRS, PAGE, data_page
from emulator.diffcheck.operands import Decoded, Mem, decode_all, solve
from emulator.diffcheck.placement import SPARE_PAGE, STACK_HOME, STACK_PAIR, TARGET_PAIR
from emulator.diffcheck.records import Sequence

WINDOW = 4
IMAGES = ("host", "builtin", "builtin-v14")
_NO_ACCESS = ("lea", "nop", "prefetch", "prefetchw", "prefetcht0", "prefetcht1", "prefetcht2",
              "prefetchnta", "endbr64", "clflush")


@dataclass(frozen=True)
class Window:
    image: str
    address: int                 # of the access, in the image
    insns: tuple[Decoded, ...]   # the slice, at image addresses
    center: int                  # index of the access in insns

    def text(self) -> str:
        return f"{self.image}+{self.address:#x}"


def image_names() -> list[str]:
    from vdso.elf_image import host_has_vgetrandom
    return [n for n in IMAGES if n != "host" or host_has_vgetrandom()]


@lru_cache(maxsize=None)
def image_windows(name: str) -> tuple[Window, ...]:
    from vdso.insn import reachable_insns
    from vdso.loader import load_image
    img = load_image(name)
    entries = [img.symbol(s) for s in ("__vdso_getrandom", "__arch_chacha20_blocks_nostack") if img.has_symbol(s)]
    reach = reachable_insns(bytes(img.text), img.base, entries)
    seq = [decode_all(reach[addr].raw, addr)[0] for addr in sorted(reach)]
    out = []
    for i, d in enumerate(seq):
        if not _mems(d) or d.op in _NO_ACCESS or d.control:
            continue
        lo = i
        while lo > 0 and i - lo < WINDOW and _joins(seq[lo - 1], seq[lo]):
            lo -= 1
        hi = i
        while hi + 1 < len(seq) and hi - i < WINDOW and _joins(seq[hi], seq[hi + 1]):
            hi += 1
        out.append(Window(name, d.address - img.base, tuple(seq[lo:hi + 1]), i - lo))
    return tuple(out)


def _mems(d: Decoded) -> tuple[Mem, ...]:
    """The memory operands, with push and pop's implicit stack slot."""
    if d.mems or d.op not in ("push", "pop"):
        return d.mems
    return (Mem(8, "rsp", None, 1, -8 if d.op == "push" else 0, None, d.op == "pop", d.op == "push"),)


def _joins(a: Decoded, b: Decoded) -> bool:
    """b follows a in a straight line."""
    return a.address + a.size == b.address and not a.control and not b.control


@lru_cache(maxsize=None)
def window_cases() -> tuple[tuple[Window, str, str], ...]:
    """Every window, with its access faulting on a page in every faulting
    state, inside the page and straddling into it."""
    out = []
    for name in image_names():
        for w in image_windows(name):
            for state in FAULTING_STATES:
                for where in ("inside", "straddle"):
                    out.append((w, state, where))
    return tuple(out)


def window_sequence(seed: int, index: int) -> Sequence:
    cases = window_cases()
    w, state, where = cases[index % len(cases)]
    rng = random.Random(f"{seed}:windows:{index}")
    b = SequenceBuilder("windows", index, seed, rng)
    b.regs["rflags"] = 0x202 | (rng.getrandbits(12) & 0x8D5)
    assigned: dict[str, int] = {}
    written: set[str] = set()
    code = bytearray()
    for k, d in enumerate(w.insns):
        raw = d.raw
        at = b.here + len(code)
        for mem in _mems(d):
            target = _target(b, rng, d, mem, k == w.center, state, where)
            if mem.base == "rip":
                raw = patch_disp(raw, d.disp_offset, d.disp_size, target - (at + len(raw)))
                continue
            if mem.segment in ("fs", "gs"):
                continue
            regs = [r for r in (mem.base, mem.index) if r]
            if any(r in written or (r in assigned and r != "rsp") for r in regs):
                continue
            if mem.base == "rsp" and "rsp" not in assigned:
                assigned["rsp"] = (target - mem.disp) & (1 << 64) - 1
                continue
            got = solve(mem, target, rng, assigned)
            if got:
                assigned.update(got)
        if d.op in ("push", "call", "pushfq", "pop", "popfq") and "rsp" not in assigned:
            assigned["rsp"] = STACK_HOME
        written |= set(d.writes)
        code += raw
    b.code += code
    b.lines += [d.text for d in w.insns]
    # Registers the window moves before using them as an address (add rdx, 8;
    # mov [rdx - 8], rdi) start near the middle of the spare page, so that
    # the moved address stays in the data pages.
    for d in w.insns:
        for mem in _mems(d):
            if mem.base and mem.base not in ("rip", "rsp"):
                assigned.setdefault(mem.base, data_page(SPARE_PAGE) + PAGE // 2)
            if mem.index:
                assigned.setdefault(mem.index, rng.randrange(0, 8))
    b.regs.update(assigned)
    b.regs.setdefault("rsp", STACK_HOME)
    for r in GPRS:
        b.regs.setdefault(r, value(rng))
    b.note = f"{w.text()}: {w.insns[w.center].text} [{state if where == 'inside' else 'straddle present|' + state}]"
    b.tags = {"access": w.insns[w.center].text, "window": w.text(), "placement": where, "state": state}
    return b.finish()


def _target(b: SequenceBuilder, rng, d: Decoded, mem, center: bool, state: str, where: str) -> int:
    """An address for a memory operand: the window's access faults, the others do not."""
    size = min(d.access_size, PAGE // 2)
    align = d.align
    if not center:
        page = STACK_PAIR[1] if mem.base == "rsp" else SPARE_PAGE
        return data_page(page) + rng.randrange(0, (PAGE // 2 - size) // align) * align
    pair = STACK_PAIR if mem.base == "rsp" else TARGET_PAIR
    if where == "straddle" and size > 1 and align < size:
        b.pages[pair[1]] = state
        back = rng.randrange(1, size) // align * align or align
        return data_page(pair[1]) - back
    page = pair[1]
    b.pages[page] = state
    return data_page(page) + rng.randrange(0, (PAGE - size) // align + 1) * align
