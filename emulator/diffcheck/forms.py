"""The memory accesses diffcheck makes fault: every store form of the
skipcheck corpus (emulator/skipcheck/corpus/builtin.txt, read here as plain
text: one instruction or `.byte` line per line, `#` comments), plus loads,
read-modify-writes that only read, and SSE loads, which that corpus (stores
only) does not hold.

Each form is assembled once (position independent: none of them is
RIP-relative) and decoded with capstone; a Placement then says where its
access goes: inside a page, or straddling a page end.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from emulator.diffcheck.operands import Decoded, Mem, decode_at
from emulator.diffcheck.records import DiffcheckError

CORPUS = Path(__file__).resolve().parent.parent / "skipcheck" / "corpus" / "builtin.txt"

# Loads and other reads the store corpus leaves out.  The memory operand is
# placed like a store's.
LOADS = """
mov rax, qword ptr [rdi]
mov r9d, dword ptr [rdi]
mov dx, word ptr [rdi]
movzx eax, byte ptr [rdi]
movsx r10, word ptr [rdi]
movsxd r11, dword ptr [rdi]
add rax, qword ptr [rdi]
sub edx, dword ptr [rdi]
adc r8, qword ptr [rdi]
and ax, word ptr [rdi]
cmp qword ptr [rdi], rax
cmp byte ptr [rdi], 0x41
test dword ptr [rdi], 0x100
bt qword ptr [rdi], 5
imul r9, qword ptr [rdi]
movdqu xmm0, xmmword ptr [rdi]
movups xmm1, xmmword ptr [rdi]
movaps xmm2, xmmword ptr [rdi]
movdqa xmm3, xmmword ptr [rdi]
lddqu xmm4, xmmword ptr [rdi]
movq xmm5, qword ptr [rdi]
movd xmm6, dword ptr [rdi]
movhps xmm7, qword ptr [rdi]
pinsrd xmm8, dword ptr [rdi], 2
paddd xmm9, xmmword ptr [rdi]
pxor xmm10, xmmword ptr [rdi]
comisd xmm11, qword ptr [rdi]
ptest xmm12, xmmword ptr [rdi]
lodsb
lodsq
scasb
cmpsq
repe cmpsb
rep lodsd
pop rax
pop qword ptr [rdi]
fld qword ptr [rdi]
fild dword ptr [rdi]
"""

# Forms that read the stack (their access is at rsp, not at their operand).
STACK_FORMS = {"push", "pushfq", "pushf", "call", "enter", "pop", "popfq"}
_LEGACY = frozenset((0x66, 0x67, 0xF0, 0xF2, 0xF3, 0x2E, 0x36, 0x3E, 0x26, 0x64, 0x65))
STRING = {"movs", "movsb", "movsw", "movsd", "movsq", "stos", "stosb", "stosw", "stosd", "stosq",
          "lods", "lodsb", "lodsw", "lodsd", "lodsq", "scas", "scasb", "scasw", "scasd", "scasq",
          "cmps", "cmpsb", "cmpsw", "cmpsd", "cmpsq"}


@dataclass(frozen=True)
class AccessForm:
    text: str                  # as written in the corpus
    source: str                # corpus:LINE or loads
    code: bytes
    insn: Decoded              # capstone's reading (its size may exceed len(code), see corpus_forms)

    @property
    def mnemonic(self) -> str:
        """Without capstone's prefix words ("rep movsb" -> "movsb")."""
        return self.insn.mnemonic.split()[-1]

    @property
    def prefix_rep(self) -> bool:
        return self.text.split()[0] in ("rep", "repe", "repne", "repz", "repnz") and self.is_string

    @property
    def is_string(self) -> bool:
        return self.mnemonic in STRING

    @property
    def is_stack(self) -> bool:
        return self.mnemonic in STACK_FORMS

    @property
    def locked(self) -> bool:
        """A lock prefix, or xchg with memory (always locked): split, it is a split lock."""
        raw = self.insn.raw
        k = 0
        while k < len(raw) and raw[k] in _LEGACY:
            k += 1
        return 0xF0 in raw[:k] or (self.mnemonic == "xchg" and bool(self.insn.mems))

    @property
    def mem(self) -> Mem | None:
        """The memory operand placed at the target (the destination, where there are two)."""
        mems = self.insn.mems
        if not mems:
            return None
        for m in mems:
            if m.write:
                return m
        return mems[0]


def _strip(line: str) -> str:
    return line.split("#", 1)[0].strip()


@lru_cache(maxsize=None)
def corpus_forms() -> tuple[AccessForm, ...]:
    """Every line of the skipcheck corpus and of LOADS, assembled and decoded."""
    from vdso.asm_build import assemble_snippet
    if not CORPUS.exists():
        raise DiffcheckError(f"diffcheck: the skipcheck corpus is missing ({CORPUS})")
    lines = [(f"corpus:{n}", _strip(t)) for n, t in enumerate(CORPUS.read_text().splitlines(), 1)]
    lines += [("loads", _strip(t)) for t in LOADS.splitlines()]
    texts = [(src, t) for src, t in lines if t]
    # One keystone run for all of them: each line is preceded by a label, and
    # the label addresses come back as a trailer of .quad (as asm_build does).
    body = []
    for k, (_src, t) in enumerate(texts):
        body += [f"dcf_{k}:", t]
    body.append("dcf_end:")
    body += [f".quad dcf_{k}" for k in range(len(texts))] + [".quad dcf_end"]
    blob = assemble_snippet("\n".join(body), 0, "<diffcheck forms>")
    n = len(texts) + 1
    marks = [int.from_bytes(blob[len(blob) - 8 * (n - k):len(blob) - 8 * (n - k - 1)], "little") for k in range(n)]
    out = []
    for k, (src, t) in enumerate(texts):
        code = blob[marks[k]:marks[k + 1]]
        insn = decode_at(code, 0)
        if insn is None:
            # capstone may want more bytes than the line has (66 e8: Intel's
            # rel32 where AMD and Unicorn read rel16): the CPU decides what runs.
            insn = decode_at(code + bytes(4), 0)
        if insn is not None and insn.size < len(code):
            insn = None
        if insn is None:
            raise DiffcheckError(f"diffcheck: {src}: {t!r} is not one instruction")
        out.append(AccessForm(t, src, code, insn))
    return tuple(out)
