"""The skipcheck corpus: store instructions, one per line, and how each is
encoded and crossed with prefixes.

A corpus line is one x86-64 instruction in Intel syntax as keystone reads
it (`vdso.asm_build.assemble_snippet`), optionally preceded by GAS-style
prefix words, or a `.byte` directive spelling one instruction's bytes:

    mov qword ptr [rdi], rax          # a comment
    fs lock add dword ptr [rdi], 5    # prefix words: applied to the bytes
    .byte 0x66, 0xe8, 0x00, 0x01      # call rel16 (0x66, AMD semantics)

Prefix words (GAS spells them the same way): ``data16`` (66), ``addr32``
(67), segment overrides ``cs ds es ss fs gs``, and REX: ``rex`` (40),
``rex.W``, ``rex.WB``... (any of W R X B).  Legacy prefix words are put in
front of keystone's bytes; REX bits are merged into the REX byte right
before the opcode (or a REX byte is inserted there).  ``lock`` and ``rep``
are ordinary keystone syntax.

The memory operand names where the store goes; skipcheck chooses register
values (and fs/gs bases, and the rip-relative displacement) so that it
lands where a placement wants it, so ``[rdi]``, ``[rax + rbx*4 + 0x10]`` and
``fs:[r12 - 8]`` all work.  A line is refused, with its line number, when it
does not assemble, is not exactly one instruction, is longer than 15 bytes,
is not a memory write, or is code Unicorn cannot run faithfully
(`vdso.insn.unfaithful_reason`).
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import capstone
from capstone import x86 as X

from emulator.errors import UsageError
from emulator.insn_length import LEGACY_PREFIXES, capstone_length, skip_length
from vdso.files import read_text
from vdso.insn import MAX_INSN_LEN, disassembler, unfaithful_reason

CORPUS_DIR = Path(__file__).resolve().parent / "corpus"
BUILTIN = CORPUS_DIR / "builtin.txt"

LEGACY_WORDS = {"data16": 0x66, "addr32": 0x67, "cs": 0x2E, "ds": 0x3E, "es": 0x26,
                "ss": 0x36, "fs": 0x64, "gs": 0x65}
_REX_WORD = re.compile(r"^rex(?:\.([WRXB]+))?$", re.I)
_SEGMENT_BYTES = frozenset((0x2E, 0x3E, 0x26, 0x36, 0x64, 0x65))
_BRACKET = re.compile(r"\[[^\[\]]*\]")
_PLACEHOLDER_DISP = 0x12345678


@dataclass(frozen=True)
class LineError:
    line: int
    text: str
    error: str

    def as_dict(self) -> dict:
        return {"line": self.line, "text": self.text, "error": self.error}


@dataclass(frozen=True)
class Form:
    """One corpus line: its own prefix words and the instruction body."""
    line: int
    text: str                      # the line as written (comment stripped)
    words: tuple[str, ...]         # leading prefix words
    body: str                      # what keystone assembles

    @property
    def raw_bytes(self) -> bool:
        return self.body.lstrip().startswith(".byte")


def _split_words(text: str) -> tuple[tuple[str, ...], str]:
    parts = text.split()
    words = []
    while parts and (parts[0].lower() in LEGACY_WORDS or _REX_WORD.match(parts[0])):
        words.append(parts.pop(0))
        if not parts:
            break
    body = text.strip()
    for w in words:
        body = body[len(w):].lstrip()
    return tuple(words), body


def parse_corpus(text: str, name: str = "<corpus>") -> tuple[list[Form], list[LineError]]:
    """Lines of a corpus; blank lines and `#` comments are skipped."""
    forms, errors = [], []
    for no, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        words, body = _split_words(line)
        if not body:
            errors.append(LineError(no, line, "prefix words without an instruction"))
            continue
        if body.startswith(".") and not body.startswith(".byte"):
            errors.append(LineError(no, line, "not an instruction (only `.byte` directives are accepted)"))
            continue
        if ";" in body:
            errors.append(LineError(no, line, "more than one statement on the line"))
            continue
        forms.append(Form(no, line, words, body))
    return forms, errors


# A corpus is one instruction per line; the builtin one is a few kilobytes.
MAX_CORPUS_BYTES = 16 << 20


def load_corpus(spec: str) -> tuple[str, list[Form], list[LineError]]:
    """`builtin` or a file path -> (name, forms, line errors)."""
    if spec == "builtin":
        path, name = str(BUILTIN), "builtin"
    else:
        path, name = spec, spec
        if spec and not os.path.lexists(spec):
            raise UsageError(f"{spec}: no such file")
    # A regular UTF-8 text file of bounded size (vdso/files.py).
    text = read_text(path, limit=MAX_CORPUS_BYTES, label=f"--corpus {spec}")
    forms, errors = parse_corpus(text, name)
    return name, forms, errors


# --------------------------------------------------------------------------
# Encoding
# --------------------------------------------------------------------------

def split_prefixes(code: bytes) -> tuple[bytes, int | None, bytes]:
    """(legacy prefixes, REX byte or None, opcode and the rest)."""
    i = 0
    while i < len(code) and code[i] in LEGACY_PREFIXES:
        i += 1
    legacy = bytes(code[:i])
    rex = None
    while i < len(code) and 0x40 <= code[i] <= 0x4F:
        if rex is not None:          # an earlier REX is not "right before the opcode"
            legacy += bytes([rex])
        rex = code[i]
        i += 1
    return legacy, rex, bytes(code[i:])


def apply_words(code: bytes, words: tuple[str, ...]) -> bytes:
    """Put prefix words on keystone's bytes: legacy prefixes in front (in the
    order written), REX bits merged into the REX byte before the opcode."""
    front = bytearray()
    rex_bits = None
    for w in words:
        lw = w.lower()
        if lw in LEGACY_WORDS:
            front.append(LEGACY_WORDS[lw])
            continue
        m = _REX_WORD.match(w)
        bits = 0x40
        for c in (m.group(1) or "").upper():
            bits |= {"W": 8, "R": 4, "X": 2, "B": 1}[c]
        rex_bits = bits if rex_bits is None else rex_bits | bits
    if rex_bits is None:
        return bytes(front) + code
    legacy, rex, rest = split_prefixes(code)
    rex = rex_bits if rex is None else rex | rex_bits
    return bytes(front) + legacy + bytes([rex]) + rest


def assemble_body(body: str, addr: int) -> bytes:
    """keystone, through the project's wrapper (its radix is process-global;
    the wrapper normalises literals and reports errors as AssemblyError)."""
    from vdso.asm_build import assemble_snippet
    return assemble_snippet(body, addr, name="<corpus line>")


def riprel_body(body: str) -> str | None:
    """The body with its one memory operand made rip-relative (a placeholder
    displacement; the real one is patched in per run), or None."""
    found = _BRACKET.findall(body)
    if len(found) != 1:
        return None
    inner = found[0][1:-1].strip()
    if ":" in inner:                      # "[fs:rdi]" style: keep the segment
        seg, _ = inner.split(":", 1)
        repl = f"[{seg.strip()}:rip + {_PLACEHOLDER_DISP:#x}]"
    else:
        repl = f"[rip + {_PLACEHOLDER_DISP:#x}]"
    return _BRACKET.sub(repl, body, count=1)


# --------------------------------------------------------------------------
# What an instruction writes
# --------------------------------------------------------------------------

# First operand is memory but only read.
_READ_FIRST = frozenset("""
    cmp test bt push call jmp ljmp lcall nop ptwrite mul div imul idiv ldmxcsr fxrstor fxrstor64
    xrstor xrstor64 xrstors xrstors64 clflush clflushopt clwb cldemote verr verw lgdt lidt lldt ltr
    lmsw invlpg prefetch prefetchw prefetchwt1 prefetchnta prefetcht0 prefetcht1 prefetcht2
    bndldx bndcl bndcu bndcn bndmk bndmov
""".split())
# x87 escapes (d8-df) that store; every other x87 memory form reads.
_X87_STORES = frozenset("""
    fst fstp fist fistp fisttp fbstp fnstcw fstcw fnstsw fstsw fnstenv fstenv fnsave fsave
""".split())
_STRING_STORES = {"movsb": 1, "movsw": 2, "movsd": 4, "movsq": 8,
                  "stosb": 1, "stosw": 2, "stosd": 4, "stosq": 8}
_STACK = frozenset(("push", "pushfq", "pushf", "call", "enter"))
_MASKMOV = {"maskmovdqu": 16, "maskmovq": 8}
# Architectural store sizes capstone gets wrong or leaves out.
_STORE_SIZE = {"fxsave": 512, "fxsave64": 512, "fnsave": 108, "fsave": 108,
               "fnstenv": 28, "fstenv": 28, "cmpxchg8b": 8, "cmpxchg16b": 16}
# Stores that #GP unless the destination is aligned (SDM); split placements
# do not apply to them.
ALIGNED = {"movaps": 16, "movapd": 16, "movdqa": 16, "movntps": 16, "movntpd": 16, "movntdq": 16,
           "cmpxchg16b": 16, "fxsave": 16, "fxsave64": 16}


@dataclass(frozen=True)
class MemRef:
    """A memory operand as capstone sees it (register names, not values)."""
    base: str | None
    index: str | None
    scale: int
    disp: int
    segment: str | None

    @property
    def rip(self) -> bool:
        return self.base in ("rip", "eip")

    @property
    def absolute(self) -> bool:
        return self.base is None and self.index is None


@dataclass(frozen=True)
class StoreInfo:
    """How one instruction's store is reached, from its decode."""
    mnemonic: str                 # without lock/rep
    text: str                     # capstone's full text
    length: int                   # capstone's length
    kind: str                     # explicit | string | stack | maskmov
    width: int                    # bytes written (first store)
    align: int                    # required alignment (1 = none)
    rep: bool
    addr32: bool                  # 0x67: 32-bit effective addresses
    opsize16: bool                # 0x66 without REX.W (16-bit operand size)
    dest: MemRef | None           # explicit destination
    source: MemRef | None         # memory source (push/call [mem], movs)
    regs: frozenset[str] = field(default_factory=frozenset)   # registers named or accessed
    bt_offset_reg: str | None = None   # bt* with a register bit offset
    enter_level: int = 0

    @property
    def moffs(self) -> bool:
        return self.kind == "explicit" and self.dest is not None and self.dest.absolute


def _memref(ins, op) -> MemRef:
    m = op.mem
    name = lambda r: ins.reg_name(r) if r else None   # noqa: E731
    return MemRef(name(m.base), name(m.index), m.scale, m.disp, name(m.segment))


def store_info(code: bytes, addr: int = 0) -> StoreInfo | str:
    """Classify the first instruction of ``code``; a string says why it is
    not a store skipcheck can place."""
    # decode with bytes after it, as in memory (capstone's rel32 reading of a
    # 0x66 near branch wants more bytes than the instruction has)
    ins = next(disassembler(True).disasm(bytes(code[:MAX_INSN_LEN]) + b"\xcc" * MAX_INSN_LEN, addr, 1), None)
    if ins is None:
        return "capstone cannot decode it"
    words = ins.mnemonic.split()
    rep = words[0] in ("rep", "repe", "repz", "repne", "repnz") and len(words) > 1
    mnem = words[-1]
    ops = list(ins.operands)
    mem_ops = [o for o in ops if o.type == X.X86_OP_MEM]
    try:
        r, w = ins.regs_access()
        regs = {ins.reg_name(x) for x in list(r) + list(w)}
    except capstone.CsError:
        regs = set()
    for o in ops:
        if o.type == X.X86_OP_REG:
            regs.add(ins.reg_name(o.reg))
        elif o.type == X.X86_OP_MEM:
            for x in (o.mem.base, o.mem.index):
                if x:
                    regs.add(ins.reg_name(x))
    pre, rex, _ = split_prefixes(code)
    addr32 = 0x67 in pre
    opsize16 = 0x66 in pre and not (rex is not None and rex & 8)
    common = dict(mnemonic=mnem, text=f"{ins.mnemonic} {ins.op_str}".strip(), length=ins.size,
                  rep=rep, addr32=addr32, opsize16=opsize16, regs=frozenset(regs))
    op0 = code[len(pre) + (1 if rex is not None else 0)]
    if mnem in _STRING_STORES and op0 in (0xA4, 0xA5, 0xAA, 0xAB):   # not SSE movsd
        src = _memref(ins, mem_ops[1]) if mnem.startswith("movs") and len(mem_ops) > 1 else None
        return StoreInfo(kind="string", width=_STRING_STORES[mnem], align=1, dest=None, source=src,
                         **common)
    if mnem in _MASKMOV:
        return StoreInfo(kind="maskmov", width=_MASKMOV[mnem], align=1, dest=None, source=None, **common)
    if mnem in _STACK:
        width = 2 if opsize16 else 8
        if mem_ops and mem_ops[0].size:
            width = mem_ops[0].size if mnem == "push" else width
        level = 0
        if mnem == "enter" and len(ops) > 1 and ops[1].type == X.X86_OP_IMM:
            level = ops[1].imm & 0x1F
        src = _memref(ins, mem_ops[0]) if mem_ops else None
        return StoreInfo(kind="stack", width=width, align=1, dest=None, source=src,
                         enter_level=level, **common)
    if not ops or ops[0].type != X.X86_OP_MEM:
        return f"'{common['text']}' is not a memory write"
    is_x87 = 0xD8 <= op0 <= 0xDF
    if (is_x87 and mnem not in _X87_STORES) or (not is_x87 and mnem in _READ_FIRST):
        return f"'{common['text']}' is not a memory write (its memory operand is only read)"
    if mnem == "pop":
        return f"'{common['text']}' (pop to memory) is not supported: it also reads the stack"
    width = _STORE_SIZE.get(mnem) or ops[0].size or 1
    bt_reg = None
    if mnem in ("bts", "btr", "btc") and len(ops) > 1 and ops[1].type == X.X86_OP_REG:
        bt_reg = ins.reg_name(ops[1].reg)
    return StoreInfo(kind="explicit", width=width, align=ALIGNED.get(mnem, 1),
                     dest=_memref(ins, ops[0]), source=None, bt_offset_reg=bt_reg, **common)


def line_problem(code: bytes, addr: int = 0) -> str | None:
    """Why bytes from a corpus line cannot be a skipcheck instruction."""
    if not code:
        return "assembles to no bytes"
    if len(code) > MAX_INSN_LEN:
        return f"assembles to {len(code)} bytes: more than 15, the CPU refuses such an instruction"
    why = unfaithful_reason(bytes(code))
    if why:
        return f"refused: {why}"
    n = skip_length(bytes(code) + b"\xcc" * 16)
    if n is None:
        n = capstone_length(code)
    if n is None:
        return f"capstone cannot decode {code.hex(' ')}"
    if n != len(code):
        return f"not exactly one instruction ({len(code)} bytes, the first instruction is {n})"
    return None


# --------------------------------------------------------------------------
# Crossing with prefixes
# --------------------------------------------------------------------------

@dataclass(frozen=True)
class Variant:
    """A prefix variant of a form: extra prefix words, or redundant ds
    prefixes up to a total length (15: the longest legal instruction; 16:
    one byte too long, which the CPU refuses)."""
    name: str                         # base | data16 | rex | rex.W | fs | gs | addr32 | len15 | len16
    words: tuple[str, ...] = ()
    pad_to: int | None = None

    def apply(self, code: bytes) -> bytes | None:
        out = apply_words(code, self.words)
        if self.pad_to is not None:
            n = self.pad_to - len(out)
            if n < (1 if self.pad_to > MAX_INSN_LEN else 0):
                return None
            out = b"\x3e" * n + out
        return out


BASE = Variant("base")
CROSS = (Variant("data16", ("data16",)), Variant("rex", ("rex",)), Variant("rex.W", ("rex.W",)),
         Variant("fs", ("fs",)), Variant("gs", ("gs",)), Variant("addr32", ("addr32",)),
         Variant("len15", pad_to=15), Variant("len16", pad_to=16))

_IZ = {(0, 0xC7), (0, 0x81), (0, 0x68), (0, 0x69)}          # operand-size immediates
_REL = {(0, 0xE8), (0, 0xE9)} | {(1, op) for op in range(0x80, 0x90)}
_DATA16_OK_0F = {0xA0, 0xA8, 0xA3, 0xA4, 0xA5, 0xAB, 0xAC, 0xAD, 0xB0, 0xB1, 0xB3, 0xBA, 0xBB,
                 0xC0, 0xC1} | set(range(0x90, 0xA0))


def _opkey(rest: bytes) -> tuple[int, int]:
    if rest[:1] == b"\x0f":
        if rest[1:2] in (b"\x38", b"\x3a"):
            return (2 if rest[1] == 0x38 else 3, rest[2] if len(rest) > 2 else -1)
        return (1, rest[1] if len(rest) > 1 else -1)
    return (0, rest[0] if rest else -1)


def variant_na(variant: Variant, code: bytes, info: StoreInfo) -> str | None:
    """Why a crossing variant does not apply to the form whose base bytes are
    ``code`` (None: it applies).  The rules keep the crafted bytes one
    instruction of a known length."""
    pre, rex, rest = split_prefixes(code)
    key = _opkey(rest)
    rex_w = rex is not None and bool(rex & 8)
    if variant.name == "data16":
        if any(b in pre for b in (0x66, 0xF2, 0xF3)):
            return "already has a 66/f2/f3 prefix"
        if key[0] == 0 and 0xD8 <= key[1] <= 0xDF:
            return "x87 instruction"
        if key[0] == 1 and key[1] not in _DATA16_OK_0F:
            return "0x66 is a mandatory prefix (another instruction) or #UD here"
        if key[0] in (2, 3) and key not in ((2, 0xF0), (2, 0xF1)):
            return "0x66 is a mandatory prefix (another instruction) here"
        if key in _IZ and not rex_w:
            return "0x66 would shrink the immediate (another length)"
        if key in _REL and not rex_w:
            return "0x66 makes a rel16 branch (AMD; another length): see the .byte corpus lines"
        return None
    if variant.name == "rex":
        if rex is not None:
            return "already has a REX prefix"
        if {"ah", "bh", "ch", "dh"} & info.regs:
            return "uses ah/bh/ch/dh, which a REX prefix renames"
        return None
    if variant.name == "rex.W":
        if rex_w:
            return "already REX.W"
        if 0x66 in pre and (key in _IZ or key in _REL):
            return "REX.W would widen the 16-bit immediate (another length)"
        if {"ah", "bh", "ch", "dh"} & info.regs:
            return "uses ah/bh/ch/dh, which a REX prefix renames"
        return None
    if variant.name in ("fs", "gs", "len15", "len16"):
        if any(b in _SEGMENT_BYTES for b in pre):
            return "already has a segment prefix"
        if variant.pad_to is not None and len(code) >= variant.pad_to:
            return f"already {len(code)} bytes"
        return None
    if variant.name == "addr32":
        if 0x67 in pre:
            return "already has 0x67"
        if key[0] == 0 and 0xA0 <= key[1] <= 0xA3:
            return "moffs: 0x67 changes the offset size (see the .byte corpus lines)"
        return None
    return None
