"""decodecheck: capstone against objdump over real and crafted ELF files."""

import ctypes
import json
import os
import re
import struct
import sys

import pytest

from emulator.skipcheck.decodecheck import Report, decodecheck, format_report
from emulator.errors import ImageError
from emulator.skipcheck.oracles import have_objdump

pytestmark = pytest.mark.skipif(not have_objdump(), reason="GNU objdump not installed")


# --------------------------------------------------------------------------
# A minimal ELF64 writer: .text, optional .symtab/.strtab, .shstrtab
# --------------------------------------------------------------------------

def make_elf(text: bytes, addr: int = 0x401000, funcs=()) -> bytes:
    """An x86-64 ET_EXEC with one executable .text at ``addr``; ``funcs``
    are (name, offset, size) FUNC symbols in .text."""
    names = [b"", b".text", b".shstrtab"] + ([b".symtab", b".strtab"] if funcs else [])
    shstr = b"\0".join(names) + b"\0"
    name_off = {n: shstr.index(b"\0" + n + b"\0") + 1 for n in names if n}

    strtab = b"\0" + b"".join(n.encode() + b"\0" for n, _, _ in funcs)
    symtab = bytes(24)
    pos = 1
    for n, off, size in funcs:
        symtab += struct.pack("<IBBHQQ", pos, 0x12, 0, 1, addr + off, size)
        pos += len(n) + 1

    body = bytearray(64)
    text_off = len(body); body += text
    shstr_off = len(body); body += shstr
    sym_off = len(body); body += symtab if funcs else b""
    str_off = len(body); body += strtab if funcs else b""
    while len(body) % 8:
        body += b"\0"
    shoff = len(body)

    def sh(name, typ, flags, a, off, size, link=0, info=0, align=1, entsize=0):
        return struct.pack("<IIQQQQIIQQ", name, typ, flags, a, off, size, link, info, align, entsize)

    shdrs = [bytes(64),
             sh(name_off[b".text"], 1, 6, addr, text_off, len(text), align=16),
             sh(name_off[b".shstrtab"], 3, 0, 0, shstr_off, len(shstr))]
    if funcs:
        shdrs += [sh(name_off[b".symtab"], 2, 0, 0, sym_off, len(symtab), link=4, info=1,
                     align=8, entsize=24),
                  sh(name_off[b".strtab"], 3, 0, 0, str_off, len(strtab))]
    body += b"".join(shdrs)
    ehdr = struct.pack("<4sBBBBB7xHHIQQQIHHHHHH", b"\x7fELF", 2, 1, 1, 0, 0,
                       2, 62, 1, addr, 0, shoff, 0, 64, 56, 0, 64, len(shdrs), 2)
    body[:64] = ehdr
    return bytes(body)


# instruction -> (objdump's length, class of the mismatch or None)
CRAFTED = [
    ("4889c0", None),                                   # mov rax, rax
    ("66e93412", "capstone-66-near-branch-intel-vs-amd"),
    ("6648c23412", "capstone-66-rex-w-ret-imm"),
    ("ddcc", "capstone-rejects-valid"),                 # objdump (bad), Unicorn 2
    ("4a0f0d28", "capstone-rejects-valid"),
    ("f20f1efa", "capstone-rejects-valid"),
    ("9bd97c2402", "objdump-fwait-prefix"),             # objdump: fstcw; capstone: wait
    ("d97c2402", None),                                 # ... capstone's resync point
    ("f08800", "invalid-lock-prefix"),
    ("488d0500000000", None),                           # lea rax, [rip]
    ("c3", None),
]


def crafted_elf(tmp_path, data_tail=b""):
    code = b"".join(bytes.fromhex(h) for h, _ in CRAFTED if h != "d97c2402")
    path = tmp_path / "crafted.elf"
    path.write_bytes(make_elf(code + data_tail, funcs=[("f", 0, len(code))]))
    return path


def test_crafted_elf_finds_each_known_divergence(tmp_path):
    r = decodecheck(crafted_elf(tmp_path), max_examples=10)
    expected = {}
    for _, cls in CRAFTED:
        if cls:
            expected[cls] = expected.get(cls, 0) + 1
    assert dict(r.mismatches) == expected
    assert r.unexplained == 0
    # objdump's walk: every CRAFTED entry but the fwait split is one insn
    assert r.compared == len(CRAFTED) - 1
    assert r.agreements == r.compared - r.mismatch_total
    ret = r.examples["capstone-66-rex-w-ret-imm"][0]
    assert ret.address == 0x401000 + 3 + 4
    assert (ret.capstone_len, ret.objdump_len, ret.unicorn_len) == (7, 5, 5)
    assert ret.code[:5] == bytes.fromhex("6648c23412")
    dd = r.examples["capstone-rejects-valid"][0]
    assert (dd.capstone_len, dd.objdump_len, dd.objdump_text, dd.unicorn_len) == \
        (None, None, "(bad)", 2)


def test_data_outside_functions_is_data_or_padding(tmp_path):
    # after the function: a REX pair objdump splits, and a 66 e9 (capstone
    # bugs are named even in data)
    r = decodecheck(crafted_elf(tmp_path, bytes.fromhex("4747c9") + bytes.fromhex("66e93412")))
    assert r.mismatches["data-or-padding"] == 1
    assert r.mismatches["capstone-66-near-branch-intel-vs-amd"] == 2
    assert r.unexplained == 0


def test_report_formats(tmp_path):
    r = decodecheck(crafted_elf(tmp_path), max_examples=1)
    assert all(len(v) <= 1 for v in r.examples.values())
    d = json.loads(json.dumps(r.as_dict()))
    assert d["compared"] == r.compared and d["mismatches"] == dict(r.mismatches)
    assert d["sections"] == [{"name": ".text", "address": "0x401000",
                              "size": r.sections[0][2]}]
    ex = d["examples"]["capstone-66-rex-w-ret-imm"][0]
    assert ex["bytes"].startswith("66 48 c2 34 12")
    assert ex["capstone"]["length"] == 7 and ex["objdump"]["length"] == 5
    text = format_report(r)
    assert "capstone-66-rex-w-ret-imm: 1" in text
    assert re.search(r"instructions compared \d+, agreements \d+", text)


# --------------------------------------------------------------------------
# Real binaries
# --------------------------------------------------------------------------

def _host_vdso(tmp_path):
    libc = ctypes.CDLL(None)
    libc.getauxval.restype = ctypes.c_ulong
    libc.getauxval.argtypes = [ctypes.c_ulong]
    base = libc.getauxval(33)                           # AT_SYSINFO_EHDR
    if not base:
        pytest.skip("no vDSO in this process")
    head = ctypes.string_at(base, 64)
    e_shoff, = struct.unpack_from("<Q", head, 0x28)
    e_shentsize, e_shnum = struct.unpack_from("<HH", head, 0x3A)
    size = e_shoff + e_shentsize * e_shnum
    if head[:4] != b"\x7fELF" or not e_shnum or size > 1 << 20:
        pytest.skip("host vDSO has no section headers")
    path = tmp_path / "vdso.so"
    path.write_bytes(ctypes.string_at(base, size))
    return path


def _libc_path():
    with open("/proc/self/maps") as maps:
        for line in maps:
            m = re.search(r"(/\S*/libc[.-]\S*\.so[.\d]*)$", line.strip())
            if m and os.path.exists(m.group(1)):
                return m.group(1)
    import ctypes.util
    name = ctypes.util.find_library("c")
    for d in ("/lib/x86_64-linux-gnu", "/usr/lib/x86_64-linux-gnu", "/lib64", "/usr/lib64"):
        if name and os.path.exists(os.path.join(d, name)):
            return os.path.join(d, name)
    pytest.skip("libc not found")


def test_host_vdso_has_no_unexplained(tmp_path):
    r = decodecheck(_host_vdso(tmp_path))
    assert r.compared > 100
    assert r.unexplained == 0, format_report(r)
    assert any(name == ".text" for name, _, _ in r.sections)


def test_libc_has_no_unexplained():
    r = decodecheck(_libc_path())
    assert r.compared > 100_000
    assert r.unexplained == 0, format_report(r)


def test_python_binary_has_no_unexplained():
    exe = os.path.realpath(sys.executable)
    if not os.path.exists("/usr/bin/python3") and os.path.getsize(exe) < 1 << 20:
        pytest.skip("no large python3 binary here")
    path = os.path.realpath("/usr/bin/python3") if os.path.exists("/usr/bin/python3") else exe
    r = decodecheck(path)
    assert r.compared > 1000
    assert r.unexplained == 0, format_report(r)


# --------------------------------------------------------------------------
# Bad input
# --------------------------------------------------------------------------

def _one_line_image_error(path, match):
    with pytest.raises(ImageError, match=match) as e:
        decodecheck(path)
    assert "\n" not in str(e.value)


def test_missing_file(tmp_path):
    _one_line_image_error(tmp_path / "nope.so", "No such file")


def test_directory(tmp_path):
    _one_line_image_error(tmp_path, "directory")


def test_not_elf(tmp_path):
    p = tmp_path / "text.so"
    p.write_bytes(b"#!/bin/sh\necho hello\n")
    _one_line_image_error(p, "not an ELF file")
    p.write_bytes(b"")
    _one_line_image_error(p, "not an ELF file")


def test_truncated(tmp_path):
    good = make_elf(bytes.fromhex("4889c0c3"))
    p = tmp_path / "t.so"
    p.write_bytes(good[:40])
    _one_line_image_error(p, "truncated ELF header")
    p.write_bytes(good[:-10])
    _one_line_image_error(p, "truncated")
    # section headers intact, .text pointing past the end of the file
    bad = bytearray(good)
    struct.pack_into("<Q", bad, struct.unpack_from("<Q", good, 0x28)[0] + 64 + 0x18, 0x100000)
    p.write_bytes(bad)
    _one_line_image_error(p, "truncated")


def test_wrong_class_or_machine(tmp_path):
    good = make_elf(bytes.fromhex("c3"))
    p = tmp_path / "w.so"
    p.write_bytes(good[:4] + b"\x01" + good[5:])                 # ELFCLASS32
    _one_line_image_error(p, "64-bit")
    p.write_bytes(good[:0x12] + struct.pack("<H", 183) + good[0x14:])   # EM_AARCH64
    _one_line_image_error(p, "not an x86-64")


def test_no_executable_sections(tmp_path):
    good = bytearray(make_elf(bytes.fromhex("c3")))
    shoff = struct.unpack_from("<Q", good, 0x28)[0]
    struct.pack_into("<Q", good, shoff + 64 + 8, 2)              # .text flags: ALLOC only
    p = tmp_path / "n.so"
    p.write_bytes(bytes(good))
    _one_line_image_error(p, "no executable sections")


def test_report_type():
    assert Report(path="x").as_dict()["mismatches"] == {}


# --------------------------------------------------------------------------
# `faultpath decodecheck`
# --------------------------------------------------------------------------

import subprocess  # noqa: E402
from pathlib import Path  # noqa: E402

_ROOT = Path(__file__).resolve().parents[1]


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "emulator.cli.main", "decodecheck", *args],
                          capture_output=True, text=True, cwd=_ROOT, timeout=300)


def _crafted(tmp_path):
    # DESIGN.md's capstone bugs in one function: 66 48 c2 iw, 66 e9 rel16, dd cc
    text = bytes.fromhex("6648c23412" "66e90000" "ddcc" "c3")
    p = tmp_path / "crafted.so"
    p.write_bytes(make_elf(text, funcs=[("f", 0, len(text))]))
    return str(p)


def test_cli_host_json(tmp_path):
    p = _cli("--json", "host", _crafted(tmp_path))
    assert p.returncode == 0, p.stderr
    d = json.loads(p.stdout)
    host, crafted = d["files"]
    assert host["path"].startswith("host (the running kernel") and host["compared"] > 100
    assert host["agreements"] == host["compared"]
    assert crafted["mismatches"] == {"capstone-66-near-branch-intel-vs-amd": 1,
                                     "capstone-66-rex-w-ret-imm": 1, "capstone-rejects-valid": 1}
    assert d["compared"] == host["compared"] + crafted["compared"]
    assert d["unexplained"] == 0 and d["mismatches"] == 3


def test_cli_human_output(tmp_path):
    out = _cli("host", _crafted(tmp_path))
    assert out.returncode == 0, out.stderr
    assert "decodecheck host (the running kernel's vDSO)" in out.stdout
    assert "instructions compared" in out.stdout
    for cls in ("capstone-66-rex-w-ret-imm", "capstone-66-near-branch-intel-vs-amd",
                "capstone-rejects-valid"):
        assert cls in out.stdout, out.stdout
    assert out.stdout.rstrip().splitlines()[-1].startswith("total: ")


@pytest.mark.parametrize("args,msg", [
    (["/nonexistent.so"], "No such file"),
    (["--examples", "-1", "host"], "--examples -1"),
])
def test_cli_bad_input(args, msg):
    p = _cli(*args)
    assert p.returncode == 2 and msg in p.stderr and len(p.stderr.strip().splitlines()) == 1, p.stderr


def test_cli_not_elf(tmp_path):
    p = tmp_path / "x.txt"
    p.write_text("hello\n")
    out = _cli(str(p))
    assert out.returncode == 2 and "not an ELF file" in out.stderr
