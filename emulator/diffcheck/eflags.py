"""Which arithmetic flags are architecturally defined at each point of a
sequence.

The CPU leaves some flags undefined after some instructions (Intel SDM vol.
1 appendix A, vol. 2 "Flags Affected"; AMD APM vol. 3 appendix E): AF after
a shift or a logical operation, OF after a multi-bit shift or rotate, SF ZF
AF PF after mul, everything after div, ...  This CPU sets them one way,
Unicorn another, and no program may rely on either: such a flag is masked
out of the comparison, and the generators only put consumers after flags
that are defined.  A flag that is undefined stays so until an instruction
defines it again.

The tables are facts about the ISA; the values are never predicted here,
only whether the CPU promises one.
"""
from __future__ import annotations

from emulator.diffcheck.layout import FLAG_BITS
from emulator.diffcheck.operands import Decoded, decode_all

C, P, A, Z, S, O = (1 << FLAG_BITS[f] for f in ("CF", "PF", "AF", "ZF", "SF", "OF"))
ALL = C | P | A | Z | S | O

# mnemonic -> (flags written with a defined value, flags left undefined)
_FIXED = {}
for _m in ("add", "adc", "sub", "sbb", "cmp", "neg", "cmpxchg", "xadd", "cmpsb", "cmpsw", "cmpsd", "cmpsq",
           "scasb", "scasw", "scasd", "scasq", "popfq", "popf"):
    _FIXED[_m] = (ALL, 0)
for _m in ("inc", "dec"):
    _FIXED[_m] = (ALL & ~C, 0)
for _m in ("and", "or", "xor", "test", "andn"):
    _FIXED[_m] = (C | O | S | Z | P, A)
for _m in ("bt", "bts", "btr", "btc"):
    _FIXED[_m] = (C, O | S | A | P)
for _m in ("bsf", "bsr"):
    _FIXED[_m] = (Z, C | O | S | A | P)
for _m in ("lzcnt", "tzcnt"):
    _FIXED[_m] = (C | Z, O | S | A | P)
for _m in ("mul", "imul"):
    _FIXED[_m] = (C | O, S | Z | A | P)
for _m in ("div", "idiv"):
    _FIXED[_m] = (0, ALL)
for _m in ("popcnt", "comisd", "ucomisd", "comiss", "ucomiss", "ptest"):
    _FIXED[_m] = (ALL, 0)
for _m in ("clc", "stc", "cmc"):
    _FIXED[_m] = (C, 0)
_FIXED["sahf"] = (S | Z | A | P | C, 0)
for _m in ("cmpxchg8b", "cmpxchg16b"):
    _FIXED[_m] = (Z, 0)
_SHIFTS = {"shl", "sal", "shr", "sar"}
_ROTATES = {"rol", "ror"}
_RC = {"rcl", "rcr"}
_DOUBLE = {"shld", "shrd"}

# what a consumer reads
_CC = {"o": O, "no": O, "b": C, "c": C, "nae": C, "ae": C, "nb": C, "nc": C, "e": Z, "z": Z, "ne": Z, "nz": Z,
       "be": C | Z, "na": C | Z, "a": C | Z, "nbe": C | Z, "s": S, "ns": S, "p": P, "pe": P, "np": P, "po": P,
       "l": S | O, "nge": S | O, "ge": S | O, "nl": S | O, "le": Z | S | O, "ng": Z | S | O, "g": Z | S | O,
       "nle": Z | S | O}


def reads(op: str) -> int:
    """The arithmetic flags instruction `op` reads."""
    for prefix in ("set", "cmov", "j"):
        if op.startswith(prefix) and op[len(prefix):] in _CC:
            return _CC[op[len(prefix):]]
    if op in ("adc", "sbb", "rcl", "rcr", "cmc"):
        return C
    if op == "lahf":
        return S | Z | A | P | C
    if op in ("pushfq", "pushf"):
        return ALL
    return 0


def _operand_bits(d: Decoded) -> int:
    """Width in bits of the operand shifted or rotated."""
    return 8 * d.width if d.width else 32


def _count(d: Decoded, rcx: int | None) -> int | None:
    """The shift/rotate count as the CPU masks it, None when unknown."""
    ops = [o.strip() for o in d.op_str.split(",")]
    last = ops[-1] if len(ops) > 1 else "1"
    if last == "cl":
        if rcx is None:
            return None
        raw = rcx & 0xFF
    else:
        try:
            raw = int(last, 0)
        except ValueError:
            return None
    bits = _operand_bits(d)
    return raw & (0x3F if bits == 64 else 0x1F)


def effect(d: Decoded, rcx: int | None) -> tuple[int, int] | None:
    """(flags defined, flags undefined) after `d`; flags in neither keep their
    state.  None: unknown (all flags become undefined)."""
    op = d.op
    if op in _FIXED:
        return _FIXED[op]
    if op in _SHIFTS | _ROTATES | _RC | _DOUBLE:
        n = _count(d, rcx)
        if n is None:
            return None
        bits = _operand_bits(d)
        if n == 0:
            return (0, 0)           # a masked count of 0 affects no flag
        if op in _RC and bits in (8, 16) and n % (bits + 1) == 0:
            # rcl/rcr of 8/16 bits rotate by the masked count mod 9/17: by
            # nothing here, so CF keeps its value; OF is defined only for a
            # masked count of 1 (SDM vol. 2, RCL/RCR/ROL/ROR "Flags Affected").
            return (0, O)
        if op in _ROTATES | _RC:
            return (C | O, 0) if n == 1 else (C, O)
        if op in _DOUBLE and n > bits:
            return (0, ALL)
        if op in _SHIFTS and n > bits:
            return (S | Z | P, C | O | A)
        return (C | O | S | Z | P, A) if n == 1 else (C | S | Z | P, O | A)
    if "rflags" in d.writes:
        return None
    return (0, 0)


class FlagState:
    """Walks instructions in order; `undefined` is the mask of arithmetic
    flags no longer defined, `masks` the defined flags before each address."""

    def __init__(self, regs: dict[str, int], known_rcx: bool = True):
        self.undefined = 0
        self.rcx = regs.get("rcx") if known_rcx else None
        self.masks: dict[int, int] = {}
        self.by: dict[int, str] = {}        # flag bit -> the instruction that left it undefined

    def step(self, d: Decoded) -> None:
        self.masks.setdefault(d.address, ALL & ~self.undefined)
        eff = effect(d, self.rcx)
        if eff is None:
            defined, undefined = 0, ALL
        else:
            defined, undefined = eff
        self.undefined = (self.undefined & ~defined) | undefined
        for bit in (C, P, A, Z, S, O):
            if undefined & bit:
                self.by[bit] = d.text
            elif defined & bit:
                self.by.pop(bit, None)
        if "rcx" in d.writes:
            self.rcx = None

    def walk_to(self, code: bytes, address: int, stop: int) -> "FlagState":
        """Walk up to (not including) the instruction at `stop`."""
        for d in decode_all(code, address):
            if d.address == stop:
                break
            self.step(d)
        return self

    def walk(self, code: bytes, address: int) -> "FlagState":
        return self.run(decode_all(code, address))

    def run(self, decoded: list[Decoded]) -> "FlagState":
        for d in decoded:
            self.step(d)
        return self

    @property
    def defined(self) -> int:
        return ALL & ~self.undefined
