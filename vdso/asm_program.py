"""Assembling a parsed program with keystone, and finding what it did where.

Keystone reports neither line numbers nor a symbol table, so both are
recovered here.

How offsets are found: before every top-level statement the program gets a
marker label `__fp_ln_<n>:`, and after the code `.quad` references to all
markers and to every exported label.  The trailing quads are the absolute
addresses (read back, then cut off); the code in front of them is checked to
be byte-identical to an assembly without markers.  Statements inside
.macro/.rept/.irp/.if blocks get no marker of their own: the block's first
line stands for them.  Exported labels are all labels except GAS-local `.L*`
ones (labels only defined inside an .if block are probed one by one and kept
if they exist).

How a failing line is found: each top-level statement (a whole block counts
as one) is assembled on its own, with stub labels for every label defined
elsewhere, macro definitions and assignments in front; the first one that
fails is the culprit (inside a failing block, its inner lines are tried the
same way).  If no statement fails alone (e.g. a label defined twice), the
shortest failing prefix of the program is searched by bisection.

`vdso_rng_data`: keystone's sym_resolver gets RIP-relative references wrong,
so the program defines it as `<start label> - distance`, a label-relative
symbol keystone resolves exactly, addends and trailing immediates included.
"""
from __future__ import annotations

import re

from vdso import keystone_run
from vdso.asm_source import NON_SYMBOLS, REG_RE, SourceLine
from vdso.errors import AssemblyError
from vdso.image import RNG_DATA_OFFSET_6_15, VDSO_BASE
from vdso.keystone_run import KsFailure

RNG_DATA_SYMBOL = "vdso_rng_data"

_MARK = "__fp_ln_"
_BASE_LABEL = "__fp_base"


class Program:
    """A list of SourceLines assembled at `base`; `vdso_rng_data` is where
    the 6.15+ layout puts it for an image whose first byte is at VDSO_BASE."""

    def __init__(self, lines: list[SourceLine], base: int, image_base: int = VDSO_BASE):
        self.lines = lines
        self.base = base
        defined = {n for ln in lines for n in ln.labels + ln.assigns}
        uses_rng = any(re.search(rf"(?<![\w.$]){RNG_DATA_SYMBOL}(?![\w.$])", ln.code)
                       for ln in lines)
        self.prologue = [f"{_BASE_LABEL}:"]
        if uses_rng and RNG_DATA_SYMBOL not in defined:
            rng = image_base + RNG_DATA_OFFSET_6_15 - base
            sign = "-" if rng < 0 else "+"
            self.prologue.append(f"{RNG_DATA_SYMBOL} = {_BASE_LABEL} {sign} {abs(rng):#x}")

    # -- text generation ---------------------------------------------------

    def plain_text(self) -> str:
        return "\n".join(self.prologue + [ln.code for ln in self.lines]) + "\n"

    def marked_text(self, labels: list[str]) -> tuple[str, list[int]]:
        out, marked = list(self.prologue), []
        for i, ln in enumerate(self.lines):
            if ln.depth == 0 and ln.kind != "blank":
                out.append(f"{_MARK}{i}:")
                marked.append(i)
            out.append(ln.code)
        out += [f".quad {_MARK}{i}" for i in marked]
        out += [f".quad {name}" for name in labels]
        return "\n".join(out) + "\n", marked

    def units(self) -> list[tuple[int, int]]:
        """Top-level statements as (first, last) line indexes; a block is one."""
        units, i, n = [], 0, len(self.lines)
        while i < n:
            ln = self.lines[i]
            if ln.kind == "blank" or ln.depth != 0:
                i += 1
                continue
            j = i
            if ln.kind == "open":
                j = i + 1
                while j < n and not (self.lines[j].kind == "close" and self.lines[j].depth == 1):
                    j += 1
            units.append((i, min(j, n - 1)))
            i = j + 1
        return units

    def exported_labels(self) -> tuple[list[str], set[str]]:
        """Labels for the symbol table (not .L*, not ours) and which of them
        are only defined inside conditional blocks."""
        names, at_top = [], set()
        for ln in self.lines:
            if ln.in_macro:
                continue
            for name in ln.labels:
                if name.startswith((".L", "__fp_")):
                    continue
                if name not in names:
                    names.append(name)
                if ln.depth == 0:
                    at_top.add(name)
        return names, {n for n in names if n not in at_top}

    def _stubbed(self, body: list[str], first: int, last: int) -> str:
        """body (lines first..last of the program) with everything else it may
        refer to: macro definitions, assignments, stub labels."""
        before, after, ctx = [], [], []
        own = {n for ln in self.lines[first:last + 1] for n in ln.labels + ln.assigns}
        seen = set(own)
        for (a, b) in self.units():
            if a <= last and b >= first:
                continue
            head = self.lines[a]
            if head.kind == "open" and head.code.split(None, 1)[0].lower() == ".macro":
                ctx += [ln.code for ln in self.lines[a:b + 1]]
            elif head.kind == "assign" and a == b:
                ctx.append(head.code)
                seen.update(head.assigns)
        for idx, ln in enumerate(self.lines):
            if ln.in_macro:
                continue
            for name in ln.labels:
                if name in seen:
                    continue
                seen.add(name)
                (before if idx < first else after).append(f"{name}:")
        return "\n".join(self.prologue + ctx + before + body + after) + "\n"

    def prefix_text(self, end: int) -> str:
        body = [ln.code for ln in self.lines[:end]]
        return self._stubbed(body, 0, end - 1)

    # -- assembling --------------------------------------------------------

    def assemble_plain(self) -> bytes:
        try:
            return keystone_run.ks_asm(self.plain_text(), self.base)
        except KsFailure as e:
            raise self._locate(str(e)) from None

    def assemble(self) -> tuple[bytes, dict[int, int], dict[str, int]]:
        """Code bytes, {line index: offset} for marked lines, {label: offset};
        offsets are from `base`."""
        ks_asm = keystone_run.ks_asm
        plain = self.assemble_plain()
        labels, conditional = self.exported_labels()
        try:
            text, marked = self.marked_text(labels)
            out = ks_asm(text, self.base)
        except KsFailure:
            # A label inside a conditional block may not exist in this build.
            keep = [n for n in labels if n not in conditional]
            for name in labels:
                if name in conditional:
                    try:
                        ks_asm(self.marked_text(keep + [name])[0], self.base)
                        keep.append(name)
                    except KsFailure:
                        pass
            labels = [n for n in labels if n in keep]
            text, marked = self.marked_text(labels)
            try:
                out = ks_asm(text, self.base)
            except KsFailure as e:
                raise AssemblyError(f"{self.lines[0].file}: cannot place offset markers "
                                    f"(keystone: {e})") from None
        n = len(marked) + len(labels)
        code, trailer = out[:len(out) - 8 * n], out[len(out) - 8 * n:]
        if code != plain:
            raise AssemblyError(f"{self.lines[0].file}: keystone assembled differently "
                                f"with offset markers; cannot map offsets to lines")
        addrs = [int.from_bytes(trailer[8 * k:8 * k + 8], "little") - self.base
                 for k in range(n)]
        line_offsets = dict(zip(marked, addrs[:len(marked)]))
        label_offsets = dict(zip(labels, addrs[len(marked):]))
        return code, line_offsets, label_offsets

    # -- finding the line that fails ----------------------------------------

    def _fails(self, first: int, last: int) -> str | None:
        body = [ln.code for ln in self.lines[first:last + 1]]
        try:
            keystone_run.ks_asm(self._stubbed(body, first, last), self.base)
            return None
        except KsFailure as e:
            return str(e)

    def _locate(self, message: str) -> AssemblyError:
        units = self.units()
        for first, last in units:
            msg = self._fails(first, last)
            if msg is None:
                continue
            culprit = first
            if last > first:                         # a block: try its lines alone
                for k in range(first + 1, last):
                    ln = self.lines[k]
                    if ln.kind in ("blank", "open", "close") or ln.in_macro:
                        continue
                    inner = self._fails(k, k)
                    if inner is not None:
                        culprit, msg = k, inner
                        break
            return self._error(culprit, msg)
        # Nothing fails alone: the shortest failing prefix.
        lo, hi = 0, len(units)
        if hi and self._prefix_fails(units[-1][1]) is not None:
            while hi - lo > 1:
                mid = (lo + hi) // 2
                if self._prefix_fails(units[mid - 1][1]) is not None:
                    hi = mid
                else:
                    lo = mid
            return self._error(units[hi - 1][0], self._prefix_fails(units[hi - 1][1]))
        first = self.lines[0] if self.lines else SourceLine("<empty>", 0)
        return AssemblyError(f"{first.file}: {message}")

    def _prefix_fails(self, last: int) -> str | None:
        try:
            keystone_run.ks_asm(self.prefix_text(last + 1), self.base)
            return None
        except KsFailure as e:
            return str(e)

    def _error(self, idx: int, message: str) -> AssemblyError:
        ln = self.lines[idx]
        if "SYMBOL_MISSING" in message:
            known = {n for x in self.lines for n in x.labels + x.assigns}
            known |= {RNG_DATA_SYMBOL}
            idents = re.findall(r"(?<![\w.$])([A-Za-z_.$][\w.$]*)", ln.code)
            words = [w for w in idents[1:] if w not in known and w.lower() not in NON_SYMBOLS
                     and not REG_RE.match(w) and w not in ln.labels]
            if words:
                message = f"undefined symbol '{words[0]}' ({message})"
        elif "INVALIDOPERAND" in message and re.search(r"\[[^\]]*(?<![\w.$])\.L", ln.code):
            message += ("; keystone cannot use a .L label inside a memory operand, "
                        "use a label without the .L prefix")
        return AssemblyError(f"{ln.where}: {message}")


def locate_crash(lines: list[SourceLine], base: int) -> str | None:
    """file:line of the first statement at which a program prefix makes
    keystone crash (each probe runs in a child), or None."""
    program = Program(lines, base)
    units = program.units()
    lo, hi = 0, len(units)            # invariant: prefix lo does not crash, hi does
    if not units or not keystone_run.crashes(program.prefix_text(units[hi - 1][1] + 1), base):
        return None
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if keystone_run.crashes(program.prefix_text(units[mid - 1][1] + 1), base):
            hi = mid
        else:
            lo = mid
    return lines[units[hi - 1][0]].where
