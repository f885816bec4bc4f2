"""vdso/asm_build.py and its parts (asm_source, keystone_run, asm_program,
faithful): images, symbols, file:line errors, the faithfulness
check, and keystone's quirks (radix, RIP-relative symbols, crashes)."""
from __future__ import annotations

import ctypes
import io
import re

import pytest
from capstone import CS_ARCH_X86, CS_MODE_64, Cs
from capstone.x86 import X86_OP_MEM, X86_REG_RIP
from elftools.elf.elffile import ELFFile

import vdso.asm_build as asm_build
from vdso import keystone_run
from emulator.errors import AssemblyError, FaultpathError, UnfaithfulInstruction
from vdso.asm_build import assemble_snippet, build_image, check_faithful
from vdso.image import ABI_6_11, ABI_V14, PAGE_SIZE, RNG_DATA_OFFSET_6_15, VDSO_BASE

_cs = Cs(CS_ARCH_X86, CS_MODE_64)
_cs.detail = True


def _disasm(img, start, count=None):
    out = []
    for insn in _cs.disasm(img.text[start:], img.base + start):
        out.append(insn)
        if count and len(out) == count:
            break
    return out


def _text(img) -> tuple[int, int]:
    """Where the code is in the image: the ELF .text section, read back with
    pyelftools (the image is a whole ELF file: headers and tables first)."""
    sec = ELFFile(io.BytesIO(img.text)).get_section_by_name(".text")
    assert sec["sh_addr"] == sec["sh_offset"]
    return sec["sh_offset"], sec["sh_size"]


def _write(tmp_path, name, text):
    p = tmp_path / name
    p.write_text(text)
    return str(p)


# -- the built-in images ------------------------------------------------------

def test_builtin_image():
    img = build_image("builtin")
    assert img.name == "builtin" and img.abi == ABI_6_11 and img.base == VDSO_BASE
    assert img.text and len(img.text) % PAGE_SIZE == 0
    assert img.rng_data_offset == RNG_DATA_OFFSET_6_15 and img.rng_data_source == "assembled"
    for name in ("__vdso_getrandom", "__arch_chacha20_blocks_nostack", "__vgetrandom_opaque"):
        assert name in img.symbols
    assert img.has_symbol("getrandom")
    start, size = _text(img)
    assert img.symbols["__vdso_getrandom"] == img.symbols["__vgetrandom_opaque"] == start
    assert not any(name.startswith((".L", "__fp_")) for name in img.symbols)
    # Every instruction of the code has a source line; int3 fills the page after it.
    assert max(img.source_lines) < start + size
    assert set(img.text[start + size:]) == {0xCC}
    for insn in _cs.disasm(img.text[start:start + size], img.base + start):
        where = img.source_lines[insn.address - img.base]
        assert re.fullmatch(r"asm/(vgetrandom|chacha20_blocks)\.s:\d+", where)
    first = img.source_lines[img.symbols["__arch_chacha20_blocks_nostack"]]
    assert first.startswith("asm/chacha20_blocks.s:")


def test_source_lines_point_at_the_instruction_text():
    img = build_image("builtin")
    files = {}
    for off, where in sorted(img.source_lines.items())[:60]:
        path, line = where.rsplit(":", 1)
        text = files.setdefault(path, (asm_build.PROJECT_DIR / path).read_text().splitlines())
        src = text[int(line) - 1].split("#")[0].split()[0]
        insn = _disasm(img, off, 1)[0]
        # keystone's spelling and capstone's agree on the mnemonic (je == jz etc.)
        alias = {"jz": "je", "jnz": "jne", "jae": "jae", "jb": "jb"}
        assert alias.get(src, src) == insn.mnemonic, (where, src, insn.mnemonic)


def test_builtin_v14_has_the_four_argument_entry():
    img = build_image("builtin-v14")
    assert img.abi == ABI_V14 and img.name == "builtin-v14"
    entry, body = img.symbols["__vdso_getrandom"], img.symbols["__vgetrandom_opaque"]
    assert entry != body
    mov, jmp = _disasm(img, entry, 2)
    assert (mov.mnemonic, mov.op_str) == ("mov", "r8d, 0x90")
    assert jmp.mnemonic == "jmp" and int(jmp.op_str, 16) == img.base + body
    assert img.source_lines[entry].startswith("asm/vgetrandom_v14.s:")
    # The body is shared, not duplicated.
    b611 = build_image("builtin")
    n611 = len([o for o, w in b611.source_lines.items() if w.startswith("asm/vgetrandom.s")])
    n14 = len([o for o, w in img.source_lines.items() if w.startswith("asm/vgetrandom.s")])
    assert n611 == n14


def test_rng_data_references_are_exact():
    """keystone's sym_resolver would get these wrong (by 4, addend dropped);
    the label-relative definition the builder uses gets them right."""
    img = build_image("builtin")
    targets = {}
    start = _text(img)[0]
    for insn in _cs.disasm(img.text[start:img.symbols["__arch_chacha20_blocks_nostack"]], start):
        for op in insn.operands:
            if op.type == X86_OP_MEM and op.mem.base == X86_REG_RIP:
                targets.setdefault(insn.address + insn.size + op.mem.disp, []).append(op.size)
    assert set(targets) == {RNG_DATA_OFFSET_6_15, RNG_DATA_OFFSET_6_15 + 8}
    assert set(targets[RNG_DATA_OFFSET_6_15]) == {8}            # generation, u64
    assert set(targets[RNG_DATA_OFFSET_6_15 + 8]) == {1}        # is_ready, u8


def test_builds_return_independent_objects():
    a, b = build_image("builtin"), build_image("builtin")
    a.symbols["x"] = 1
    assert "x" not in b.symbols


# -- user files ---------------------------------------------------------------

def test_user_file_assembles_with_symbols_and_lines(tmp_path):
    path = _write(tmp_path, "mine.s", """\
# comment
.text
.globl __vdso_getrandom
.type __vdso_getrandom, @function
__vdso_getrandom:
    mov eax, 10              # decimal means decimal
    add rsp, 16
    sub rsp, 0x10
    mov ecx, dword ptr [rsi + 16]
    movzx edx, byte ptr [rip + vdso_rng_data + 8]
    ret
.size __vdso_getrandom, .-__vdso_getrandom
helper: mov eax, 10h ; mov edx, 0b101 ; mov esi, 017
    ret
table:
    .byte 0xc5, 0xf1, 0xfe, 0xc2     # looks like VEX, but it is data
    .quad 10
""")
    img = build_image(path)
    assert img.name == path and img.abi == ABI_6_11
    t0 = _text(img)[0]
    assert img.symbols == {"__vdso_getrandom": t0, "helper": img.symbols["helper"],
                           "table": img.symbols["table"]}
    insns = _disasm(img, t0, 6)
    assert [(i.mnemonic, i.op_str) for i in insns[:4]] == [
        ("mov", "eax, 0xa"), ("add", "rsp, 0x10"), ("sub", "rsp, 0x10"),
        ("mov", "ecx, dword ptr [rsi + 0x10]")]
    assert [i.mnemonic for i in insns[4:]] == ["movzx", "ret"]
    # insns were decoded at their address in the image: target = rng + 8
    assert insns[4].address + insns[4].size + insns[4].operands[1].mem.disp \
        == img.base + RNG_DATA_OFFSET_6_15 + 8
    helper = _disasm(img, img.symbols["helper"], 3)
    assert [i.op_str for i in helper] == ["eax, 0x10", "edx, 5", "esi, 0xf"]
    assert img.source_lines[t0] == f"{path}:6"
    assert img.source_lines[helper[2].address - img.base] == f"{path}:13"
    t = img.symbols["table"]
    assert img.text[t:t + 12] == bytes.fromhex("c5f1fec2") + (10).to_bytes(8, "little")
    assert t not in img.source_lines                    # data is not decoded


def test_user_file_gets_our_chacha_linked(tmp_path):
    path = _write(tmp_path, "caller.s", "f:\n    call __arch_chacha20_blocks_nostack\n    ret\n")
    img = build_image(path)
    assert "__arch_chacha20_blocks_nostack" in img.symbols
    target = img.symbols["__arch_chacha20_blocks_nostack"]
    assert img.source_lines[target].startswith("asm/chacha20_blocks.s:")


def test_a_copy_of_the_builtin_source_builds_the_same_code(tmp_path):
    """A user's copy of asm/vgetrandom.s (our ChaCha20 linked in) is the builtin image."""
    src = (asm_build.ASM_DIR / "vgetrandom.s").read_text()
    path = _write(tmp_path, "mutant.s", src)
    img, ref = build_image(path), build_image("builtin")
    assert img.text == ref.text and img.symbols == ref.symbols
    t0 = _text(img)[0]
    assert img.source_lines[t0] == f"{path}:{ref.source_lines[t0].rsplit(':', 1)[1]}"


@pytest.mark.parametrize("body,line,pattern", [
    ("f:\n    nop\n    mov eax, 1\n    movx eax, ebx\n    ret\n", 4, r"mnemonic"),
    ("f:\n    nop\n    jmp nowhere\n    ret\n", 3, r"undefined symbol 'nowhere'"),
    ("f:\n    mov eax, [rip + nothere + 8]\n", 2, r"undefined symbol 'nothere'"),
    ("f:\n    nop\nf:\n    ret\n", 3, r"redefined"),
    ("f:\n    mov eax, [rip + .Lx]\n.Lx: ret\n", 2, r"\.L label"),
    ("f:\n  .rept 3\n    nop\n    bogus eax\n  .endr\n  ret\n", 4, r"mnemonic"),
    ("f:\n    nop\n.data\n.byte 1\n", 3, r"only the \.text section"),
    ("f:\n    nop\n    .zero -1\n", 3, r"out of range"),
    ("f:\n    nop\n    .p2align 64\n", 3, r"out of range"),
    ("f:\n    nop\n  .endif\n", 3, r"without a matching"),
    # .type/.size feed the ELF symbol table (vdso/asm_symbols.py)
    ("f: ret\n.type g, @function\n", 2, r"\.type g: no label g"),
    ("f: ret\n.type f, @gnu_indirect_function\n", 2, r"symbol type must be"),
    ("f: ret\n.size f, 3*2\n", 2, r"only `\.size f, \.-f`"),
    (".size f, .-f\nf: ret\n", 1, r"the label comes after"),
    ("f:\n.rept 2\n nop\n.size f, .-f\n.endr\n", 4, r"inside a \.if/\.rept block"),
], ids=["syntax", "undefined", "undefined-rip", "duplicate", "dot-L-rip", "in-rept",
        "section", "zero-neg", "p2align", "endif",
        "type-no-label", "type-bad", "size-bad", "size-before", "size-in-block"])
def test_assembly_errors_carry_file_and_line(tmp_path, body, line, pattern):
    path = _write(tmp_path, "bad.s", body)
    with pytest.raises(AssemblyError) as exc:
        build_image(path)
    msg = str(exc.value)
    assert msg.startswith(f"{path}:{line}: "), msg
    assert re.search(pattern, msg), msg
    assert isinstance(exc.value, FaultpathError)


@pytest.mark.parametrize("insn,pattern", [
    ("vpaddd xmm0, xmm1, xmm2", r"VEX\.128"),
    ("vmovdqu ymm0, ymmword ptr [rax]", r"VEX\.256"),
    ("vpaddq zmm0, zmm1, zmm2", r"EVEX"),
    ("andn eax, ebx, ecx", r"VEX"),                       # BMI1 is VEX-encoded too
    ("lock bts rax, rcx", r"lock bt"),          # register destination: aborts Unicorn 2.1.4
    ("lock btr eax, ecx", r"lock bt"),
])
def test_unfaithful_instructions_are_refused(tmp_path, insn, pattern):
    path = _write(tmp_path, "avx.s", f"f:\n    nop\n    {insn}\n    ret\n")
    with pytest.raises(UnfaithfulInstruction) as exc:
        build_image(path)
    assert str(exc.value).startswith(f"{path}:3: "), exc.value
    assert re.search(pattern, str(exc.value))


@pytest.mark.parametrize("insn", ["lock bts qword ptr [rax], 5", "lock bts qword ptr [rax], rcx",
                                  "lock btr dword ptr [rax], ecx"])
def test_lock_bt_with_a_memory_destination_is_allowed(tmp_path, insn):
    """Measured: Unicorn 2.1.4 runs these correctly; only a register
    destination (which the CPU refuses with #UD anyway) aborts it."""
    path = _write(tmp_path, "ok.s", f"f:\n    {insn}\n    ret\n")
    img = build_image(path)
    assert img.symbols == {"f": _text(img)[0]}


def test_unfaithful_in_a_block_names_the_block(tmp_path):
    path = _write(tmp_path, "rept.s", "f:\n  .rept 2\n    nop\n    vaddps ymm0, ymm1, ymm2\n  .endr\n  ret\n")
    with pytest.raises(UnfaithfulInstruction, match=rf"^{re.escape(path)}:2: "):
        build_image(path)


def test_dot_S_files_without_cpp(tmp_path):
    img = build_image(_write(tmp_path, "ok.S", "f: ret  # if this were cpp\n"))
    assert img.symbols == {"f": _text(img)[0]}
    path = _write(tmp_path, "cpp.S", "f:\n#define X 1\n    ret\n")
    with pytest.raises(AssemblyError, match=rf"^{re.escape(path)}:2: C preprocessor"):
        build_image(path)


def test_bad_paths(tmp_path):
    with pytest.raises(AssemblyError, match="no such file"):
        build_image(str(tmp_path / "missing.s"))
    with pytest.raises(AssemblyError, match="not an assembly source"):
        build_image("/bin/true")


def test_keystone_crash_becomes_an_assembly_error(tmp_path, monkeypatch):
    real = keystone_run.ks_asm

    def crashing(text, addr):
        if "int3" in text:
            ctypes.string_at(0)                           # SIGSEGV, like keystone on `.text`
        return real(text, addr)
    monkeypatch.setattr(keystone_run, "ks_asm", crashing)
    path = _write(tmp_path, "crash.s", "f:\n    nop\n    nop\n    int3\n    ret\n")
    with pytest.raises(AssemblyError, match=rf"^{re.escape(path)}:4: keystone crashed \(SIGSEGV\)"):
        build_image(path)


def test_dot_text_does_not_crash_keystone(tmp_path):
    # Bare `.text` segfaults keystone 0.9.2; the builder drops it.
    path = _write(tmp_path, "t.s", ".text\nf: ret\n.section .text\ng: ret\n")
    img = build_image(path)
    t0 = _text(img)[0]
    assert img.symbols == {"f": t0, "g": t0 + 1}


# -- snippets, keystone's radix ----------------------------------------------

def test_assemble_snippet():
    code = assemble_snippet("mov eax, 10\nadd rsp, 16\nret", 0x1000)
    assert code == bytes.fromhex("b80a000000" "4883c410" "c3")
    # vdso_rng_data is absolute: RIP-relative from any address.
    addr = VDSO_BASE + 0x123
    code = assemble_snippet("cmp byte ptr [rip + vdso_rng_data + 8], 0", addr)
    insn = next(_cs.disasm(code, addr))
    assert insn.address + insn.size + insn.operands[0].mem.disp == VDSO_BASE + RNG_DATA_OFFSET_6_15 + 8
    with pytest.raises(AssemblyError, match=r"^<snippet>:2: "):
        assemble_snippet("nop\nfoo bar\n", 0)
    with pytest.raises(AssemblyError, match=r"^hook\.s:1: "):
        assemble_snippet("jmp nowhere", 0, name="hook.s")


def test_radix_does_not_depend_on_other_keystone_users():
    """A sym_resolver installed anywhere flips keystone to radix 16 (issues
    #481/#538); decimal literals must still mean decimal for us."""
    from keystone import KS_ARCH_X86, KS_MODE_64, Ks
    other = Ks(KS_ARCH_X86, KS_MODE_64)
    other.sym_resolver = lambda name, value: False
    assert bytes(other.asm("mov eax, 10", 0)[0]) == bytes.fromhex("b810000000")   # the bug
    assert assemble_snippet("mov eax, 10", 0) == bytes.fromhex("b80a000000")


def test_check_faithful():
    check_faithful(bytes.fromhex("90c3"), 0)
    with pytest.raises(UnfaithfulInstruction, match="VEX"):
        check_faithful(bytes.fromhex("c5f1fec2"), 0)
    with pytest.raises(UnfaithfulInstruction, match="do not decode"):
        check_faithful(bytes.fromhex("90ff"), 0)
