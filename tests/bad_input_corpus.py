"""A seeded bad-input corpus for every subcommand (issue 15).

`build_corpus(work)` writes the input files under `work` and returns the
cases; `run_case` runs one through the CLI's `main(argv)` in-process and
returns what the contract is judged on.  tests/test_bad_input_corpus.py
asserts the contract per category; `python tests/bad_input_corpus.py` prints
the outcome per category.

The contract, for every case:
- the exit status is 2 (bad input), or one of the statuses the case lists as
  valid (0 where the input is valid; 1 where a tool reports findings);
- on 2, stderr is exactly one line; never a "Traceback";
- no file under `work` is new or changed except the case's intended
  outputs, and no temporary file is left anywhere under it;
- a case with bad input never reaches the command's real work (measuring,
  sweeping, comparing, serving gdb): the entry points raise WorkReached.
"""
from __future__ import annotations

import contextlib
import io
import json
import os
import random
import re
import socket
import stat
import struct
from dataclasses import dataclass, field
from pathlib import Path

SEED = 15
PROJECT = Path(__file__).resolve().parents[1]


# Every category the corpus has (tests/test_bad_input_corpus.py runs each).
CATEGORIES = (
    "inputs: FIFOs, sockets, /dev/zero", "inputs: directories", "inputs: 3 GiB sparse files",
    "inputs: missing, dangling, looping, too long", "inputs: empty files",
    "ELF: multi-byte corruptions (run)", "ELF: multi-byte corruptions (step, gdb, sweep, compare)",
    "ELF: multi-byte corruptions (decodecheck)", "ELF: corrupted code (run)", "ELF: truncated, junk", "ELF: top bit of a section offset/size",
    "assembly: bad sources", "assembly: bad patches", "profiles: malformed",
    "step scripts, skipcheck corpora: bad content",
    "compare --from-json: truncated, not a report", "compare --from-json: deeply nested",
    "compare --from-json: wrong shape",
    "output paths: empty, directories, missing or bad parents", "output paths: /proc files, device nodes",
    "output paths: FIFOs, sockets", "output paths: symlinks (dangling, to a device, loops)",
    "output paths: all or nothing",
    "options: empty values", "options: out of range", "options: unknown or unusable",
    "unicode paths", "valid controls",
)


class WorkReached(BaseException):
    """Raised by a command's real work in a case whose input was bad: the
    input should have been refused first.  A BaseException so that no
    `except FaultpathError` or `except Exception` in the tool swallows it."""


@dataclass(frozen=True)
class Case:
    category: str
    argv: tuple[str, ...]
    ok: frozenset[int] = frozenset({2})            # accepted exit statuses
    outputs: tuple[str, ...] = ()                 # paths (relative to work) that may be created or replaced
    forbid_work: bool = True                      # bad input: the real work must not start

    def label(self) -> str:
        return " ".join(self.argv)


@dataclass
class Outcome:
    rc: int | str
    stdout: str
    stderr: str
    problems: list[str] = field(default_factory=list)


# ------------------------------------------------------------------ work entry points

WORK_ENTRY_POINTS = [
    ("emulator.compare.core", "run_compare"),
    ("emulator.sweep.coordinator", "sweep"),
    ("emulator.calibrate.output", "calibrate"),
    ("emulator.calibrate.measure", "measure_all"),
    ("emulator.diffcheck.run", "run_plan"),
]


@contextlib.contextmanager
def work_forbidden():
    """Replace each command's real work by a WorkReached raiser (and gdb's
    listen, which would serve forever)."""
    import importlib
    saved = []

    def reached(*a, **k):
        raise WorkReached()
    try:
        for mod, name in WORK_ENTRY_POINTS:
            m = importlib.import_module(mod)
            saved.append((m, name, getattr(m, name)))
            setattr(m, name, reached)
        from emulator.debug.gdbstub import GdbServer
        saved.append((GdbServer, "listen", GdbServer.listen))
        GdbServer.listen = lambda self: reached()
        yield
    finally:
        for obj, name, orig in reversed(saved):
            setattr(obj, name, orig)


# ------------------------------------------------------------------ running one case

TEMP_RE = re.compile(r"^\.faultpath-.*\.tmp$|\.tmp\d+$|^\.profile-.*\.tmp$")


def snapshot(root: Path) -> dict[str, tuple]:
    """Every entry under root (not following symlinks): what identifies its content."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = os.path.join(dirpath, name)
            st = os.lstat(p)
            link = os.readlink(p) if stat.S_ISLNK(st.st_mode) else None
            if stat.S_ISDIR(st.st_mode):
                # A directory's mtime changes when an output is proven writable
                # (a temporary file made and removed there): its entries count.
                out[os.path.relpath(p, root)] = (stat.S_IFDIR, st.st_ino)
            else:
                out[os.path.relpath(p, root)] = (stat.S_IFMT(st.st_mode), st.st_size, st.st_mtime_ns, st.st_ino,
                                                 st.st_rdev, link)
    return out


def run_case(case: Case, work: Path) -> Outcome:
    from emulator.cli.main import main
    before = snapshot(work)
    out, err = io.StringIO(), io.StringIO()
    cwd = os.getcwd()
    os.chdir(work)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            with (work_forbidden() if case.forbid_work else contextlib.nullcontext()):
                rc: int | str = main(list(case.argv))
    except WorkReached:
        rc = "work reached"
    except SystemExit as e:                         # argparse --help and the like
        rc = f"SystemExit {e.code}"
    except Exception as e:                          # the bug the corpus is looking for
        rc = f"{type(e).__name__}: {str(e)[:200]}"
    finally:
        os.chdir(cwd)
    o = Outcome(rc, out.getvalue(), err.getvalue())
    o.problems = judge(case, o, before, snapshot(work))
    cleanup(case, work, before)
    return o


def judge(case: Case, o: Outcome, before: dict, after: dict) -> list[str]:
    problems = []
    if o.rc not in case.ok:
        problems.append(f"exit {o.rc!r}, expected one of {sorted(case.ok)}")
    lines = o.stderr.splitlines()
    if o.rc == 2 and len(lines) != 1:
        problems.append(f"{len(lines)} stderr lines on exit 2: {o.stderr[:300]!r}")
    if "Traceback" in o.stderr or "Traceback" in o.stdout:
        problems.append("a traceback")
    allowed = set(case.outputs)
    for path, meta in after.items():
        name = os.path.basename(path)
        if TEMP_RE.search(name):
            problems.append(f"temporary file left: {path}")
        elif path not in before:
            if path not in allowed:
                problems.append(f"new file: {path}")
        elif before[path] != meta and path not in allowed:
            problems.append(f"changed: {path} {before[path]} -> {meta}")
    for path in before:
        if path not in after:
            problems.append(f"removed: {path}")
    return problems


def cleanup(case: Case, work: Path, before: dict) -> None:
    """Put back what a valid case wrote, so that every case starts alike."""
    for rel in case.outputs:
        p = work / rel
        if rel in before:
            continue
        if p.is_symlink() or p.is_file():
            p.unlink()


# ------------------------------------------------------------------ the inputs

def _builtin_elf() -> bytes:
    from vdso.asm_build import build_image
    return bytes(build_image("builtin").text)


def _host_elf() -> bytes | None:
    try:
        from vdso.elf_image import _host_vdso_bytes, host_has_vgetrandom
        return _host_vdso_bytes() if host_has_vgetrandom() else None
    except Exception:
        return None


SUFFIXES = (".so", ".s", ".patch", ".toml", ".json", ".txt")


def _special_inputs(d: Path) -> dict[str, list[str]]:
    """kind -> paths (relative to work) of things that are not readable inputs,
    one per suffix so that every --image route (ELF, .s, .patch) meets them."""
    kinds: dict[str, list[str]] = {}
    d.mkdir()
    rel = d.name

    def add(kind, name):
        kinds.setdefault(kind, []).append(f"{rel}/{name}")
    for sfx in SUFFIXES:
        os.mkfifo(d / f"fifo{sfx}")
        add("fifo", f"fifo{sfx}")
        (d / f"dir{sfx}").mkdir()
        add("directory", f"dir{sfx}")
        with open(d / f"sparse{sfx}", "wb") as f:
            f.truncate(3 << 30)                      # 3 GiB, no blocks
        add("sparse 3 GiB", f"sparse{sfx}")
        (d / f"zero{sfx}").symlink_to("/dev/zero")
        add("/dev/zero", f"zero{sfx}")
        (d / f"loop{sfx}").symlink_to(f"loop{sfx}")
        add("symlink loop", f"loop{sfx}")
        (d / f"dangling{sfx}").symlink_to(f"nowhere{sfx}")
        add("dangling symlink", f"dangling{sfx}")
        (d / f"empty{sfx}").write_bytes(b"")
        add("empty file", f"empty{sfx}")
        add("missing", f"missing-ünï{sfx}")
        add("name too long", "x" * 300 + sfx)
        try:
            s = socket.socket(socket.AF_UNIX)
            s.bind(str(d / f"sock{sfx}"))
            s.close()
            add("socket", f"sock{sfx}")
        except OSError:
            pass
    kinds["/dev/zero"].append("/dev/zero")
    kinds["directory"].append("/tmp")
    return kinds


# Every option that reads a file, as argv with {p} for the path; the routes that
# only take some suffixes say which.
INPUT_OPTIONS = [
    (("run", "--image", "{p}", "--size", "16", "--calls", "1"), None),
    (("step", "--image", "{p}", "-c", "stepi"), None),
    (("gdb", "--image", "{p}", "--port", "0"), None),
    (("gdb", "--symbols", "{p}", "--port", "0"), None),
    (("sweep", "--image", "{p}"), None),
    (("compare", "--image", "{p}"), None),
    (("run", "--profile", "{p}", "--size", "16", "--calls", "1"), "profile"),
    (("step", "--profile", "{p}", "-c", "stepi"), "profile"),
    (("bench", "--profile", "{p}"), "profile"),
    (("calibrate", "--base", "{p}", "-o", "out/cal.toml"), "profile"),
    (("sweep", "--profile", "{p}"), "profile"),
    (("step", "--script", "{p}"), None),
    (("skipcheck", "--corpus", "{p}"), None),
    (("compare", "--from-json", "{p}"), None),
    (("decodecheck", "{p}"), None),
    (("asm", "{p}"), (".s", ".patch")),
]


def _as_profile_path(p: str) -> str:
    """A profile NAME is looked up in the profile directories; a path is one
    with a suffix or a slash."""
    return p if "/" in p else "./" + p


INPUT_CATEGORY = {
    "fifo": "inputs: FIFOs, sockets, /dev/zero", "socket": "inputs: FIFOs, sockets, /dev/zero",
    "/dev/zero": "inputs: FIFOs, sockets, /dev/zero", "directory": "inputs: directories",
    "sparse 3 GiB": "inputs: 3 GiB sparse files", "empty file": "inputs: empty files",
    "symlink loop": "inputs: missing, dangling, looping, too long",
    "dangling symlink": "inputs: missing, dangling, looping, too long",
    "missing": "inputs: missing, dangling, looping, too long",
    "name too long": "inputs: missing, dangling, looping, too long",
}


def input_cases(kinds: dict[str, list[str]]) -> list[Case]:
    cases = []
    for kind, paths in kinds.items():
        for argv, route in INPUT_OPTIONS:
            for p in paths:
                if isinstance(route, tuple) and not p.endswith(route):
                    continue
                if route == "profile":
                    p = _as_profile_path(p)
                cases.append(Case(INPUT_CATEGORY[kind], tuple(a.replace("{p}", p) for a in argv)))
    return cases


# ------------------------------------------------------------------ ELF corruptions

def _elf_fields(raw: bytes, rng: random.Random) -> list[tuple[int, int]]:
    fields = [(0x18, 8), (0x20, 8), (0x28, 8), (0x36, 2), (0x38, 2), (0x3A, 2), (0x3C, 2), (0x3E, 2)]
    phoff, = struct.unpack_from("<Q", raw, 0x20)
    phnum, = struct.unpack_from("<H", raw, 0x38)
    shoff, = struct.unpack_from("<Q", raw, 0x28)
    shnum, = struct.unpack_from("<H", raw, 0x3C)
    for k in range(phnum):
        b = phoff + 56 * k
        fields += [(b, 4), (b + 8, 8), (b + 16, 8), (b + 32, 8), (b + 40, 8)]
    for k in range(shnum):
        b = shoff + 64 * k
        fields += [(b, 4), (b + 4, 4), (b + 24, 8), (b + 32, 8), (b + 40, 4), (b + 44, 4), (b + 56, 8)]
    return fields


def corrupt(raw: bytes, rng: random.Random) -> bytes:
    """Several multi-byte corruptions: header fields (top bits, random bits,
    random values, all ones) and, now and then, bytes anywhere."""
    b = bytearray(raw)
    fields = _elf_fields(raw, rng)
    for _ in range(rng.choice([2, 3, 5, 8, 16])):
        if rng.random() < 0.25:
            pos = rng.randrange(len(b))
            b[pos] = rng.randrange(256)
            continue
        off, size = rng.choice(fields)
        v = int.from_bytes(b[off:off + size], "little")
        mode = rng.random()
        if mode < 0.4:
            v ^= 1 << (size * 8 - 1 - rng.randrange(4))
        elif mode < 0.7:
            v ^= 1 << rng.randrange(size * 8)
        elif mode < 0.85:
            v = rng.randrange(1 << (size * 8))
        else:
            v = (1 << (size * 8)) - 1
        b[off:off + size] = v.to_bytes(size, "little")
    return bytes(b)


def _loads(path: Path) -> bool:
    from vdso.errors import FaultpathError
    from vdso.loader import load_image
    try:
        load_image(str(path))
        return True
    except FaultpathError:
        return False


def _entry(raw: bytes) -> int:
    from vdso.elf_image import load_elf_bytes
    return load_elf_bytes(raw, "entry").symbols["__vdso_getrandom"]


def elf_cases(work: Path, rng: random.Random, n_run: int, n_tools: int, n_code: int) -> list[Case]:
    d = work / "elf"
    d.mkdir()
    sources = [_builtin_elf()] + ([h] if (h := _host_elf()) else [])
    cases = []
    for i in range(n_run):
        p = d / f"flip{i}.so"
        p.write_bytes(corrupt(rng.choice(sources), rng))
        # Still an image? Then it runs: returned, or any outcome of a strange image.
        cases.append(Case("ELF: multi-byte corruptions (run)",
                          ("run", "--image", f"elf/{p.name}", "--size", "16", "--calls", "1"),
                          ok=frozenset({0, 2})))
    # The other tools (gdb would serve forever on a good image): only images that do not load.
    made = 0
    tools = [("step", "--image", "{p}", "-c", "stepi"), ("gdb", "--image", "{p}", "--port", "0"),
             ("sweep", "--image", "{p}"), ("compare", "--image", "{p}")]
    while made < n_tools:
        p = d / f"tool{made}.so"
        p.write_bytes(corrupt(rng.choice(sources), rng))
        if _loads(p):
            p.unlink()
            continue
        argv = rng.choice(tools)
        cases.append(Case("ELF: multi-byte corruptions (step, gdb, sweep, compare)",
                          tuple(a.replace("{p}", f"elf/{p.name}") for a in argv)))
        made += 1
    # the code itself: bytes of __vdso_getrandom replaced (the image loads; what it runs is anyone's guess)
    for i in range(n_code):
        src = rng.choice(sources)
        b = bytearray(src)
        entry = _entry(src)
        for _ in range(rng.choice([1, 2, 4, 8])):
            pos = entry + rng.randrange(0x300)
            if pos < len(b):
                b[pos] = rng.randrange(256)
        p = d / f"code{i}.so"
        p.write_bytes(bytes(b))
        cases.append(Case("ELF: corrupted code (run)",
                          ("run", "--image", f"elf/{p.name}", "--size", rng.choice(["0", "16", "300"]),
                           "--calls", "2"), ok=frozenset({0, 2})))
    # decodecheck reads any ELF: a corrupt one may still decode (0), show mismatches (1) or be refused (2)
    for i in range(25):
        p = d / f"dc{i}.so"
        p.write_bytes(corrupt(rng.choice(sources), rng))
        cases.append(Case("ELF: multi-byte corruptions (decodecheck)", ("decodecheck", "--no-unicorn", f"elf/{p.name}"),
                          ok=frozenset({0, 1, 2})))
    # truncations
    for i in range(20):
        src = rng.choice(sources)
        p = d / f"trunc{i}.so"
        p.write_bytes(src[:rng.randrange(1, len(src))])
        cmd = rng.choice([("run", "--image", f"elf/{p.name}", "--size", "16", "--calls", "1"),
                          ("decodecheck", "--no-unicorn", f"elf/{p.name}")])
        cases.append(Case("ELF: truncated, junk", cmd, ok=frozenset({0, 1, 2})))
    # the top bit of every section's offset and size (the issue's .dynstr/.dynsym case)
    raw = _builtin_elf()
    shoff, = struct.unpack_from("<Q", raw, 0x28)
    shnum, = struct.unpack_from("<H", raw, 0x3C)
    for k in range(1, shnum):
        for field_off in (24, 32):
            b = bytearray(raw)
            at = shoff + 64 * k + field_off
            v, = struct.unpack_from("<Q", b, at)
            struct.pack_into("<Q", b, at, v | 1 << 63)
            p = d / f"top{k}_{field_off}.so"
            p.write_bytes(bytes(b))
            tool = tools[(k + field_off) % len(tools)]
            cases.append(Case("ELF: top bit of a section offset/size",
                              tuple(a.replace("{p}", f"elf/{p.name}") for a in tool)))
    # junk that is no ELF at all
    for i in range(10):
        p = d / f"junk{i}.so"
        n = rng.choice([0, 1, 3, 4, 63, 64, 100, 5000])
        head = b"\x7fELF" if i % 2 else b""
        p.write_bytes((head + rng.randbytes(n))[:max(n, len(head))])
        cases.append(Case("ELF: truncated, junk", ("run", "--image", f"elf/{p.name}")))
    return cases


# ------------------------------------------------------------------ assembly sources and patches

ASM_BAD = {
    "syntax error": ".globl __vdso_getrandom\n__vdso_getrandom:\n    mov rax,, 1\n    ret\n",
    "unknown mnemonic": "__vdso_getrandom:\n    frobnicate rax\n",
    "huge .space": "__vdso_getrandom:\n    ret\n    .space 0x1000000\n",
    "negative .zero": "__vdso_getrandom:\n    ret\n    .zero -1\n",
    ".space sum": "__vdso_getrandom: ret\n" + ".space 0x80000\n" * 3,
    ".rept bomb": "__vdso_getrandom: ret\n.rept 0x1000\n.space 0x10000\n.endr\n",
    ".org far": "__vdso_getrandom: ret\n.org 0x2000000\n",
    ".incbin /dev/zero": '__vdso_getrandom: ret\n.incbin "/dev/zero"\n',
    ".incbin a file": '__vdso_getrandom: ret\n.incbin "/etc/passwd"\n',
    "AVX": "__vdso_getrandom:\n    vpxor ymm0, ymm0, ymm0\n    ret\n",
    "VEX.128": "__vdso_getrandom:\n    vpxor xmm0, xmm0, xmm0\n    ret\n",
    ".data section": ".data\nx: .quad 1\n.text\n__vdso_getrandom: ret\n",
    "no getrandom": "f:\n    ret\n",
    "nothing": "# only a comment\n",
    "unterminated .rept": "__vdso_getrandom: ret\n.rept 3\nnop\n",
    ".p2align huge": "__vdso_getrandom: ret\n.p2align 40\n",
    "NUL byte": "__vdso_getrandom:\n    ret\0\n",
}
ASM_BINARY = {
    "not UTF-8": b"__vdso_getrandom:\n    ret\n\xff\xfe\n",
    "binary": bytes(range(256)),
}
PATCH_BAD = {
    "not a diff": "hello\n",
    "hunk out of place": "--- a/asm/vgetrandom.s\n+++ b/asm/vgetrandom.s\n@@ -99999,1 +99999,1 @@\n-x\n+y\n",
    "outside asm/": "--- a/etc/passwd\n+++ b/etc/passwd\n@@ -1,1 +1,1 @@\n-root\n+toor\n",
    "traversal": "--- a/asm/../../x.s\n+++ b/asm/../../x.s\n@@ -1,1 +1,1 @@\n-a\n+b\n",
    "bad counts": "--- a/asm/vgetrandom.s\n+++ b/asm/vgetrandom.s\n@@ -1,5 +1,1 @@\n-x\n",
    "empty": "",
}


def asm_cases(work: Path, rng: random.Random) -> list[Case]:
    d = work / "asm"
    d.mkdir()
    cases = []
    items = list(ASM_BAD.items()) + list(ASM_BINARY.items())
    for i, (what, text) in enumerate(items):
        p = d / f"bad{i}.s"
        p.write_bytes(text.encode() if isinstance(text, str) else text)
        for cmd in (("run", "--image", f"asm/{p.name}"), ("asm", f"asm/{p.name}"),
                    ("sweep", "--image", f"asm/{p.name}")):
            cases.append(Case("assembly: bad sources", cmd))
    # a real source broken at a random line
    good = (PROJECT / "asm" / "vgetrandom.s").read_text().splitlines()
    code_lines = [k for k, ln in enumerate(good) if ln.strip() and not ln.strip().startswith(("#", "."))]
    for i in range(12):
        lines = list(good)
        k = rng.choice(code_lines)
        code, _, comment = lines[k].partition("#")       # the junk goes before any comment
        lines[k] = code.rstrip() + rng.choice([" ,,", " [", " 0x", " rax rax", " )"]) + (f"  #{comment}" if comment else "")
        p = d / f"broken{i}.s"
        p.write_text("\n".join(lines) + "\n")
        cases.append(Case("assembly: bad sources", ("run", "--image", f"asm/{p.name}")))
    for i, (what, text) in enumerate(PATCH_BAD.items()):
        p = d / f"bad{i}.patch"
        p.write_text(text)
        for cmd in (("run", "--image", f"asm/{p.name}"), ("asm", f"asm/{p.name}")):
            cases.append(Case("assembly: bad patches", cmd))
    return cases


# ------------------------------------------------------------------ profiles

PROFILES_BAD = {
    "wrong type": '[meta]\nbase = "zen4"\n[core]\ndispatch_width = "six"\n',
    "form not a table": '[meta]\nbase = "zen4"\n[forms]\nLD = 5\n',
    "meta not a table": "meta = 5\n",
    "empty": "",
    "1e308": '[meta]\nbase = "zen4"\n[event]\nfault_entry = 1e308\n',
    "zero width": '[meta]\nbase = "zen4"\n[core]\ndispatch_width = 0\n',
    "nan": '[meta]\nbase = "zen4"\n[event]\nfault_entry = nan\n',
    "inf": '[meta]\nbase = "zen4"\n[event]\nfault_entry = inf\n',
    "negative": '[meta]\nbase = "zen4"\n[event]\nfault_entry = -5\n',
    "truncated": '[meta]\nbase = "zen4"\n[core\n',
    "bad base": '[meta]\nbase = "no-such-profile"\n',
    "bool": '[meta]\nbase = "zen4"\n[core]\ndispatch_width = true\n',
    "list": '[meta]\nbase = "zen4"\n[core]\ndispatch_width = [1, 2]\n',
    "unknown section": '[meta]\nbase = "zen4"\n[bogus]\nx = 1\n',
    "unknown key": '[meta]\nbase = "zen4"\n[core]\nbogus_key = 1\n',
    "huge int": '[meta]\nbase = "zen4"\n[core]\ndispatch_width = 99999999999999999999\n',
    "NUL": '[meta]\nbase = "zen4"\n\0\n',
    "not UTF-8": b'[meta]\nbase = "zen4"\n# \xff\n',
    "base loop": '[meta]\nbase = "./prof/loop.toml"\n',
}


def profile_cases(work: Path) -> list[Case]:
    d = work / "prof"
    d.mkdir()
    (d / "loop.toml").write_text('[meta]\nbase = "./prof/loop.toml"\n')
    cases = []
    cmds = [("run", "--size", "16", "--calls", "1", "--profile", "{p}"), ("step", "-c", "stepi", "--profile", "{p}"),
            ("bench", "--profile", "{p}"), ("calibrate", "--base", "{p}", "-o", "out/cal.toml"),
            ("sweep", "--profile", "{p}")]
    for i, (what, text) in enumerate(PROFILES_BAD.items()):
        p = d / f"p{i}.toml"
        p.write_bytes(text if isinstance(text, bytes) else text.encode())
        for cmd in cmds:
            cases.append(Case("profiles: malformed", tuple(a.replace("{p}", f"./prof/{p.name}") for a in cmd)))
    return cases


# ------------------------------------------------------------------ text inputs: step scripts, skipcheck corpora

TEXT_BAD = {
    "not UTF-8": b"stepi\n\xff\xfe\n",
    "NUL": b"stepi\n\0regs\n",
    "binary": bytes(range(256)) * 4,
    "over the cap": b"#" * ((16 << 20) + 10),
}


def text_cases(work: Path) -> list[Case]:
    d = work / "text"
    d.mkdir()
    cases = []
    for i, (what, raw) in enumerate(TEXT_BAD.items()):
        p = d / f"t{i}.txt"
        p.write_bytes(raw)
        cases.append(Case("step scripts, skipcheck corpora: bad content", ("step", "--script", f"text/{p.name}")))
        cases.append(Case("step scripts, skipcheck corpora: bad content", ("skipcheck", "--corpus", f"text/{p.name}")))
    return cases


# ------------------------------------------------------------------ compare reports

def report_cases(work: Path, rng: random.Random, report: dict) -> list[Case]:
    d = work / "rep"
    d.mkdir()
    good = json.dumps(report, indent=1)
    variants: list[tuple[str, str]] = []
    for i in range(12):
        variants.append(("truncated, not a report", good[:rng.randrange(1, len(good) - 1)]))
    for depth in (65, 1000, 100_000):
        variants.append(("deeply nested", "[" * depth + "]" * depth))
        variants.append(("deeply nested", '{"a":' * depth + "1" + "}" * depth))

    def mutated(path: list, value) -> str:
        r = json.loads(good)
        cur = r
        for k in path[:-1]:
            cur = cur[k]
        cur[path[-1]] = value
        return json.dumps(r)
    first_scen = report["config"]["scenarios"][0]
    first_design = report["config"]["designs"][0]
    for path, value in ((["image"], None), (["image"], 5), (["image", "name"], None), (["config"], []),
                        (["config", "designs"], 5), (["config", "designs"], []), (["config", "scenarios"], [1]),
                        (["results"], []), (["results", first_scen], None),
                        (["results", first_scen, first_design], "x"),
                        (["results", first_scen, first_design, "metrics"], None),
                        (["results", first_scen, first_design, "metrics"], {"cycles": "many"}),
                        (["scenarios"], None), (["scenarios", first_scen], 7)):
        variants.append(("wrong shape", mutated(path, value)))
    for text in ("", "null", "5", '"report"', "[]", "{}", '{"image": {"name": "x"}}', "NaN",
                 re.sub(r'("seed": )\d+', r"\1NaN", good), re.sub(r'("scale": )[\d.]+', r"\1Infinity", good),
                 good + "garbage"):
        variants.append(("truncated, not a report", text))
    cases = []
    for i, (what, text) in enumerate(variants):
        p = d / f"r{i}.json"
        p.write_text(text)
        cases.append(Case(f"compare --from-json: {what}", ("compare", "--from-json", f"rep/{p.name}")))
    p = d / "bad-utf8.json"
    p.write_bytes(b'{"image": "\xff"}')
    cases.append(Case("compare --from-json: truncated, not a report", ("compare", "--from-json", f"rep/{p.name}")))
    return cases


# ------------------------------------------------------------------ output paths

def output_destinations(work: Path) -> list[tuple[str, str]]:
    """(category, destination relative to work or absolute) that must be refused."""
    d = work / "dest"
    d.mkdir()
    (d / "regular").write_text("keep me")
    os.mkfifo(d / "fifo")
    (d / "dangling").symlink_to("nowhere.json")
    (d / "to-null").symlink_to("/dev/null")
    (d / "loop").symlink_to("loop")
    (d / "subdir").mkdir()
    paths = "output paths: empty, directories, missing or bad parents"
    special = "output paths: /proc files, device nodes"
    dests = [
        (paths, ""), (paths, "dest/subdir"), (paths, "dest/subdir/"), (paths, "dest/missing/x.json"),
        (paths, "dest/regular/x.json"), (paths, "dest/" + "y" * 300 + ".json"), (paths, "dest/."),
        (special, "/proc/self/status"), (special, "/proc/sys/vm/drop_caches"), (special, "/dev/null"),
        (special, "/dev/full"),
        ("output paths: FIFOs, sockets", "dest/fifo"),
        ("output paths: symlinks (dangling, to a device, loops)", "dest/dangling"),
        ("output paths: symlinks (dangling, to a device, loops)", "dest/to-null"),
        ("output paths: symlinks (dangling, to a device, loops)", "dest/loop"),
    ]
    try:
        s = socket.socket(socket.AF_UNIX)
        s.bind(str(d / "sock"))
        s.close()
        dests.append(("output paths: FIFOs, sockets", "dest/sock"))
    except OSError:
        pass
    try:
        os.mknod(d / "null", 0o666 | stat.S_IFCHR, os.makedev(1, 3))
        dests.append((special, "dest/null"))
    except OSError:                 # no CAP_MKNOD here: tests/test_bad_input_corpus.py says so
        pass
    return dests


OUTPUT_OPTIONS = [
    ("compare", "--from-json", "in/report.json", "--json", "{p}"),
    ("compare", "--from-json", "in/report.json", "--plot", "{p}"),
    ("sweep", "--json", "{p}"),
    ("sweep", "--mutants", "--json", "{p}"),
    ("calibrate", "-o", "{p}"),
    ("diffcheck", "--json", "{p}"),
]


def output_cases(dests: list[tuple[str, str]]) -> list[Case]:
    cases = []
    for category, dest in dests:
        for argv in OUTPUT_OPTIONS:
            cases.append(Case(category, tuple(a.replace("{p}", dest) for a in argv)))
        # several outputs: all or nothing (the good one must not appear)
        cases.append(Case("output paths: all or nothing",
                          ("compare", "--from-json", "in/report.json", "--json", "out/good.json", "--plot", dest)))
        cases.append(Case("output paths: all or nothing",
                          ("compare", "--from-json", "in/report.json", "--plot", "out/good.svg", "--json", dest)))
    return cases


def valid_output_cases() -> list[Case]:
    """Controls: the same options with good destinations write their files."""
    ok = frozenset({0})
    return [
        Case("valid controls", ("compare", "--from-json", "in/report.json", "--json", "out/ünïcödé.json",
                                "--plot", "out/x.svg"), ok, ("out/ünïcödé.json", "out/x.svg"), False),
        Case("valid controls", ("compare", "--from-json", "in/report.json", "--json", "-"), ok, (), False),
        Case("valid controls", ("compare", "--from-json", "in/report.json", "--json", "out/link.json"), ok,
             ("out/target.json",), False),
        Case("valid controls", ("diffcheck", "--count", "0", "--kind", "flags", "--json", "out/dc.json"),
             frozenset({0, 2}), ("out/dc.json",), False),
        Case("valid controls", ("sweep", "--size", "4", "--events", "drop", "--placements", "start", "--jobs", "0",
                                "--calls-before", "0", "--after", "0", "--boundaries", "0-3", "--json", "out/sw.json"),
             ok, ("out/sw.json",), False),
    ]


# ------------------------------------------------------------------ options

EMPTY_VALUES = [
    # empty values and empty list items: errors, not the defaults
    ("run", "--size", ""), ("run", "--size", ","), ("run", "--size", "4,,8"), ("run", "--size", " "),
    ("run", "--image", ""), ("run", "--image", " "), ("run", "--scenario", ""), ("run", "--scenario", " "),
    ("run", "--profile", ""), ("run", "--inject", ""), ("run", "--inject", "drop@"),
    ("step", "--size", "", "-c", "stepi"), ("step", "--image", "", "-c", "stepi"),
    ("step", "-c", ""), ("step", "-c", ";;"), ("step", "--script", ""),
    ("gdb", "--size", ","), ("gdb", "--image", ""), ("gdb", "--scenario", ""), ("gdb", "--port", ""),
    ("gdb", "--listen", ""), ("gdb", "--symbols", ""),
    ("sweep", "--size", ""), ("sweep", "--image", ""), ("sweep", "--events", ""), ("sweep", "--events", "drop,,"),
    ("sweep", "--placements", ""), ("sweep", "--placements", "start,"), ("sweep", "--calls-before", ""),
    ("sweep", "--json", ""), ("sweep", "--executor", ""), ("sweep", "--profile", ""),
    ("compare", "--designs", ""), ("compare", "--designs", "a,,b"), ("compare", "--scenarios", ""),
    ("compare", "--scenarios", ","), ("compare", "--from-json", ""), ("compare", "--json", ""),
    ("compare", "--plot", ""), ("compare", "--oom-at", ""), ("compare", "--oom-modes", ""),
    ("compare", "--oom-at", ","), ("compare", "--image", ""),
    ("calibrate", "-o", ""), ("calibrate", "--base", ""), ("calibrate", "--name", ""),
    ("diffcheck", "--kind", ""), ("diffcheck", "--json", ""), ("bench", "--profile", ""),
    ("skipcheck", "--corpus", ""), ("skipcheck", "--placement", ""), ("decodecheck", ""), ("asm", ""),
]
OUT_OF_RANGE = [
    ("run", "--calls", "0"), ("run", "--memory", "0"), ("run", "--swap", "-1"), ("run", "--size", "-1"),
    ("run", "--size", "0x"), ("run", "--flags", "-1"), ("run", "--livelock", "0"),
    ("run", "--state-offset", "5000"), ("run", "--seed", "-1"), ("run", "--seed", "0x10000000000000000"),
    ("run", "--calls", "9999999999"), ("run", "--memory", "99999999999"),
    ("sweep", "--max-report", "-1"), ("sweep", "--jobs", "-1"), ("sweep", "--after", "1000"),
    ("sweep", "--livelock", "1"), ("sweep", "--calls-before", "-1"), ("sweep", "--seed", "-1"),
    ("compare", "--seed", "-1"), ("compare", "--scale", "nan"), ("compare", "--scale", "inf"),
    ("compare", "--scale", "0"), ("compare", "--boundaries", "0"), ("compare", "--jobs", "0"),
    ("compare", "--livelock", "0"), ("compare", "--oom-modes", "oom:0"),
    ("compare", "--json", "-", "--plot", "-"), ("compare", "--json", "out/a", "--plot", "out/a"),
    ("diffcheck", "--count", "-1"), ("diffcheck", "--jobs", "0"), ("diffcheck", "--seed", "-1"),
    ("diffcheck", "--only", "5"), ("decodecheck", "--examples", "-1", "in/good.so"),
    ("skipcheck", "--jobs", "0"), ("gdb", "--port", "70000"), ("gdb", "--port", "-1"),
]
UNUSABLE = [
    ("run", "--droppable-oom", "bogus"), ("run", "--scenario", "bogus"), ("run", "--inject", "bogus@1"),
    ("sweep", "--events", "bogus"), ("sweep", "--placements", "middle"), ("compare", "--designs", "bogus"),
    ("compare", "--scenarios", "bogus"), ("diffcheck", "--kind", "bogus"), ("skipcheck", "--placement", "bogus"),
    ("calibrate", "--image", "bogus"), ("bench", "--image", "bogus"), ("sweep", "--executor", "ftp://x"),
    ("frobnicate",), ("run", "--frobnicate"), ("run", "positional"),
    # options a command cannot use: refused, not ignored
    ("sweep", "--inject", "drop@1"), ("sweep", "--calls", "3"), ("sweep", "--scenario", "fault-path"),
    ("sweep", "--state-offset", "8"), ("sweep", "--prefault"), ("sweep", "--mutants", "--image", "builtin"),
    ("compare", "--from-json", "in/report.json", "--seed", "3"),
    ("compare", "--from-json", "in/report.json", "--designs", "pinned"),
    ("compare", "--from-json", "in/report.json", "--scale", "2"),
]


def option_cases() -> list[Case]:
    """Values that were silently replaced by defaults, ignored, or out of range."""
    return ([Case("options: empty values", a) for a in EMPTY_VALUES]
            + [Case("options: out of range", a) for a in OUT_OF_RANGE]
            + [Case("options: unknown or unusable", a) for a in UNUSABLE])


# ------------------------------------------------------------------ unicode and valid controls

def unicode_cases(work: Path) -> list[Case]:
    d = work / "ünï"
    d.mkdir()
    (d / "vdsö.so").write_bytes(_builtin_elf())
    (d / "scrïpt.txt").write_text("stepi\nregs\n")
    (d / "cörpus.txt").write_text("mov qword ptr [rdi], rax\n")
    src = (PROJECT / "asm" / "vgetrandom.s").read_text()
    (d / "vgr-ü.s").write_text(src)
    ok = frozenset({0})
    return [
        Case("unicode paths", ("run", "--image", "ünï/vdsö.so", "--size", "16", "--calls", "1"), ok, (), False),
        Case("unicode paths", ("run", "--image", "ünï/vgr-ü.s", "--size", "16", "--calls", "1"), ok, (), False),
        Case("unicode paths", ("step", "--script", "ünï/scrïpt.txt"), ok, (), False),
        Case("unicode paths", ("skipcheck", "--corpus", "ünï/cörpus.txt", "--no-lengths", "--jobs", "1",
                               "--placement", "plain"), ok, (), False),
        Case("unicode paths", ("asm", "ünï/vgr-ü.s"), ok, (), False),
        Case("unicode paths", ("run", "--image", "ünï/nöne.so")),
        Case("unicode paths", ("step", "--script", "ünï/nöne.txt")),
        Case("unicode paths", ("run", "--image", os.fsdecode(b"\xff\xfe.so"))),
        Case("unicode paths", ("compare", "--from-json", os.fsdecode(b"in/\xff.json"))),
        Case("unicode paths", ("compare", "--from-json", "in/report.json", "--json", os.fsdecode(b"out/\xff/x.json"))),
    ]


def valid_input_cases() -> list[Case]:
    ok = frozenset({0})
    return [
        Case("valid controls", ("run", "--image", "in/good.so", "--size", "16", "--calls", "1"), ok, (), False),
        Case("valid controls", ("run", "--size", "16,300", "--calls", "2", "--seed", "0xffffffffffffffff"), ok,
             (), False),
        Case("valid controls", ("step", "--script", "in/script.txt"), ok, (), False),
        Case("valid controls", ("compare", "--from-json", "in/report.json"), ok, (), False),
        Case("valid controls", ("decodecheck", "--no-unicorn", "in/good.so"), ok, (), False),
        Case("valid controls", ("run", "--profile", "./in/prof.toml", "--size", "16", "--calls", "1"), ok, (), False),
    ]


# ------------------------------------------------------------------ the corpus

def build_corpus(work: Path) -> list[Case]:
    """Write every input under `work` and return the cases (seeded: the same
    corpus every time)."""
    rng = random.Random(SEED)
    for sub in ("in", "out", "home"):
        (work / sub).mkdir()
    (work / "in" / "good.so").write_bytes(_builtin_elf())
    (work / "in" / "script.txt").write_text("stepi\nregs\n")
    (work / "in" / "prof.toml").write_text('[meta]\nbase = "zen4"\nname = "t"\n')
    (work / "out" / "target.json").write_text("{}\n")
    (work / "out" / "link.json").symlink_to("target.json")
    report = _small_report(work)
    (work / "in" / "report.json").write_text(json.dumps(report, indent=1))
    kinds = _special_inputs(work / "special")
    cases = input_cases(kinds)
    cases += elf_cases(work, rng, n_run=120, n_tools=40, n_code=80)
    cases += asm_cases(work, rng)
    cases += profile_cases(work)
    cases += text_cases(work)
    cases += report_cases(work, rng, report)
    cases += output_cases(output_destinations(work))
    cases += valid_output_cases()
    cases += option_cases()
    cases += unicode_cases(work)
    cases += valid_input_cases()
    return cases


def _small_report(work: Path) -> dict:
    """A real compare report, as small as one can be made (one design, one scenario)."""
    from emulator.compare.core import run_compare
    from emulator.compare.designs import parse_designs
    from emulator.compare.scenarios import Options
    from vdso.loader import load_image
    return run_compare(load_image("builtin"), parse_designs("droppable-skip"), ["steady"],
                       Options(scale=0.01), jobs=1)


@contextlib.contextmanager
def isolated_home(work: Path):
    """HOME and the user profile directory inside `work`: calibrate's default
    output and `--profile calibrated` never touch the real home."""
    import emulator.cli.calibrate as cal
    import emulator.cycles.profile as prof
    saved = (os.environ.get("HOME"), prof.USER_PROFILE_DIR)
    os.environ["HOME"] = str(work / "home")
    prof.USER_PROFILE_DIR = work / "home" / ".config" / "faultpath" / "profiles"
    saved_default = cal.default_output
    cal.default_output = lambda: str(prof.USER_PROFILE_DIR / "calibrated.toml")
    try:
        yield
    finally:
        if saved[0] is None:
            os.environ.pop("HOME", None)
        else:
            os.environ["HOME"] = saved[0]
        prof.USER_PROFILE_DIR = saved[1]
        cal.default_output = saved_default


def main() -> None:
    """Print the corpus's outcome per category (the issue's closing note)."""
    import tempfile
    import time
    from collections import defaultdict
    with tempfile.TemporaryDirectory(prefix="faultpath-corpus-") as tmp:
        work = Path(tmp)
        with isolated_home(work):
            t0 = time.monotonic()
            cases = build_corpus(work)
            rows: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0, 0])   # cases, exit 2, exit 0/1, failed
            failures = []
            for c in cases:
                o = run_case(c, work)
                r = rows[c.category]
                r[0] += 1
                r[1 if o.rc == 2 else 2] += 1
                if o.problems:
                    r[3] += 1
                    failures.append((c, o))
            dt = time.monotonic() - t0
    w = max(len(k) for k in rows)
    print(f"{'category':<{w}}  cases  exit 2  exit 0/1  contract failures")
    for k, (n, e2, e0, bad) in rows.items():
        print(f"{k:<{w}}  {n:5d}  {e2:6d}  {e0:8d}  {bad:17d}")
    tot = [sum(r[i] for r in rows.values()) for i in range(4)]
    print(f"{'total (' + str(len(rows)) + ' categories)':<{w}}  {tot[0]:5d}  {tot[1]:6d}  {tot[2]:8d}  {tot[3]:17d}"
          f"   ({dt:.0f} s)")
    for c, o in failures[:int(os.environ.get('CORPUS_SHOW', '40'))]:
        print(f"FAIL [{c.category}] {c.label()[:150]}: {'; '.join(o.problems)[:300]} :: {o.stderr.strip()[:300]}")


if __name__ == "__main__":
    main()
