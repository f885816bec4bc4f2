"""Names for addresses in a stepped process, and addresses for names.

Code addresses are named from the image's symbols (plus `sub_OFF` for direct
call targets the image does not name: the host vDSO exports only its entry
points).  Data addresses are named after what the libc-like caller mapped:
the state(s), the buffer, the stack, vdso_rng_data and the return sentinel.
Address expressions (`state+0x89`, `$rsp-8`, `*__vdso_getrandom+4`) are
evaluated here too, so the stepper, `watch` and the GDB stub's `monitor`
agree on what a name means.
"""
from __future__ import annotations

import re
from typing import Callable

from emulator.debug.identify import identified_symbols
from emulator.errors import UsageError
from emulator.kernel import SENTINEL_PAGE
from emulator.machine import STACK_SIZE, STACK_TOP
from mm.flags import PAGE_SIZE
from vdso import abi
from vdso.insn import reachable_insns

U64 = (1 << 64) - 1
GPR_ORDER = ["rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rbp", "rsp", "r8", "r9", "r10", "r11",
             "r12", "r13", "r14", "r15"]
REG_NAMES = set(GPR_ORDER) | {"rip", "eflags", "rflags", "fs_base", "gs_base", "pc", "sp", "fp"}
REG_ALIAS = {"pc": "rip", "sp": "rsp", "fp": "rbp", "eflags": "rflags"}

# Fields of the vDSO's structs (include/vdso/getrandom.h, datapage.h): name -> (offset, size)
STATE_FIELDS = {"batch": (abi.STATE_BATCH, abi.STATE_BATCH_LEN), "key": (abi.STATE_KEY, abi.STATE_KEY_LEN),
                "generation": (abi.STATE_GENERATION, 8), "pos": (abi.STATE_POS, 1), "in_use": (abi.STATE_IN_USE, 1)}
RNG_FIELDS = {"generation": (abi.RNG_GENERATION, 8), "is_ready": (abi.RNG_IS_READY, 1)}

# Labels that are not areas a user would call "the X mapping".
_NOT_AREAS = ("vdso_rng_data", "faultpath_caller")


class Symbols:
    """Both directions of naming for one process (image + caller layout)."""

    def __init__(self, image, caller, entry: int):
        self.image = image
        self.labels = _data_labels(image, caller)
        self.code = _code_symbols(image, entry)          # sorted (address, name)

    # ------------------------------------------------------------------ address -> name
    def symbolize(self, addr: int) -> str:
        """`<name+off>` (code offsets in decimal as gdb prints them, data in hex), or ''."""
        img = self.image
        if img.base <= addr < img.base + img.size:
            best = None
            for a, name in self.code:
                if a > addr:
                    break
                best = (a, name)
            if best is None:
                return ""
            off = addr - best[0]
            return f"<{best[1]}+{off}>" if off else f"<{best[1]}>"
        for lo, hi, name in self.labels:
            if lo <= addr < hi:
                off = addr - lo
                return f"<{name}+{off:#x}>" if off else f"<{name}>"
        return ""

    def where(self, addr: int) -> str:
        s = self.symbolize(addr)
        return f"{addr:#x} {s}" if s else f"{addr:#x}"

    def function_at(self, addr: int) -> tuple[int, str] | None:
        """(start, name) of the code symbol containing addr."""
        best = None
        for a, name in self.code:
            if a > addr:
                break
            best = (a, name)
        return best

    def area_name(self, start: int, end: int) -> str:
        """The caller's name for a mapping [start, end), if it holds one of its areas."""
        for lo, _hi, name in self.labels:
            if start <= lo < end and name not in _NOT_AREAS:
                return name
        return ""

    def kernel_names(self) -> dict[int, str]:
        """VMA start -> the name /proc/PID/maps gives it ([stack])."""
        return {STACK_TOP - STACK_SIZE: "[stack]"}

    def object_at(self, expr: str, read_reg: Callable[[str], int]) -> tuple[int, int]:
        """(address, size) of `expr`: a struct field (`state.in_use`,
        `vdso_rng_data.generation`), a named object (`state`: 144 bytes), or an
        address expression (1 byte)."""
        base, dot, fld = expr.strip().partition(".")
        if dot:
            fields = STATE_FIELDS if base.startswith("state") else RNG_FIELDS if base == "vdso_rng_data" else None
            if fields is None or fld not in fields:
                known = ", ".join(STATE_FIELDS if fields is STATE_FIELDS else RNG_FIELDS) if fields else ""
                raise UsageError(f"{expr}: no field {fld!r}" + (f" (fields: {known})" if known else ""))
            off, size = fields[fld]
            return self.eval_addr(base, read_reg) + off, size
        name = expr.strip().lstrip("*")
        for lo, hi, lab in self.labels:
            if lab == name:
                return lo, hi - lo
        return self.eval_addr(expr, read_reg), 1

    def names(self) -> list[str]:
        """Every name an address expression accepts (for completion)."""
        out = {name for _, name in self.code} | {name for _, _, name in self.labels}
        out |= set(self.image.symbols)
        return sorted(n for n in out if not n.startswith("__fp_"))

    # ------------------------------------------------------------------ name -> address
    def lookup(self, name: str) -> int | None:
        img = self.image
        if img.has_symbol(name):
            return img.symbol(name)
        for a, sym in self.code:
            if sym == name:
                return a
        for lo, _, lab in self.labels:
            if lab == name:
                return lo
        return None

    def eval_addr(self, expr: str, read_reg: Callable[[str], int]) -> int:
        """ADDR | SYMBOL[+-OFF] | $reg[+-OFF] | state/buffer/...; a leading `*` is allowed."""
        s = expr.strip().lstrip("*").strip()
        if not s:
            raise UsageError("an address is needed")
        tokens = re.findall(r"[+-]|[^+\-\s]+", s.replace(" ", ""))
        total = 0
        sign = 1
        expect_term = True
        for t in tokens:
            if t in "+-":
                if expect_term:
                    if t == "-":
                        sign = -sign
                else:
                    sign = 1 if t == "+" else -1
                    expect_term = True
                continue
            if not expect_term:
                raise UsageError(f"bad address expression {expr!r}")
            total += sign * self._term(t, read_reg)
            sign = 1
            expect_term = False
        if expect_term:
            raise UsageError(f"incomplete address expression {expr!r}")
        return total & U64

    def _term(self, t: str, read_reg: Callable[[str], int]) -> int:
        name = t[1:] if t.startswith("$") else t
        if re.fullmatch(r"0x[0-9a-fA-F]+|\d+", name):
            v = int(name, 0)
            if v > U64:
                raise UsageError(f"{t}: wider than 64 bits")
            return v
        low = name.lower()
        if low in REG_NAMES:
            return read_reg(REG_ALIAS.get(low, low))
        a = self.lookup(name)
        if a is None:
            raise UsageError(f"no symbol, register or number {t!r}")
        return a


def _data_labels(image, caller) -> list[tuple[int, int, str]]:
    out = []
    for i, st in enumerate(caller.states):
        out.append((st, st + caller.state_size, "state" if i == 0 else f"state{i}"))
    out.append((caller.buffer, caller.buffer + caller.buffer_size, "buffer"))
    out.append((caller.scratch, caller.scratch + PAGE_SIZE, "scratch"))
    out.append((STACK_TOP - STACK_SIZE, STACK_TOP, "stack"))
    rng = image.rng_data_addr
    out.append((rng, rng + 16, "vdso_rng_data"))
    out.append((SENTINEL_PAGE, SENTINEL_PAGE + PAGE_SIZE, "faultpath_caller"))   # the code calls return to
    return out


def _code_symbols(image, entry: int) -> list[tuple[int, str]]:
    def rank(name: str) -> tuple:
        # Prefer the name a kernel developer reads in the source: __vdso_ entry
        # points, then __arch_ routines; the weak aliases (getrandom) last.
        return (not name.startswith("__vdso_"), not name.startswith("__arch_"),
                name.startswith("__vgetrandom"), name)
    by_addr: dict[int, str] = {}
    for name, off in sorted(image.symbols.items(), key=lambda kv: rank(kv[0])):
        if name.startswith("__fp_"):
            continue
        by_addr.setdefault(image.base + off, name)
    # Functions the image does not name, identified by what they compute
    # (the host vDSO exports only its entry points).
    for name, off in identified_symbols(image).items():
        by_addr.setdefault(image.base + off, name)
    # Any other direct call target without a symbol.
    try:
        insns = reachable_insns(image.text, image.base, [entry])
    except Exception:   # naming is cosmetic; never fail a session on it
        insns = {}
    for ins in insns.values():
        if ins.mnemonic == "call" and ins.op_str.startswith("0x"):
            t = int(ins.op_str, 16)
            if t not in by_addr and image.base <= t < image.base + image.size:
                by_addr[t] = f"sub_{t - image.base:x}"
    return sorted(by_addr.items())
