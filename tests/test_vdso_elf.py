"""Our images are complete vDSO ELF files (vdso/elf_emit.py, asm_symbols.py,
cfi.py, eh_frame.py, elf_hash.py), checked with readers that share no code
with the writer: GNU readelf and objdump, pyelftools, gdb reading the image
from a live process's memory, glibc's dynamic loader (dlopen of the image
file, lookups through its hash tables and versions), the running kernel's own
[vdso] as the model, and the CPU's stack during real runs for the CFI."""
from __future__ import annotations

import io
import os
import re
import shutil
import struct
import subprocess
from pathlib import Path

import pytest
from elftools.dwarf.callframe import FDE
from elftools.elf.elffile import ELFFile
from unicorn import UC_ARCH_X86, UC_HOOK_CODE, UC_HOOK_INSN, UC_MODE_64, UC_PROT_ALL, Uc
from unicorn.x86_const import (UC_X86_INS_SYSCALL, UC_X86_REG_R8, UC_X86_REG_R12, UC_X86_REG_R13,
                               UC_X86_REG_R14, UC_X86_REG_R15, UC_X86_REG_RAX, UC_X86_REG_RBP,
                               UC_X86_REG_RBX, UC_X86_REG_RCX, UC_X86_REG_RDI, UC_X86_REG_RDX,
                               UC_X86_REG_RIP, UC_X86_REG_RSI, UC_X86_REG_RSP)

from clients import glibc_cache
from vdso import elf_hash
from vdso.asm_build import build_image
from vdso.asm_source import ASM_DIR
from vdso.elf_symbols import image_elf, read_symbol_file, read_symbols
from vdso.errors import ImageError
from vdso.image import ABI_6_11, PAGE_SIZE, ElfSymbol

HERE = Path(__file__).resolve().parent
KINDS = ["builtin", "builtin-v14", str(ASM_DIR / "mutants" / "no_key_erasure.patch")]
KIND_IDS = ["builtin", "builtin-v14", "mutant"]
EXPORTS = ("__vdso_getrandom", "getrandom")


def _elf(img) -> ELFFile:
    return ELFFile(io.BytesIO(bytes(img.text)))


def _text(img) -> tuple[int, int]:
    sec = _elf(img).get_section_by_name(".text")
    return sec["sh_offset"], sec["sh_size"]


def _file(img, tmp_path, name="image.so") -> str:
    path = tmp_path / name
    path.write_bytes(bytes(img.text))
    return str(path)


def _run(cmd, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "LC_ALL": "C"}, **kw)


def _need(tool):
    if shutil.which(tool) is None:
        pytest.skip(f"{tool} not installed")


# -- GNU readelf --------------------------------------------------------------

@pytest.mark.parametrize("kind", KINDS, ids=KIND_IDS)
def test_readelf_sees_a_vdso(kind, tmp_path):
    _need("readelf")
    img = build_image(kind)
    r = _run(["readelf", "-W", "-h", "-l", "-S", "-s", "--dyn-syms", "-V", "-d", "-n", _file(img, tmp_path)])
    assert r.returncode == 0 and not r.stderr, r.stderr
    out = r.stdout
    assert re.search(r"Type:\s+DYN \(Shared object file\)", out)
    assert re.search(r"Machine:\s+Advanced Micro Devices X86-64", out)
    segments = out.split("Program Headers:")[1].split("Section to Segment")[0]
    phdrs = re.findall(r"^\s+(\w+)\s+0x", segments, re.M)
    assert phdrs == ["LOAD", "DYNAMIC", "NOTE", "GNU_EH_FRAME"]
    load = re.search(r"^\s+LOAD\s+(0x\w+) (0x\w+) 0x\w+ (0x\w+) (0x\w+) (.+?) 0x1000$", out, re.M)
    assert [int(x, 16) for x in load.groups()[:4]] == [0, 0, len(img.text), len(img.text)]
    assert load.group(5).strip() == "R E"
    dyn = _readelf_symbols(out, ".dynsym")
    getrandom = dyn["__vdso_getrandom@@LINUX_2.6"]
    assert getrandom[1:4] == ("FUNC", "GLOBAL", "DEFAULT") and getrandom[0] == img.symbols["__vdso_getrandom"]
    assert dyn["getrandom@@LINUX_2.6"][:4] == (getrandom[0], "FUNC", "WEAK", "DEFAULT")
    assert dyn["getrandom@@LINUX_2.6"][4] == getrandom[4] > 0
    assert dyn["LINUX_2.6"][1:3] == ("OBJECT", "GLOBAL")
    static = _readelf_symbols(out, ".symtab")
    chacha = static["__arch_chacha20_blocks_nostack"]
    assert chacha[:3] == (img.symbols["__arch_chacha20_blocks_nostack"], "FUNC", "LOCAL") and chacha[4] > 0
    assert re.search(r"Flags: BASE\s+Index: 1\s+Cnt: 1\s+Name: linux-vdso\.so\.1", out)
    assert re.search(r"Flags: none\s+Index: 2\s+Cnt: 1\s+Name: LINUX_2\.6", out)
    assert "Library soname: [linux-vdso.so.1]" in out and "(VERDEFNUM)          2" in out
    for tag in ("(HASH)", "(GNU_HASH)", "(SYMTAB)", "(STRTAB)", "(VERSYM)", "(VERDEF)"):
        assert tag in out
    assert re.search(r"NT_GNU_BUILD_ID.*\n?\s*Build ID: [0-9a-f]{40}", out)


def _readelf_symbols(out: str, table: str) -> dict[str, tuple]:
    """name -> (value, type, bind, visibility, size) from readelf -s."""
    block = out.split(f"Symbol table '{table}'")[1].split("\n\n")[0]
    rows = {}
    for m in re.finditer(r"^\s+\d+: ([0-9a-f]+)\s+(\d+) (\w+)\s+(\w+)\s+(\w+)\s+\S+ (\S+)$", block, re.M):
        rows[m.group(6)] = (int(m.group(1), 16), m.group(3), m.group(4), m.group(5), int(m.group(2)))
    return rows


# -- the running kernel's own vDSO as the model -------------------------------

def test_structure_matches_the_host_vdso_field_by_field(host_image):
    """Every section, segment, dynamic tag and version record the two have in
    common has the same type, flags, links and meaning; the only differences
    are the kernel's other functions (and its distribution's RUNPATH) and our
    full .symtab."""
    ours, host = _elf(build_image("builtin")), _elf(host_image)
    for f in ("e_type", "e_machine", "e_version", "e_entry", "e_flags", "e_ehsize", "e_phentsize", "e_shentsize"):
        assert ours.header[f] == host.header[f], f
    assert ours.header["e_ident"] == host.header["e_ident"]
    assert [(s["p_type"], s["p_flags"], s["p_align"]) for s in ours.iter_segments()] == \
        [(s["p_type"], s["p_flags"], s["p_align"]) for s in host.iter_segments()]
    for elf in (ours, host):                     # each non-LOAD segment is exactly its section
        for seg, sec in zip(list(elf.iter_segments())[1:], (".dynamic", ".note", ".eh_frame_hdr")):
            s = elf.get_section_by_name(sec)
            assert (seg["p_offset"], seg["p_vaddr"], seg["p_filesz"]) == (s["sh_offset"], s["sh_addr"], s["sh_size"])
    names = {s.name for s in ours.iter_sections()} - {""}
    host_names = {s.name for s in host.iter_sections()} - {""}
    assert names - host_names == {".symtab", ".strtab"}
    for name in names & host_names:
        a, b = ours.get_section_by_name(name), host.get_section_by_name(name)
        for f in ("sh_type", "sh_flags", "sh_entsize", "sh_info"):
            assert a[f] == b[f], (name, f)
        link = [e.get_section(s["sh_link"]).name if s["sh_link"] else "" for e, s in ((ours, a), (host, b))]
        assert link[0] == link[1], (name, link)
        if name != ".text":
            assert a["sh_addralign"] == b["sh_addralign"], name
    tags = [{t.entry.d_tag: t.entry.d_val for t in e.get_section_by_name(".dynamic").iter_tags()}
            for e in (ours, host)]
    assert set(tags[1]) - set(tags[0]) <= {"DT_RUNPATH", "DT_RPATH"} and set(tags[0]) <= set(tags[1])
    for tag in ("DT_FLAGS", "DT_FLAGS_1", "DT_VERDEFNUM", "DT_SYMENT", "DT_SYMBOLIC"):
        assert tags[0][tag] == tags[1][tag], tag
    verdefs = [[(vd["vd_flags"], vd["vd_ndx"], vd["vd_cnt"], next(aux).name)
                for vd, aux in e.get_section_by_name(".gnu.version_d").iter_versions()] for e in (ours, host)]
    assert verdefs[0] == verdefs[1] == [(1, 1, 1, "linux-vdso.so.1"), (0, 2, 1, "LINUX_2.6")]
    for e in (ours, host):
        versym = e.get_section_by_name(".gnu.version")
        assert [versym.get_symbol(k)["ndx"] for k in range(versym.num_symbols())][1:] == \
            [2] * (versym.num_symbols() - 1)
        dynsym = {s.name: s for s in e.get_section_by_name(".dynsym").iter_symbols()}
        v = dynsym["LINUX_2.6"]
        assert (v["st_info"]["type"], v["st_info"]["bind"], v["st_shndx"]) == ("STT_OBJECT", "STB_GLOBAL", "SHN_ABS")
        a, b = dynsym["__vdso_getrandom"], dynsym["getrandom"]
        assert (a["st_value"], a["st_size"]) == (b["st_value"], b["st_size"])
        assert (a["st_info"]["bind"], b["st_info"]["bind"]) == ("STB_GLOBAL", "STB_WEAK")
    # the CIE is the same record, byte for byte; the search table uses the same encodings
    cies = []
    for e in (ours, host):
        data = e.get_section_by_name(".eh_frame").data()
        cies.append(data[:4 + struct.unpack_from("<I", data)[0]])
        assert e.get_section_by_name(".eh_frame_hdr").data()[:4] == bytes([1, 0x1B, 0x03, 0x3B])
    assert cies[0] == cies[1]


def test_hash_tables_reproduce_the_kernels(host_image):
    """The kernel's linker built its tables over its 13 exports: ours, built
    over the same names in the same order, are the same .gnu.hash, and a
    .hash with the same bucket of every name."""
    host = _elf(host_image)
    names = [s.name.encode() for s in host.get_section_by_name(".dynsym").iter_symbols()]
    assert elf_hash.gnu_table(names, 1) == host.get_section_by_name(".gnu.hash").data()
    assert elf_hash.gnu_hash_order(names[1:]) == list(range(len(names) - 1))
    for table in (host.get_section_by_name(".hash").data(), elf_hash.sysv_table(names)):
        nb, nc = struct.unpack_from("<II", table)
        words = struct.unpack_from(f"<{nb + nc}I", table, 8)
        buckets, chains = words[:nb], words[nb:]
        for b in range(nb):
            seen, k = set(), buckets[b]
            while k:
                seen.add(k)
                k = chains[k]
            assert seen == {i for i in range(1, nc) if elf_hash.sysv_hash(names[i]) % nb == b}


# -- pyelftools ----------------------------------------------------------------

@pytest.mark.parametrize("kind", KINDS, ids=KIND_IDS)
def test_pyelftools_finds_the_exports_through_both_hash_tables(kind):
    img = build_image(kind)
    elf = _elf(img)
    for table in (".gnu.hash", ".hash"):
        sec = elf.get_section_by_name(table)
        for name in EXPORTS:
            sym = sec.get_symbol(name)
            assert sym is not None and sym["st_value"] == img.symbols["__vdso_getrandom"], (table, name)
        assert sec.get_symbol("__arch_chacha20_blocks_nostack") is None
        assert sec.get_symbol("clock_gettime") is None


@pytest.mark.parametrize("kind", KINDS, ids=KIND_IDS)
def test_read_symbols_gives_the_symbol_table(kind):
    img = build_image(kind)
    raw, symbols = image_elf(img)
    assert raw == img.text
    by_name = {s.name: s for s in symbols}
    for name, off in img.symbols.items():
        assert by_name[name].offset == off
    entry = by_name["__vdso_getrandom"]
    assert by_name["getrandom"] == ElfSymbol("getrandom", entry.offset, entry.size, "FUNC", "WEAK", "LINUX_2.6")
    assert (entry.bind, entry.version) == ("GLOBAL", "LINUX_2.6")
    assert by_name["__arch_chacha20_blocks_nostack"].bind == "LOCAL"
    assert by_name["__arch_chacha20_blocks_nostack"].version is None


def test_read_symbol_file_for_debug_files(tmp_path):
    """What gdb's --symbols FILE takes: any ELF file on disk (a dumped image
    here); bad input is one ImageError line."""
    img = build_image("builtin")
    assert read_symbol_file(_file(img, tmp_path)) == image_elf(img)[1]
    junk = tmp_path / "junk.so"
    junk.write_bytes(b"\x7fELF" + bytes(12))
    for path, pattern in ((str(tmp_path / "missing"), "No such file"), (str(junk), "ELF")):
        with pytest.raises(ImageError, match=pattern) as exc:
            read_symbol_file(path)
        assert "\n" not in str(exc.value)


def test_read_symbols_of_the_host_vdso(host_image):
    symbols = {s.name: s for s in read_symbols(bytes(host_image.text), "host")}
    assert symbols["__vdso_getrandom"].version == "LINUX_2.6"
    assert symbols["__vdso_getrandom"].offset == host_image.symbols["__vdso_getrandom"]
    assert symbols["getrandom"].bind == "WEAK"


# -- GNU objdump ---------------------------------------------------------------

@pytest.mark.parametrize("kind", KINDS, ids=KIND_IDS)
def test_objdump_disassembles_exactly_our_code(kind, tmp_path):
    """objdump's disassembly of .text is the code the emulator runs, its
    labels are our function symbols, and each function's size ends on its
    last instruction (a ret or a jmp)."""
    _need("objdump")
    img = build_image(kind)
    r = _run(["objdump", "-d", "-z", "-w", "-M", "intel", "--insn-width=15", "-j", ".text",
              _file(img, tmp_path)])
    assert r.returncode == 0, r.stderr
    code, labels, last = bytearray(), {}, {}
    current = None
    for line in r.stdout.splitlines():
        if m := re.match(r"^([0-9a-f]+) <([^>]+)>:$", line):
            current = m.group(2)
            labels[current] = int(m.group(1), 16)
        elif m := re.match(r"^\s+([0-9a-f]+):\t((?:[0-9a-f]{2} )+)\s*\t?(\S*)", line):
            raw = bytes.fromhex(m.group(2))
            assert int(m.group(1), 16) == img.base - img.base + _text(img)[0] + len(code)
            code += raw
            last[current] = (int(m.group(1), 16) + len(raw), m.group(3))
    start, size = _text(img)
    assert bytes(code) == img.text[start:start + size]
    elf_syms = {s.name: s for s in image_elf(img)[1]}
    for name, addr in labels.items():
        assert addr == elf_syms[name].offset
    for name in ("__vgetrandom_opaque", "__arch_chacha20_blocks_nostack"):
        s = elf_syms[name]
        ends = [(end, mnem) for end, mnem in last.values() if end == s.offset + s.size]
        assert ends and ends[0][1] in ("ret", "jmp"), (name, ends)


# -- glibc's dynamic loader ---------------------------------------------------

def _glibcs():
    out = [pytest.param(None, id="host-glibc")]
    cache = glibc_cache.load()
    out.append(pytest.param(cache, id="glibc-2.41",
                            marks=pytest.mark.skipif(cache is None or not cache.ready,
                                                     reason="glibc 2.41 not fetched (make glibc)")))
    return out


def _with_gnu_stack(raw: bytes) -> bytes:
    """The image with its PT_NOTE turned into a PT_GNU_STACK (RW).  glibc
    2.41's dlopen refuses an object without PT_GNU_STACK ("cannot enable
    executable stack"); the kernel's vDSO has none, as ours, because the
    loader never maps a vDSO through dlopen.  The lookup structures are
    untouched."""
    out = bytearray(raw)
    phoff, = struct.unpack_from("<Q", out, 32)
    phnum, = struct.unpack_from("<H", out, 56)
    for k in range(phnum):
        at = phoff + 56 * k
        if struct.unpack_from("<I", out, at)[0] == 4:           # PT_NOTE
            struct.pack_into("<II", out, at, 0x6474E551, 6)    # PT_GNU_STACK, RW
    return bytes(out)


@pytest.mark.skipif(os.uname().machine != "x86_64", reason="runs the image natively")
@pytest.mark.parametrize("glibc", _glibcs())
@pytest.mark.parametrize("kind", KINDS, ids=KIND_IDS)
def test_glibc_loader_binds_the_exports(kind, glibc, tmp_path):
    """dlopen + dlvsym run glibc's own symbol lookup (.gnu.hash, versions);
    the params query then runs our code natively through what it found."""
    _need("gcc")
    flags = glibc_cache.compile_flags(glibc) if glibc else ["-O1"]
    prog = tmp_path / "dlopen"
    build = _run(["gcc", *flags, "-o", str(prog), str(HERE / "elf" / "vdso_dlopen.c"), "-ldl"])
    assert build.returncode == 0, build.stderr
    img = build_image(kind)
    raw = bytes(img.text) if glibc is None else _with_gnu_stack(bytes(img.text))
    path = tmp_path / "image.so"
    path.write_bytes(raw)
    names = ["__vdso_getrandom@LINUX_2.6", "getrandom@LINUX_2.6", "__vdso_getrandom", "getrandom",
             "__vdso_getrandom@LINUX_2.5", "__arch_chacha20_blocks_nostack", "__vgetrandom_opaque"]
    params = ["params"] if img.abi == ABI_6_11 else []           # v14 had no params query
    r = _run([str(prog), str(path), *names, *params])
    assert r.returncode == 0, r.stdout + r.stderr
    lines = dict(line.split(" ", 1) for line in r.stdout.splitlines())
    entry = f"+{img.symbols['__vdso_getrandom']:#x}"
    assert [lines[n] for n in names] == [entry] * 4 + ["-"] * 3
    if params:
        assert lines["params"] == "ret=0 size=144 prot=0x3 flags=0x28"


# -- gdb, reading the image from a process's memory --------------------------

@pytest.fixture(scope="module")
def harness(tmp_path_factory):
    _need("gcc")
    if os.uname().machine != "x86_64":
        pytest.skip("runs the image natively")
    prog = tmp_path_factory.mktemp("harness") / "vdso_harness"
    r = _run(["gcc", "-O1", "-g", "-Wall", "-o", str(prog), str(HERE / "elf" / "vdso_harness.c")])
    assert r.returncode == 0, r.stderr
    return str(prog)


@pytest.mark.parametrize("kind", KINDS, ids=KIND_IDS)
def test_the_image_runs_natively_where_the_kernel_would_map_it(kind, harness, tmp_path):
    img = build_image(kind)
    r = _run([harness, _file(img, tmp_path), f"{img.symbols['__vdso_getrandom']:x}", "100"])
    assert r.returncode == 0 and r.stdout.startswith("ret=100 "), r.stdout + r.stderr


@pytest.mark.parametrize("kind", KINDS, ids=KIND_IDS)
def test_gdb_loads_symbols_from_memory_and_unwinds(kind, harness, tmp_path):
    """gdb's add-symbol-file-from-memory reads the ELF image from the live
    process (as it does for [vdso]): it breaks on the static ChaCha20
    function, and its DWARF unwinder walks our CFI back to main."""
    _need("gdb")
    img = build_image(kind)
    cmds = ["set pagination off", "set confirm off", "break image_ready", "run",
            "add-symbol-file-from-memory image_base", "break __arch_chacha20_blocks_nostack",
            "continue", "bt", "info symbol $pc", "frame 1", "info frame"]
    argv = ["gdb", "-batch", "-nx"] + [a for c in cmds for a in ("-ex", c)]
    r = _run(argv + ["--args", harness, _file(img, tmp_path), f"{img.symbols['__vdso_getrandom']:x}", "100"])
    out = r.stdout
    if "ptrace" in out + r.stderr and "Operation not permitted" in out + r.stderr:
        pytest.skip("ptrace is not permitted here")
    bt = re.findall(r"^#(\d)\s+(?:0x[0-9a-f]+ in )?(\S+) \(", out, re.M)
    assert bt[:3] == [("0", "__arch_chacha20_blocks_nostack"), ("1", bt[1][1]), ("2", "main")], out
    assert bt[1][1] in ("getrandom", "__vdso_getrandom", "__vgetrandom_opaque"), out
    assert "__arch_chacha20_blocks_nostack in section .text" in out
    saved = re.search(r"Saved registers:\n\s*(.*)", out).group(1)
    for reg in ("rbx", "r12", "r13", "r14", "r15", "rip"):
        assert f"{reg} at 0x" in saved, saved


# -- the CFI against the real stack -------------------------------------------

_SENTINEL = 0x5000_0000
_STACK = 0x6000_0000
_DATA = 0x7000_0000
_CALLEE_SAVED = {3: UC_X86_REG_RBX, 6: UC_X86_REG_RBP, 12: UC_X86_REG_R12, 13: UC_X86_REG_R13,
                 14: UC_X86_REG_R14, 15: UC_X86_REG_R15}
_MARKERS = {reg: 0x1111_0000_0000_0000 * (k + 1) for k, reg in enumerate(_CALLEE_SAVED)}


class _Unwinder:
    """Unwind with the image's .eh_frame as pyelftools decodes it."""

    def __init__(self, img):
        self.base = img.base
        self.fdes = []
        for e in _elf(img).get_dwarf_info().EH_CFI_entries():
            if isinstance(e, FDE):
                lo = img.base + e.header["initial_location"]
                self.fdes.append((lo, lo + e.header["address_range"], e.get_decoded().table))

    def covered(self, pc: int) -> bool:
        return any(lo <= pc < hi for lo, hi, _ in self.fdes)

    def caller(self, uc, pc: int, regs: dict[int, int], lookup: int) -> tuple[int, dict[int, int]]:
        """(return address, callee-saved registers and rsp of the caller)."""
        lo, hi, table = next(f for f in self.fdes if f[0] <= lookup < f[1])
        row = [r for r in table if self.base + r["pc"] <= lookup][-1] if table else None
        cfa_rule = row["cfa"] if row else None
        reg = {7: regs[7], 6: regs[6]}[cfa_rule.reg]
        cfa = reg + cfa_rule.offset
        out = dict(regs)
        for dwarf, rule in row.items():
            if isinstance(dwarf, int) and dwarf in _CALLEE_SAVED and rule.type == "OFFSET":
                out[dwarf] = int.from_bytes(uc.mem_read(cfa + rule.arg, 8), "little")
        ra_rule = row[16]
        assert ra_rule.type == "OFFSET" and ra_rule.arg == -8
        out[7] = cfa
        return int.from_bytes(uc.mem_read(cfa - 8, 8), "little"), out


def _check_unwinding(img, entry: int, args: list[int], setup=None) -> int:
    """Run img from `entry` with `args` in rdi, rsi, rdx, rcx, r8; at every
    instruction unwind to the outermost caller with the CFI alone and check
    that it lands on the return address with the caller's callee-saved
    registers.  Returns the number of instructions checked."""
    uw = _Unwinder(img)
    uc = Uc(UC_ARCH_X86, UC_MODE_64)
    vvar = img.vvar_start
    uc.mem_map(vvar, img.base - vvar, UC_PROT_ALL)
    uc.mem_write(img.rng_data_addr, (1).to_bytes(8, "little") + b"\1")
    uc.mem_map(img.base, img.size, UC_PROT_ALL)
    uc.mem_write(img.base, bytes(img.text))
    uc.mem_map(_SENTINEL, PAGE_SIZE, UC_PROT_ALL)
    uc.mem_map(_STACK, 4 * PAGE_SIZE, UC_PROT_ALL)
    uc.mem_map(_DATA, 4 * PAGE_SIZE, UC_PROT_ALL)
    sp = _STACK + 3 * PAGE_SIZE
    uc.mem_write(sp, _SENTINEL.to_bytes(8, "little"))
    uc.reg_write(UC_X86_REG_RSP, sp)
    for dwarf, reg in _CALLEE_SAVED.items():
        uc.reg_write(reg, _MARKERS[dwarf])
    for reg, value in zip((UC_X86_REG_RDI, UC_X86_REG_RSI, UC_X86_REG_RDX, UC_X86_REG_RCX, UC_X86_REG_R8), args):
        uc.reg_write(reg, value)
    checked, failures = [0], []

    def on_syscall(uc, _):
        if uc.reg_read(UC_X86_REG_RAX) == 318:             # getrandom: the reseed
            n = uc.reg_read(UC_X86_REG_RSI)
            uc.mem_write(uc.reg_read(UC_X86_REG_RDI), bytes((7 * i + 1) & 0xFF for i in range(n)))
            uc.reg_write(UC_X86_REG_RAX, n)

    def on_code(uc, address, size, _):
        if not uw.covered(address):
            return
        pc = address
        regs = {dwarf: uc.reg_read(reg) for dwarf, reg in _CALLEE_SAVED.items()}
        regs[7] = uc.reg_read(UC_X86_REG_RSP)
        for depth in range(4):
            ra, regs = uw.caller(uc, pc, regs, pc if depth == 0 else pc - 1)
            if ra == _SENTINEL:
                break
            if not uw.covered(ra - 1):
                failures.append(f"{address:#x}: frame {depth} returns to {ra:#x}")
                return
            pc = ra
        else:
            failures.append(f"{address:#x}: no way out")
            return
        if regs[7] != sp + 8 or {d: regs[d] for d in _CALLEE_SAVED} != _MARKERS:
            failures.append(f"{address:#x}: caller's rsp/registers wrong after unwinding")
        checked[0] += 1

    uc.hook_add(UC_HOOK_INSN, on_syscall, None, 1, 0, UC_X86_INS_SYSCALL)
    uc.hook_add(UC_HOOK_CODE, on_code)
    uc.emu_start(entry, _SENTINEL)
    assert not failures, failures[:5]
    assert uc.reg_read(UC_X86_REG_RIP) == _SENTINEL
    return checked[0]


@pytest.mark.parametrize("kind", KINDS, ids=KIND_IDS)
@pytest.mark.parametrize("size", [1, 70, 300], ids=["batch", "whole-block", "bulk"])
def test_cfi_unwinds_at_every_instruction_of_a_real_call(kind, size):
    """Unicorn runs the call; at every instruction the CFI (decoded by
    pyelftools) must find the caller's return address, stack pointer and
    callee-saved registers: pushes, frame, ChaCha20 calls, the reseed."""
    img = build_image(kind)
    state, buf = _DATA, _DATA + PAGE_SIZE
    n = _check_unwinding(img, img.symbol("__vdso_getrandom"), [buf, size, 0, state, 144])
    assert n > 100


def test_cfi_follows_a_frame_pointer_and_refuses_what_it_cannot_follow(tmp_path):
    src = """\
.type f, @function
f:
    push    rbp
    mov     rbp, rsp
    push    rbx
    and     rsp, -16                  # rsp is unknown from here: the CFA is rbp + 16
    sub     rsp, 32
    mov     rbx, 5
    call    g
    lea     rsp, [rbp - 8]
    pop     rbx
    pop     rbp
    ret
.size f, .-f
.type g, @function
g:
    push    r12
    mov     r12, 7
    pop     r12
    ret
.size g, .-g
.type bad, @function
bad:
    push    rax
    ret                                # returns with data on the stack
.size bad, .-bad
"""
    path = tmp_path / "frames.s"
    path.write_text(src)
    img = build_image(str(path))
    uw = _Unwinder(img)
    assert uw.covered(img.symbol("f")) and uw.covered(img.symbol("g")) and not uw.covered(img.symbol("bad"))
    f_table = next(t for lo, hi, t in uw.fdes if lo == img.symbol("f"))
    rules = [(r["cfa"].reg, r["cfa"].offset, {k: v.arg for k, v in r.items() if isinstance(k, int) and k != 16})
             for r in f_table]
    assert rules == [(7, 8, {}), (7, 16, {6: -16}), (7, 24, {6: -16, 3: -24}), (6, 16, {6: -16, 3: -24}),
                     (7, 24, {6: -16, 3: -24}), (7, 16, {6: -16}), (7, 8, {})]
    assert _check_unwinding(img, img.symbol("f"), []) >= 12


# -- symbols from the source --------------------------------------------------

def test_symbol_types_sizes_and_exports(tmp_path):
    path = tmp_path / "syms.s"
    path.write_text("""\
__vdso_getrandom:
    call    helper
    ret
.type helper, @function
helper:
    nop
    ret
.size helper, .-helper
    nop
table:
    .quad 1
.type obj, @object
obj:
    .long 2
.size obj, 4
__vdso_time:
    ret
time:
    ret
""")
    img = build_image(str(path))
    syms = {s.name: s for s in image_elf(img)[1]}
    t0 = img.symbols["__vdso_getrandom"]
    assert syms["__vdso_getrandom"] == ElfSymbol("__vdso_getrandom", t0, 6, "FUNC", "GLOBAL", "LINUX_2.6")
    assert syms["getrandom"] == ElfSymbol("getrandom", t0, 6, "FUNC", "WEAK", "LINUX_2.6")
    assert syms["helper"] == ElfSymbol("helper", t0 + 6, 2, "FUNC", "LOCAL")         # .size, not up to table
    assert syms["table"] == ElfSymbol("table", t0 + 9, 0, "NOTYPE", "LOCAL")
    assert syms["obj"] == ElfSymbol("obj", t0 + 17, 4, "OBJECT", "LOCAL")
    # __vdso_time's alias is defined by the source itself: both exported, GLOBAL
    assert (syms["__vdso_time"].bind, syms["time"].bind) == ("GLOBAL", "GLOBAL")
    assert syms["time"].offset == syms["__vdso_time"].offset + 1 and syms["time"].version == "LINUX_2.6"


def test_large_tables_and_page_alignment_move_the_code(tmp_path):
    """The code goes after the ELF tables, aligned as the source asks: many
    symbols push it past the first guess, `.p2align 12` puts it on a page;
    the code and symbols follow it (a second assembly at the final place)."""
    many = tmp_path / "many.s"
    many.write_text("__vdso_getrandom:\n" + "".join(f"label_with_a_long_name_{k}: nop\n" for k in range(120))
                    + "    lea rax, [rip + vdso_rng_data]\n    ret\n")
    aligned = tmp_path / "aligned.s"
    aligned.write_text(".p2align 12\n__vdso_getrandom:\n    lea rax, [rip + vdso_rng_data]\n    ret\n")
    for path, align in ((many, 16), (aligned, PAGE_SIZE)):
        img = build_image(str(path))
        start, size = _text(img)
        assert start % align == 0 and img.symbols["__vdso_getrandom"] == start
        if path is many:
            assert start > 0x800 and img.symbols["label_with_a_long_name_7"] == start + 7
        lea = img.text[img.symbols["__vdso_getrandom"] + (120 if path is many else 0):][:7]
        disp = struct.unpack_from("<i", lea, 3)[0]
        at = img.base + img.symbols["__vdso_getrandom"] + (120 if path is many else 0) + 7
        assert at + disp == img.rng_data_addr


def test_faultpath_asm_prints_layout_symbols_and_unwind_coverage(tmp_path, capsys):
    from emulator.cli.main import main as cli_main
    path = tmp_path / "mine.s"
    path.write_text("__vdso_getrandom:\n    push rbx\n    pop rbx\n    ret\n"
                    ".type bad, @function\nbad:\n    push rax\n    ret\n.size bad, .-bad\n")
    assert cli_main(["asm", str(path)]) == 0
    out = capsys.readouterr().out
    for kind in ("builtin", "builtin-v14", str(path)):
        img = build_image(kind)
        start, size = _text(img)
        block = out.split(f"{kind}: abi ")[1].split("\n\n")[0]
        assert f".text at +{start:#06x}: {size} bytes of code" in block
        for s in image_elf(img)[1]:
            name = f"{s.name}@@{s.version}" if s.version else s.name
            assert re.search(rf"{img.base + s.offset:#x}\s+\+{s.offset:#06x}\s+{s.size}\s+{s.type}\s+{s.bind}\s+"
                             rf"{re.escape(name)}$", block, re.M), name
    assert "no CFI for bad: bad+0x1 (ret): leaves the function with the stack not as at entry" in out
    assert out.count("no CFI") == 1
