"""Reading an assembly source into lines keystone can take.

The sources are Intel syntax as GAS reads it.  Keystone 0.9.2 reads a dialect
of it, so every line is normalised here before keystone sees it:

* comments (`#`, `/* */`) are removed, keeping the line structure so that
  line numbers stay right;
* decimal, `NNh` and leading-zero octal literals are rewritten as 0x hex:
  keystone's lexer radix is process-global and flips to 16 once anything
  calls ks_option (see vdso/keystone_run.py), so only hex means the same in
  every state;
* ELF metadata keystone rejects or has no use for (`.globl`, `.cfi_*`,
  `.text`, ...) is dropped; `.type` and `.size` are kept aside as symbol
  metadata for the ELF image (see SymbolMeta);
* any section other than `.text` is refused with file:line: the image is one
  text mapping;
* sizes keystone hangs on (`.zero -1`, `.p2align 0x40`) are refused up front.

Each line becomes a SourceLine that knows its kind (instruction, data,
alignment, block opener...) and its nesting depth.  Statements at depth 0 get
an offset marker of their own when the program is assembled
(vdso/asm_program.py), which is how offsets map back to file:line.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from vdso.errors import AssemblyError
from vdso.files import read_text
from vdso.image import MAX_IMAGE_BYTES, PAGE_SIZE

ASM_DIR = Path(__file__).resolve().parent.parent / "asm"
PROJECT_DIR = ASM_DIR.parent

# Directives that emit data (skipped by the capstone sweep).
DATA_DIRECTIVES = {
    ".byte", ".short", ".word", ".hword", ".value", ".2byte", ".long", ".int",
    ".4byte", ".quad", ".8byte", ".octa", ".ascii", ".asciz", ".string",
    ".zero", ".skip", ".space", ".fill", ".float", ".single", ".double",
    ".incbin", ".sleb128", ".uleb128",
}
ALIGN_DIRECTIVES = {".align", ".p2align", ".balign", ".p2alignw", ".p2alignl",
                    ".balignw", ".balignl", ".org"}
# ELF metadata that keystone either rejects or does not need: dropped.  Symbol
# binding is decided by the image (vdso/asm_symbols.py), not by .globl.
_DROPPED_DIRECTIVES = {".hidden", ".protected", ".internal",
                       ".file", ".ident", ".loc", ".weak", ".globl", ".global",
                       ".local", ".text"}
# Kept as symbol metadata, never given to keystone.
_META_DIRECTIVES = {".type", ".size"}
_SECTION_DIRECTIVES = {".section", ".data", ".bss", ".rodata", ".pushsection",
                       ".popsection", ".previous", ".subsection"}
_OPENERS = {".macro", ".rept", ".irp", ".irpc", ".if", ".ifdef", ".ifndef",
            ".ifeq", ".ifne", ".ifge", ".ifgt", ".ifle", ".iflt", ".ifc",
            ".ifnc", ".ifb", ".ifnb", ".ifeqs", ".ifnes", ".ifnotdef"}
_CLOSERS = {".endm", ".endr", ".endif"}

_LABEL_RE = re.compile(r"\s*([A-Za-z_.$][\w.$]*)\s*:(?!:)")
_ASSIGN_RE = re.compile(r"\s*([A-Za-z_.$][\w.$]*)\s*=(?!=)")
_SET_RE = re.compile(r"\s*\.(?:set|equ|equiv)\s+([A-Za-z_.$][\w.$]*)\s*,", re.I)
_SYMBOL_NAME = r"[A-Za-z_.$][\w.$]*"

TOKEN_RE = re.compile(r"""
      (?P<str>"(?:\\.|[^"\\])*"?)
    | (?P<chr>'(?:\\.|[^'\\])'?)
    | (?P<ident>[A-Za-z_.$@][\w.$@]*)
    | (?P<hex>0[xX][0-9a-fA-F]+)
    | (?P<bin>0[bB][01]+)(?![\w.$])
    | (?P<hsuf>[0-9][0-9a-fA-F]*[hH])(?![\w.$])
    | (?P<dec>[0-9]+)(?![\w.$])
    | (?P<other>.)
    """, re.X | re.S)

# Words in an operand that are not symbols, for the "undefined symbol" hint.
NON_SYMBOLS = set("""
    byte word dword qword xmmword ymmword zmmword tbyte fword oword ptr offset
    rip eip short near far st
    """.split())
REG_RE = re.compile(r"""(?ix)^(
      [re]?[abcd]x | [abcd][lh] | [re]?(?:si|di|sp|bp) | (?:si|di|sp|bp)l
    | r(?:[89]|1[0-5])[dwb]? | [xyz]mm(?:[12]?[0-9]|3[01]) | k[0-7] | mm[0-7]
    | [cdefgs]s | cr[0-9]+ | dr[0-9]+ | st )$""")


@dataclass(frozen=True)
class SymbolMeta:
    """A `.type NAME, @function` or `.size NAME, .-NAME` line, kept for the
    ELF symbol table: kind is "type" or "size"; value is "FUNC"/"OBJECT"/
    "NOTYPE" for a type, and for a size either the number of bytes or None,
    meaning `.-NAME` (up to this line)."""
    kind: str
    name: str
    value: str | int | None


@dataclass
class SourceLine:
    file: str
    lineno: int
    code: str = ""                 # what keystone gets ("" = nothing)
    kind: str = "blank"            # blank label insn data align directive assign open close meta
    depth: int = 0                 # 0 = top level (gets a marker)
    labels: tuple[str, ...] = ()
    assigns: tuple[str, ...] = ()
    in_macro: bool = False
    raw: str = ""                  # the source line, comments stripped
    meta: tuple[SymbolMeta, ...] = field(default_factory=tuple)

    @property
    def where(self) -> str:
        return f"{self.file}:{self.lineno}"


@dataclass(frozen=True)
class Source:
    """One source file as the builder takes it.  `origins`, for a patched
    source, names the (file, line) each of its lines comes from."""
    display: str
    text: str
    origins: tuple[tuple[str, int], ...] | None = None

    def lines(self) -> list["SourceLine"]:
        return parse(self.display, self.text, list(self.origins) if self.origins else None)


def display_name(path: Path) -> str:
    """How a file is named in messages: relative to the project when inside it."""
    try:
        return str(path.resolve().relative_to(PROJECT_DIR))
    except ValueError:
        return str(path)


# A source longer than this is no hand-written vDSO (asm/vgetrandom.s is ~20 KiB).
MAX_SOURCE_BYTES = 4 << 20


def read_source(path: Path, display: str | None = None) -> Source:
    """A source file as the builder takes it (a regular UTF-8 text file of at
    most MAX_SOURCE_BYTES, vdso/files.py); AssemblyError if unreadable."""
    display = display or display_name(path)
    return Source(display, read_text(str(path), limit=MAX_SOURCE_BYTES, label=display, error=AssemblyError))


def strip_comments(text: str) -> list[str]:
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
            m = TOKEN_RE.match(text, i)
            tok = m.group(0) if m and (m.group("str") or m.group("chr")) else c
            cur.append(tok.replace("\n", " "))
            i += len(tok)
            continue
        else:
            cur.append(c)
        i += 1
    out.append("".join(cur))
    return out


def normalize_numbers(code: str) -> str:
    """Rewrite decimal (and `NNh`, leading-zero octal) literals as 0x hex, so
    keystone's radix does not matter."""
    parts = []
    for m in TOKEN_RE.finditer(code):
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
    for m in TOKEN_RE.finditer(code):
        if m.group(0) == ";":
            stmts.append("".join(cur))
            cur = []
        else:
            cur.append(m.group(0))
    stmts.append("".join(cur))
    return [s for s in (s.strip() for s in stmts) if s]


# Keystone hangs on `.zero -1`, `.skip 0x100000000`, `.p2align 0x40`; refuse
# such sizes up front.  Only plain numeric arguments can be checked.  No
# directive, and no sum of them (counting .rept), may emit more than an image
# may hold (vdso/image.py MAX_IMAGE_BYTES): keystone would spend its whole
# timeout building a buffer the loader then refuses.
MAX_EMIT = MAX_IMAGE_BYTES


def _num_arg(text: str) -> int | None:
    """A plain numeric argument (after normalize_numbers: 0x.. or 0b..)."""
    text = text.strip()
    if re.fullmatch(r"-?0x[0-9a-fA-F]+|-?0b[01]+", text):
        return int(text, 0)
    return None


def _check_size_directive(line: SourceLine, word: str, stmt: str) -> int:
    """Refuse an out-of-range size or alignment; the bytes the directive emits
    when that is known from its text (0 otherwise)."""
    args = [a.strip() for a in stmt[len(word):].split(",")]

    def num(k):
        return _num_arg(args[k]) if k < len(args) else None
    first = num(0)
    bad = None
    emits = 0
    if word in (".zero", ".skip", ".space") and first is not None:
        bad = not 0 <= first <= MAX_EMIT
        emits = first
    elif word == ".fill" and first is not None:
        size = num(1) if num(1) is not None else 1
        bad = not (0 <= first and 0 <= size <= 8 and first * size <= MAX_EMIT)
        emits = first * size
    elif word.startswith(".p2align") and first is not None:
        bad = not 0 <= first <= 12
    elif word.startswith((".balign", ".align")) and first is not None:
        bad = not (0 <= first <= PAGE_SIZE)
    elif word == ".org" and first is not None:
        bad = not 0 <= first <= MAX_EMIT
    if bad:
        raise AssemblyError(f"{line.where}: `{line.raw}`: size out of range (at most "
                            f"{MAX_EMIT:#x} bytes of data, alignment at most a page)")
    return emits if not bad else 0


_PAIRS = {")": "(", "]": "["}


def _check_brackets(line: SourceLine, stmt: str) -> None:
    """Keystone ignores what follows a complete operand: `mov rax, 1 )`
    assembles as `mov rax, 1`, and `mov rax, 1 [` as a load from address 1.
    Unbalanced brackets are refused before it sees them."""
    stack = []
    for m in TOKEN_RE.finditer(stmt):
        tok = m.group(0)
        if m.lastgroup in ("str", "chr"):
            continue
        for c in tok:
            if c in "([":
                stack.append(c)
            elif c in ")]":
                if not stack or stack.pop() != _PAIRS[c]:
                    raise AssemblyError(f"{line.where}: `{line.raw}`: unbalanced {c!r}")
    if stack:
        raise AssemblyError(f"{line.where}: `{line.raw}`: unbalanced {stack[-1]!r}")


_TYPES = {"function": "FUNC", "object": "OBJECT", "notype": "NOTYPE"}


def _symbol_meta(line: SourceLine, word: str, stmt: str) -> SymbolMeta:
    """`.type NAME, @function|%object|STT_NOTYPE...` and `.size NAME, .-NAME`
    (or a number): what GAS accepts for the symbols of a vDSO."""
    m = re.fullmatch(rf"\.\w+\s+({_SYMBOL_NAME})\s*,\s*(.+)", stmt)
    if not m:
        raise AssemblyError(f"{line.where}: `{line.raw}`: expected {word} NAME, VALUE")
    name, arg = m.group(1), m.group(2).strip()
    if word == ".type":
        t = re.fullmatch(r"[@%]?(?:STT_)?(\w+)|\"(\w+)\"", arg)
        kind = _TYPES.get((t.group(1) or t.group(2)).lower()) if t else None
        if kind is None:
            raise AssemblyError(f"{line.where}: `{line.raw}`: symbol type must be "
                                f"@function, @object or @notype")
        return SymbolMeta("type", name, kind)
    if re.fullmatch(rf"\.\s*-\s*{re.escape(name)}", arg):
        return SymbolMeta("size", name, None)
    if re.fullmatch(r"0x[0-9a-fA-F]+|0b[01]+", arg):
        return SymbolMeta("size", name, int(arg, 0))
    raise AssemblyError(f"{line.where}: `{line.raw}`: only `.size {name}, .-{name}` "
                        f"or a number is supported")


def parse(display: str, text: str, origins: list[tuple[str, int]] | None = None) -> list[SourceLine]:
    """Split a source into SourceLines.  `origins`, when given, names the
    (file, line) each line of `text` comes from (a patched source), instead
    of (display, 1..n)."""
    lines: list[SourceLine] = []
    depth = 0
    macro_depth = 0
    emitted = 0                 # data bytes the numeric directives emit, .rept counts applied
    repeat = [1]                # the .rept multiplier of each open block
    for lineno, raw in enumerate(strip_comments(text), 1):
        file, num = origins[lineno - 1] if origins and lineno <= len(origins) else (display, lineno)
        line = SourceLine(file, num, depth=depth, in_macro=macro_depth > 0, raw=raw.strip())
        lines.append(line)
        code = normalize_numbers(raw).strip()
        if not code:
            continue
        kinds, labels, assigns, keep, meta = [], [], [], [], []
        for stmt in _statements(code):
            while (m := _LABEL_RE.match(stmt)) and not REG_RE.match(m.group(1)):
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
            if word in _META_DIRECTIVES:
                if macro_depth == 0:           # a macro's body is a template, not symbols
                    meta.append(_symbol_meta(line, word, stmt))
                    kinds.append("meta")
                continue
            if word in _DROPPED_DIRECTIVES or word.startswith(".cfi_"):
                continue
            _check_brackets(line, stmt)
            if word == ".incbin":
                raise AssemblyError(f"{line.where}: `{line.raw}`: .incbin is not supported (an image "
                                    f"reads no other files; put the bytes in with .byte)")
            if word in _OPENERS:
                kinds.append("open")
                if word == ".macro":
                    macro_depth += 1
                count = _num_arg(stmt[len(word):]) if word == ".rept" else None
                repeat.append(repeat[-1] * max(count, 0) if count is not None else repeat[-1])
                depth += 1
            elif word in _CLOSERS:
                kinds.append("close")
                if depth == 0:
                    raise AssemblyError(f"{line.where}: {word} without a matching opener")
                depth -= 1
                repeat.pop()
                if word == ".endm":
                    macro_depth = max(0, macro_depth - 1)
            elif word in DATA_DIRECTIVES:
                if macro_depth == 0:       # a macro's body counts where it is used, if ever
                    emitted += _check_size_directive(line, word, stmt) * repeat[-1]
                else:
                    _check_size_directive(line, word, stmt)
                if emitted > MAX_IMAGE_BYTES:
                    raise AssemblyError(f"{line.where}: `{line.raw}`: the data adds up to {emitted:#x} "
                                        f"bytes, more than an image may hold ({MAX_IMAGE_BYTES:#x})")
                kinds.append("data")
            elif word in ALIGN_DIRECTIVES:
                _check_size_directive(line, word, stmt)
                kinds.append("align")
            elif word.startswith("."):
                kinds.append("directive")
            else:
                kinds.append("insn")
            keep.append(stmt)
        label_text = "".join(f"{name}: " for name in labels)
        line.code = (label_text + " ; ".join(keep)).strip()
        line.labels, line.assigns, line.meta = tuple(labels), tuple(assigns), tuple(meta)
        for k in ("open", "close", "insn", "data", "align", "assign", "directive", "meta"):
            if k in kinds:
                line.kind = k
                break
        else:
            line.kind = "label" if labels else "blank"
        if line.kind == "close":
            line.depth = depth + 1
    if depth:
        last = lines[-1] if lines else SourceLine(display, 0)
        raise AssemblyError(f"{last.file}:{last.lineno}: unterminated .macro/.rept/.if block")
    return lines


_ALIGN_ARG = re.compile(r"\.(p2align|balign|align)[wl]?\s+([^,\s]+)", re.I)


def max_alignment(lines: list[SourceLine], least: int = 16) -> int:
    """The largest alignment the source asks for (at least `least`): where
    the code may start so that every alignment directive pads as it would at
    any other such start.  An alignment we cannot read counts as a page."""
    best = least
    for ln in lines:
        if "align" not in ln.code.lower():
            continue
        for m in _ALIGN_ARG.finditer(ln.code):
            word, arg = m.group(1).lower(), m.group(2)
            if not re.fullmatch(r"0x[0-9a-fA-F]+|0b[01]+", arg):
                best = max(best, PAGE_SIZE)
                continue
            n = int(arg, 0)
            best = max(best, min(1 << n if word == "p2align" else n, PAGE_SIZE))
    return best
