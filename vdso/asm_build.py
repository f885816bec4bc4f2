"""Assemble faultpath's own vDSO (asm/*.s) with keystone into a VdsoImage.

    build_image("builtin")        asm/vgetrandom.s + asm/chacha20_blocks.s, 6.11 ABI
    build_image("builtin-v14")    asm/vgetrandom_v14.s in front of the same two, v14 ABI
    build_image("path/to/x.s")    a user's file (our ChaCha20 is linked in when the
                                  file calls __arch_chacha20_blocks_nostack without
                                  defining it; `.S` is accepted but not run through cpp)
    assemble_snippet(src, addr)   plain bytes, for other code that needs keystone

The sources are Intel syntax as keystone 0.9.2 reads it (KS_MODE_64).  The image
is assembled at VDSO_BASE.  `vdso_rng_data` names struct vdso_rng_data at
VDSO_BASE + RNG_DATA_OFFSET_6_15 (6.15+ layout: text - 4 pages).

Keystone 0.9.2 pitfalls handled here (all reproduced on this machine):

* Installing a sym_resolver (or any ks_option call) switches the lexer to radix
  16: `add rsp, 16` assembles as `add rsp, 0x16` (keystone issues #481, #538,
  #571).  Without ks_option the radix is whatever the heap held (#528).  So we
  call ks_option once, deterministically (radix 16), and rewrite every decimal
  literal of the source to 0x form first; the source means what GAS means.
* Symbols supplied through sym_resolver get wrong RIP-relative displacements:
  the displacement is computed from the displacement field instead of the end
  of the instruction, and an addend (`[rip + vdso_rng_data + 8]`) is dropped
  (#244, #271, #351).  We therefore do not use sym_resolver: the builder defines
  `vdso_rng_data = <image start label> - 0x4000`, a label-relative symbol, which
  keystone resolves exactly, addends and trailing immediates included.
* `.text` crashes keystone with SIGSEGV and `.section` silently yields no bytes:
  `.text` / `.section .text` are dropped (the image is a single text section);
  other sections are refused with file:line.  A stray `.cfi_endproc` makes LLVM
  exit(1) (`.cfi_*` are dropped); `.zero -1`, `.skip 0x100000000` and
  `.p2align 0x40` hang it (refused up front).  User files are assembled in a
  forked child, so any other crash or exit becomes an AssemblyError (with the
  first line at which a program prefix crashes) and a hang is killed after
  ISOLATED_TIMEOUT.
* `[rip + .Llabel]` is rejected (a '.L' name in a memory operand); `.L` labels
  work as branch targets.  GAS numeric labels (`1:` / `1f`) are not supported.
* Keystone reports no line numbers and has no symbol table output.

How offsets are found: before every top-level statement the builder inserts a
marker label `__fp_ln_<n>:` and appends `.quad` references to all markers and to
every exported label after the code.  The trailing quads are the absolute
addresses (read back, then cut off); the code in front of them is checked to be
byte-identical to an assembly without markers.  Statements inside .macro/.rept/
.irp/.if blocks get no marker of their own: the block's first line stands for
them.  Exported symbols are all labels except GAS-local `.L*` ones (labels only
defined inside an .if block are probed one by one and kept if they exist).

How a failing line is found: each top-level statement (a whole block counts as
one) is assembled on its own, with stub labels for every label defined
elsewhere, macro definitions and assignments in front; the first one that
fails is the culprit (inside a failing block, its inner lines are tried the
same way).  If no statement fails alone (e.g. a label defined twice), the
shortest failing prefix of the program is searched by bisection.

After assembly capstone decodes every statement that is code (data directives
and alignment padding are skipped) and refuses, with file:line, VEX (c4/c5),
EVEX (62) and XOP (8f) encodings, which Unicorn 2.1 runs wrongly or not at
all, and `lock bt/bts/btr/btc` with a register operand, which aborts Unicorn
2.1.4.  Each decoded instruction's offset maps to its "file:line" in
VdsoImage.source_lines.
"""
from __future__ import annotations

import dataclasses
import faulthandler
import os
import pickle
import re
import select
import signal
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from vdso.errors import AssemblyError, FaultpathError, UnfaithfulInstruction
from vdso.image import (ABI_6_11, ABI_V14, PAGE_SIZE, RNG_DATA_OFFSET_6_15, VDSO_BASE,
                        VdsoImage)

ASM_DIR = Path(__file__).resolve().parent.parent / "asm"
PROJECT_DIR = ASM_DIR.parent

RNG_DATA_SYMBOL = "vdso_rng_data"
CHACHA_SYMBOL = "__arch_chacha20_blocks_nostack"
CHACHA_SOURCE = "chacha20_blocks.s"

# A user file's assembly runs in a child process, killed after this long.
ISOLATED_TIMEOUT = 30.0

# Padding after the code up to the page end: int3, so running off the end traps.
PAD_BYTE = 0xCC


@dataclass(frozen=True)
class Build:
    sources: tuple[str, ...]      # files in asm/, assembled in this order
    abi: str


# kind -> ((abi, source texts), image): rebuilt when a source changes.
_builtin_cache: dict[str, tuple[tuple, VdsoImage]] = {}

BUILDS: dict[str, Build] = {
    "builtin": Build(("vgetrandom.s", CHACHA_SOURCE), ABI_6_11),
    # The v14 entry comes first: it defines __vdso_getrandom, so vgetrandom.s
    # skips its own 6.11 entry label and only contributes the shared body.
    "builtin-v14": Build(("vgetrandom_v14.s", "vgetrandom.s", CHACHA_SOURCE), ABI_V14),
}


# --------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------

def build_image(kind_or_path: str, abi: str | None = None) -> VdsoImage:
    """Assemble a built-in image ("builtin", "builtin-v14") or a user's `.s`
    file into a VdsoImage mapped at VDSO_BASE.

    Raises AssemblyError ("file:line: message") when keystone refuses the
    source and UnfaithfulInstruction ("file:line: ...") for code Unicorn 2.1
    cannot run faithfully."""
    if kind_or_path in BUILDS:
        build = BUILDS[kind_or_path]
        files = [_read_source(ASM_DIR / name) for name in build.sources]
        key = (abi or build.abi, tuple(files))
        cached = _builtin_cache.get(kind_or_path)
        if cached is None or cached[0] != key:
            cached = _builtin_cache[kind_or_path] = (
                key, _build_image(kind_or_path, files, abi or build.abi))
        img = cached[1]
        # A fresh object each time: callers may edit the dicts.
        return dataclasses.replace(img, symbols=dict(img.symbols),
                                   source_lines=dict(img.source_lines))
    if not kind_or_path.endswith((".s", ".S")):
        raise AssemblyError(f"{kind_or_path}: not an assembly source (expected "
                            f"{', '.join(BUILDS)} or a path ending in .s)")
    path = Path(kind_or_path)
    if not path.is_file():
        raise AssemblyError(f"{kind_or_path}: no such file")
    files = [_read_source(path, display=kind_or_path)]
    text = files[0][1]
    if kind_or_path.endswith(".S"):
        # No C preprocessor here; `#define` & co. would silently be comments.
        m = re.search(r"^[ \t]*#[ \t]*(include|define|undef|if|ifdef|ifndef|elif|else|endif|"
                      r"error|pragma)\b", text, re.M)
        if m:
            lineno = text.count("\n", 0, m.start()) + 1
            raise AssemblyError(f"{kind_or_path}:{lineno}: C preprocessor directive "
                                f"#{m.group(1)}: .S files are not run through cpp")
    if (re.search(rf"(?<![\w.$]){CHACHA_SYMBOL}(?![\w.$])", text)
            and not re.search(rf"^\s*{CHACHA_SYMBOL}\s*:", text, re.M)):
        files.append(_read_source(ASM_DIR / CHACHA_SOURCE))
    # Untrusted source: keystone can crash the process, so assemble in a child.
    return _isolated(_build_image, kind_or_path, files, abi or ABI_6_11)


def assemble_snippet(src: str, addr: int, name: str = "<snippet>") -> bytes:
    """Assemble `src` for address `addr` and return the bytes.

    Same dialect and fixes as build_image (decimal literals mean decimal;
    `vdso_rng_data` resolves to VDSO_BASE + RNG_DATA_OFFSET_6_15), errors as
    AssemblyError("name:line: message").  No faithfulness check: snippets may
    be native code that never runs in Unicorn (see check_faithful)."""
    program = _Program(_parse(name, src), addr)
    return program.assemble_plain()


def check_faithful(code: bytes, addr: int, where: str = "<code>") -> None:
    """Refuse code Unicorn 2.1 cannot run faithfully (linear sweep over all of
    `code`, which must be instructions only)."""
    _decode_range(code, addr, 0, len(code), where, {})


# --------------------------------------------------------------------------
# Source model
# --------------------------------------------------------------------------

# Directives that emit data (skipped by the capstone sweep).
_DATA_DIRECTIVES = {
    ".byte", ".short", ".word", ".hword", ".value", ".2byte", ".long", ".int",
    ".4byte", ".quad", ".8byte", ".octa", ".ascii", ".asciz", ".string",
    ".zero", ".skip", ".space", ".fill", ".float", ".single", ".double",
    ".incbin", ".sleb128", ".uleb128",
}
_ALIGN_DIRECTIVES = {".align", ".p2align", ".balign", ".p2alignw", ".p2alignl",
                     ".balignw", ".balignl", ".org"}
# ELF metadata that keystone either rejects or does not need: dropped.
_DROPPED_DIRECTIVES = {".type", ".size", ".hidden", ".protected", ".internal",
                       ".file", ".ident", ".loc", ".weak", ".globl", ".global",
                       ".local", ".text"}
_SECTION_DIRECTIVES = {".section", ".data", ".bss", ".rodata", ".pushsection",
                       ".popsection", ".previous", ".subsection"}
_OPENERS = {".macro", ".rept", ".irp", ".irpc", ".if", ".ifdef", ".ifndef",
            ".ifeq", ".ifne", ".ifge", ".ifgt", ".ifle", ".iflt", ".ifc",
            ".ifnc", ".ifb", ".ifnb", ".ifeqs", ".ifnes", ".ifnotdef"}
_CLOSERS = {".endm", ".endr", ".endif"}

_LABEL_RE = re.compile(r"\s*([A-Za-z_.$][\w.$]*)\s*:(?!:)")
_ASSIGN_RE = re.compile(r"\s*([A-Za-z_.$][\w.$]*)\s*=(?!=)")
_SET_RE = re.compile(r"\s*\.(?:set|equ|equiv)\s+([A-Za-z_.$][\w.$]*)\s*,", re.I)

_TOKEN_RE = re.compile(r"""
      (?P<str>"(?:\\.|[^"\\])*"?)
    | (?P<chr>'(?:\\.|[^'\\])'?)
    | (?P<ident>[A-Za-z_.$@][\w.$@]*)
    | (?P<hex>0[xX][0-9a-fA-F]+)
    | (?P<bin>0[bB][01]+)(?![\w.$])
    | (?P<hsuf>[0-9][0-9a-fA-F]*[hH])(?![\w.$])
    | (?P<dec>[0-9]+)(?![\w.$])
    | (?P<other>.)
    """, re.X | re.S)

# Not symbols, for the "undefined symbol" hint.
_NON_SYMBOLS = set("""
    byte word dword qword xmmword ymmword zmmword tbyte fword oword ptr offset
    rip eip short near far st
    """.split())
_REG_RE = re.compile(r"""(?ix)^(
      [re]?[abcd]x | [abcd][lh] | [re]?(?:si|di|sp|bp) | (?:si|di|sp|bp)l
    | r(?:[89]|1[0-5])[dwb]? | [xyz]mm(?:[12]?[0-9]|3[01]) | k[0-7] | mm[0-7]
    | [cdefgs]s | cr[0-9]+ | dr[0-9]+ | st )$""")


@dataclass
class _Line:
    file: str
    lineno: int
    code: str = ""                 # what keystone gets ("" = nothing)
    kind: str = "blank"            # blank insn data align directive assign open close
    depth: int = 0                 # 0 = top level (gets a marker)
    labels: tuple[str, ...] = ()
    assigns: tuple[str, ...] = ()
    in_macro: bool = False
    raw: str = ""                  # the source line, comments stripped

    @property
    def where(self) -> str:
        return f"{self.file}:{self.lineno}"


def _read_source(path: Path, display: str | None = None) -> tuple[str, str]:
    if display is None:
        try:
            display = str(path.resolve().relative_to(PROJECT_DIR))
        except ValueError:
            display = str(path)
    try:
        return display, path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise AssemblyError(f"{display}: cannot read: {e}") from None


def _strip_comments(text: str) -> list[str]:
    """Remove `#` and `/* */` comments (outside string literals), keeping the
    line structure so line numbers stay right."""
    out, cur, i, n = [], [], 0, len(text)
    in_block = False
    while i < n:
        c = text[i]
        if in_block:
            if text.startswith("*/", i):
                in_block = False
                i += 2
                continue
            if c == "\n":
                out.append("".join(cur))
                cur = []
            i += 1
            continue
        if c == "\n":
            out.append("".join(cur))
            cur = []
        elif text.startswith("/*", i):
            in_block = True
            i += 2
            continue
        elif c == "#":
            j = text.find("\n", i)
            i = n if j < 0 else j
            continue
        elif c in "\"'":
            m = _TOKEN_RE.match(text, i)
            tok = m.group(0) if m and (m.group("str") or m.group("chr")) else c
            cur.append(tok.replace("\n", " "))
            i += len(tok)
            continue
        else:
            cur.append(c)
        i += 1
    out.append("".join(cur))
    return out


def _normalize_numbers(code: str) -> str:
    """Rewrite decimal (and `NNh`, leading-zero octal) literals as 0x hex, so
    keystone's radix does not matter."""
    parts = []
    for m in _TOKEN_RE.finditer(code):
        kind, tok = m.lastgroup, m.group(0)
        if kind == "dec":
            if len(tok) > 1 and tok[0] == "0":
                tok = hex(int(tok, 8)) if set(tok) <= set("01234567") else tok
            else:
                tok = hex(int(tok))
        elif kind == "hsuf":
            tok = "0x" + tok[:-1]
        parts.append(tok)
    return "".join(parts)


def _statements(code: str) -> list[str]:
    """Split on `;` (keystone's statement separator) outside literals."""
    stmts, cur = [], []
    for m in _TOKEN_RE.finditer(code):
        if m.group(0) == ";":
            stmts.append("".join(cur))
            cur = []
        else:
            cur.append(m.group(0))
    stmts.append("".join(cur))
    return [s for s in (s.strip() for s in stmts) if s]


# Keystone hangs on `.zero -1`, `.skip 0x100000000`, `.p2align 0x40`; refuse
# such sizes up front.  Only plain numeric arguments can be checked.
_MAX_EMIT = 16 << 20


def _check_size_directive(line: "_Line", word: str, stmt: str) -> None:
    args = [a.strip() for a in stmt[len(word):].split(",")]

    def num(k):
        if k < len(args) and re.fullmatch(r"-?0x[0-9a-fA-F]+|-?0b[01]+", args[k]):
            return int(args[k], 0)
        return None
    first = num(0)
    bad = None
    if word in (".zero", ".skip", ".space") and first is not None:
        bad = not 0 <= first <= _MAX_EMIT
    elif word == ".fill" and first is not None:
        size = num(1) if num(1) is not None else 1
        bad = not (0 <= first and 0 <= size <= 8 and first * size <= _MAX_EMIT)
    elif word.startswith(".p2align") and first is not None:
        bad = not 0 <= first <= 12
    elif word.startswith((".balign", ".align")) and first is not None:
        bad = not (0 <= first <= PAGE_SIZE)
    if bad:
        raise AssemblyError(f"{line.where}: `{line.raw}`: size out of range (at most "
                            f"{_MAX_EMIT:#x} bytes of data, alignment at most a page)")


def _parse(display: str, text: str) -> list[_Line]:
    lines: list[_Line] = []
    depth = 0
    macro_depth = 0
    for lineno, raw in enumerate(_strip_comments(text), 1):
        line = _Line(display, lineno, depth=depth, in_macro=macro_depth > 0, raw=raw.strip())
        lines.append(line)
        code = _normalize_numbers(raw).strip()
        if not code:
            continue
        kinds, labels, assigns, keep = [], [], [], []
        for stmt in _statements(code):
            while (m := _LABEL_RE.match(stmt)) and not _REG_RE.match(m.group(1)):
                labels.append(m.group(1))
                stmt = stmt[m.end():].strip()
            if not stmt:
                continue
            if (m := _ASSIGN_RE.match(stmt)) or (m := _SET_RE.match(stmt)):
                assigns.append(m.group(1))
                kinds.append("assign")
                keep.append(stmt)
                continue
            word = stmt.split(None, 1)[0].lower()
            if word in _SECTION_DIRECTIVES:
                rest = stmt[len(word):].strip()
                if word == ".section" and re.fullmatch(r"\.text(\.[\w.$]*)?(\s*,.*)?", rest):
                    continue
                raise AssemblyError(
                    f"{line.where}: only the .text section is supported (the image is "
                    f"one text mapping); put data in .text instead of `{line.raw}`")
            if word in _DROPPED_DIRECTIVES or word.startswith(".cfi_"):
                continue
            if word in _OPENERS:
                kinds.append("open")
                if word == ".macro":
                    macro_depth += 1
                depth += 1
            elif word in _CLOSERS:
                kinds.append("close")
                if depth == 0:
                    raise AssemblyError(f"{line.where}: {word} without a matching opener")
                depth -= 1
                if word == ".endm":
                    macro_depth = max(0, macro_depth - 1)
            elif word in _DATA_DIRECTIVES:
                _check_size_directive(line, word, stmt)
                kinds.append("data")
            elif word in _ALIGN_DIRECTIVES:
                _check_size_directive(line, word, stmt)
                kinds.append("align")
            elif word.startswith("."):
                kinds.append("directive")
            else:
                kinds.append("insn")
            keep.append(stmt)
        label_text = "".join(f"{name}: " for name in labels)
        line.code = (label_text + " ; ".join(keep)).strip()
        line.labels, line.assigns = tuple(labels), tuple(assigns)
        for k in ("open", "close", "insn", "data", "align", "assign", "directive"):
            if k in kinds:
                line.kind = k
                break
        else:
            line.kind = "label" if labels else "blank"
        if line.kind == "close":
            line.depth = depth + 1
    if depth:
        raise AssemblyError(f"{display}:{len(lines)}: unterminated .macro/.rept/.if block")
    return lines


# --------------------------------------------------------------------------
# Keystone
# --------------------------------------------------------------------------

class _KsFailure(Exception):
    pass


def _ks_asm(text: str, addr: int) -> bytes:
    """One keystone run.  LLVM's own diagnostics (printed on stderr by the C
    library) are captured and folded into the error."""
    from keystone import KS_ARCH_X86, KS_MODE_64, KS_OPT_SYNTAX_INTEL, Ks, KsError
    ks = Ks(KS_ARCH_X86, KS_MODE_64)
    ks.syntax = KS_OPT_SYNTAX_INTEL        # the ks_option call: radix is now 16, always
    with tempfile.TemporaryFile() as err:
        saved = os.dup(2)
        os.dup2(err.fileno(), 2)
        try:
            try:
                enc, _ = ks.asm(text.encode(), addr, as_bytes=True)
                return bytes(enc or b"")
            except KsError as e:
                failure = str(e)
        finally:
            os.dup2(saved, 2)
            os.close(saved)
        err.seek(0)
        diag = err.read().decode(errors="replace")
    m = re.search(r"error: (.*)", diag)
    raise _KsFailure(f"{m.group(1).strip()} ({failure})" if m else failure)


def _isolated(fn, *args):
    """Run fn(*args) in a forked child; keystone crashes become AssemblyError."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:                                    # child
        os.close(r)
        faulthandler.disable()                      # the parent reports a crash
        try:
            try:
                payload = pickle.dumps(("ok", fn(*args)))
            except FaultpathError as e:
                payload = pickle.dumps(("err", e))
            except BaseException as e:              # a bug: keep the type in the text
                payload = pickle.dumps(("err", AssemblyError(f"{type(e).__name__}: {e}")))
            with os.fdopen(w, "wb") as f:
                f.write(payload)
        finally:
            os._exit(0)
    os.close(w)
    chunks, deadline = [], time.monotonic() + ISOLATED_TIMEOUT
    with os.fdopen(r, "rb", buffering=0) as f:
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([f], [], [], left)[0]:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                raise AssemblyError(f"{args[0]}: keystone did not finish within "
                                    f"{ISOLATED_TIMEOUT:g} s")
            chunk = f.read(1 << 16)
            if not chunk:
                break
            chunks.append(chunk)
    payload = b"".join(chunks)
    _, status = os.waitpid(pid, 0)
    if os.WIFSIGNALED(status) or not payload:
        sig = os.WTERMSIG(status) if os.WIFSIGNALED(status) else 0
        name = signal.Signals(sig).name if sig else f"exit status {os.WEXITSTATUS(status)}"
        where = _locate_crash(*args) if fn is _build_image else None
        raise AssemblyError(f"{where or args[0]}: keystone crashed ({name}) assembling this")
    status_word, value = pickle.loads(payload)
    if status_word == "err":
        raise value
    return value


def _crashes(text: str, addr: int) -> bool:
    """Does keystone crash, exit or hang on `text`?  (Run in a child.)"""
    pid = os.fork()
    if pid == 0:
        faulthandler.disable()
        try:
            _ks_asm(text, addr)
        except BaseException:
            pass
        os._exit(0)
    deadline = time.monotonic() + ISOLATED_TIMEOUT / 3
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.WIFSIGNALED(status) or os.WEXITSTATUS(status) != 0
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            return True
        time.sleep(0.002)


def _locate_crash(name, files, abi) -> str | None:
    """The first line at which a program prefix makes keystone crash."""
    try:
        lines = [ln for display, text in files for ln in _parse(display, text)]
    except FaultpathError:
        return None
    program = _Program(lines, VDSO_BASE)
    units = program.units()
    lo, hi = 0, len(units)            # invariant: prefix lo does not crash, hi does
    if not units or not _crashes(program.prefix_text(units[hi - 1][1] + 1), VDSO_BASE):
        return None
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if _crashes(program.prefix_text(units[mid - 1][1] + 1), VDSO_BASE):
            hi = mid
        else:
            lo = mid
    return lines[units[hi - 1][0]].where


# --------------------------------------------------------------------------
# Assembling a program
# --------------------------------------------------------------------------

_MARK = "__fp_ln_"
_BASE_LABEL = "__fp_base"


class _Program:
    def __init__(self, lines: list[_Line], base: int):
        self.lines = lines
        self.base = base
        defined = {n for ln in lines for n in ln.labels + ln.assigns}
        uses_rng = any(re.search(rf"(?<![\w.$]){RNG_DATA_SYMBOL}(?![\w.$])", ln.code)
                       for ln in lines)
        self.prologue = [f"{_BASE_LABEL}:"]
        if uses_rng and RNG_DATA_SYMBOL not in defined:
            rng = VDSO_BASE + RNG_DATA_OFFSET_6_15 - base
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
        units = self.units()
        for (a, b) in units:
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
            return _ks_asm(self.plain_text(), self.base)
        except _KsFailure as e:
            raise self._locate(str(e)) from None

    def assemble(self) -> tuple[bytes, dict[int, int], dict[str, int]]:
        """Code bytes, {line index: offset} for marked lines, {label: offset}."""
        plain = self.assemble_plain()
        labels, conditional = self.exported_labels()
        try:
            text, marked = self.marked_text(labels)
            out = _ks_asm(text, self.base)
        except _KsFailure:
            # A label inside a conditional block may not exist in this build.
            keep = [n for n in labels if n not in conditional]
            for name in labels:
                if name in conditional:
                    try:
                        _ks_asm(self.marked_text(keep + [name])[0], self.base)
                        keep.append(name)
                    except _KsFailure:
                        pass
            labels = [n for n in labels if n in keep]
            text, marked = self.marked_text(labels)
            try:
                out = _ks_asm(text, self.base)
            except _KsFailure as e:
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
            _ks_asm(self._stubbed(body, first, last), self.base)
            return None
        except _KsFailure as e:
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
        first = self.lines[0] if self.lines else _Line("<empty>", 0)
        return AssemblyError(f"{first.file}: {message}")

    def _prefix_fails(self, last: int) -> str | None:
        try:
            _ks_asm(self.prefix_text(last + 1), self.base)
            return None
        except _KsFailure as e:
            return str(e)

    def _error(self, idx: int, message: str) -> AssemblyError:
        ln = self.lines[idx]
        if "SYMBOL_MISSING" in message:
            known = {n for x in self.lines for n in x.labels + x.assigns}
            known |= {RNG_DATA_SYMBOL}
            idents = re.findall(r"(?<![\w.$])([A-Za-z_.$][\w.$]*)", ln.code)
            words = [w for w in idents[1:] if w not in known and w.lower() not in _NON_SYMBOLS
                     and not _REG_RE.match(w) and w not in ln.labels]
            if words:
                message = f"undefined symbol '{words[0]}' ({message})"
        elif "INVALIDOPERAND" in message and re.search(r"\[[^\]]*(?<![\w.$])\.L", ln.code):
            message += ("; keystone cannot use a .L label inside a memory operand, "
                        "use a label without the .L prefix")
        return AssemblyError(f"{ln.where}: {message}")


# --------------------------------------------------------------------------
# Faithfulness check (capstone)
# --------------------------------------------------------------------------

_LEGACY_PREFIXES = {0xF0, 0xF2, 0xF3, 0x2E, 0x36, 0x3E, 0x26, 0x64, 0x65, 0x66, 0x67}

_cs = None


def _capstone():
    global _cs
    if _cs is None:
        from capstone import CS_ARCH_X86, CS_MODE_64, Cs
        _cs = Cs(CS_ARCH_X86, CS_MODE_64)
        _cs.detail = True
    return _cs


def unfaithful_reason(insn_bytes: bytes, insn=None) -> str | None:
    """Why Unicorn 2.1 cannot run this instruction faithfully, or None: the one
    rule set of vdso.insn (images, run-time blocks and user blobs alike)."""
    from vdso.insn import unfaithful_reason as reason
    if insn is None:
        return reason(insn_bytes)
    return reason(insn_bytes, insn.mnemonic, insn.op_str)


def _decode_range(code: bytes, base: int, start: int, end: int, where: str,
                  source_lines: dict[int, str]) -> None:
    off = start
    for insn in _capstone().disasm(code[start:end], base + start):
        reason = unfaithful_reason(bytes(insn.bytes), insn)
        if reason:
            raise UnfaithfulInstruction(
                f"{where}: {insn.mnemonic} {insn.op_str} ({bytes(insn.bytes).hex(' ')}) "
                f"at {insn.address:#x}: {reason}")
        source_lines[off] = where
        off += insn.size
    if off != end:
        raw = code[off:min(end, off + 15)]
        why = unfaithful_reason(raw) or "they do not decode as an x86-64 instruction"
        raise UnfaithfulInstruction(f"{where}: bytes {raw.hex(' ')} at {base + off:#x}: {why}")


# --------------------------------------------------------------------------
# The image
# --------------------------------------------------------------------------

def _build_image(name: str, files: list[tuple[str, str]], abi: str) -> VdsoImage:
    lines = [ln for display, text in files for ln in _parse(display, text)]
    program = _Program(lines, VDSO_BASE)
    code, line_offsets, symbols = program.assemble()
    if not code:
        raise AssemblyError(f"{files[0][0]}: assembles to nothing")

    source_lines: dict[int, str] = {}
    marked = sorted(line_offsets)
    for pos, idx in enumerate(marked):
        start = line_offsets[idx]
        end = line_offsets[marked[pos + 1]] if pos + 1 < len(marked) else len(code)
        if end < start:
            raise AssemblyError(f"{lines[idx].where}: statements out of order (.org?)")
        if start == end or lines[idx].kind in ("data", "align"):
            continue
        _decode_range(code, VDSO_BASE, start, end, lines[idx].where, source_lines)

    size = (len(code) + PAGE_SIZE - 1) // PAGE_SIZE * PAGE_SIZE
    text = code + bytes([PAD_BYTE]) * (size - len(code))
    return VdsoImage(name=name, text=text, symbols=symbols,
                     rng_data_offset=RNG_DATA_OFFSET_6_15, abi=abi, base=VDSO_BASE,
                     rng_data_source="assembled", source_lines=source_lines)
