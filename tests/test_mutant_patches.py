"""Mutants are patches over asm/vgetrandom.s (vdso/mutants.py, vdso/unidiff.py).

The reference for applying them is GNU patch: our result must be the file
`patch -p1` writes.  A patch that no longer applies must fail with the patch
line and the target line, never build the unpatched source."""
from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from emulator.cli.main import main as cli_main
from emulator.cli.sweep import mutant_header
from vdso import unidiff
from vdso.asm_build import build_image
from vdso.asm_source import ASM_DIR, PROJECT_DIR
from vdso.errors import AssemblyError
from vdso.mutants import mutant_files, patched_sources

MUTANTS = mutant_files()
VGETRANDOM = ASM_DIR / "vgetrandom.s"
ids = [Path(p).stem for p in MUTANTS]


def _gnu_patch(patch: str, tmp_path) -> str:
    """asm/vgetrandom.s as GNU patch -p1 leaves it after applying `patch`."""
    if shutil.which("patch") is None:
        pytest.skip("GNU patch not installed")
    work = tmp_path / "tree"
    (work / "asm").mkdir(parents=True)
    shutil.copy(VGETRANDOM, work / "asm" / "vgetrandom.s")
    subprocess.run(["patch", "-s", "-p1", "--no-backup-if-mismatch", "-i", patch], cwd=work,
                   check=True, capture_output=True)
    return (work / "asm" / "vgetrandom.s").read_text()


def test_every_mutant_is_a_patch_with_its_header():
    assert len(MUTANTS) == 8
    for path in MUTANTS:
        info = mutant_header(path)
        assert info["name"] == Path(path).stem and info["removes"] and info["breaks"], path
        text = Path(path).read_text()
        assert "\n--- a/asm/vgetrandom.s\n+++ b/asm/vgetrandom.s\n@@ " in text, path
        # a patch, not a copy: only a few dozen lines, the change marked
        assert len(text.splitlines()) < 60 and "MUTANT" in text, path


@pytest.mark.parametrize("path", MUTANTS, ids=ids)
def test_our_patching_equals_gnu_patch(path, tmp_path):
    ours = patched_sources(Path(path))
    assert list(ours) == ["vgetrandom.s"]
    assert ours["vgetrandom.s"].text == _gnu_patch(path, tmp_path)


@pytest.mark.parametrize("path", MUTANTS, ids=ids)
def test_mutant_image_is_the_patched_source_and_names_its_lines(path, tmp_path):
    rel = str(Path(path).relative_to(PROJECT_DIR))
    img, ref = build_image(rel), build_image("builtin")
    assert img.name == rel and img.abi == ref.abi and img.text != ref.text
    # The same bytes as the patched file assembled as a plain .s file.
    copy = tmp_path / "patched.s"
    copy.write_text(_gnu_patch(path, tmp_path))
    plain = build_image(str(copy))
    assert plain.text == img.text and plain.symbols == img.symbols
    # Unchanged lines are named in vgetrandom.s, added ones in the patch; the
    # line named holds the same text as the line the plain copy names.
    files = {str(copy): copy.read_text().splitlines()}

    def text_at(where):
        file, line = where.rsplit(":", 1)
        if file not in files:
            files[file] = (PROJECT_DIR / file).read_text().splitlines()
        return files[file][int(line) - 1]
    added = 0
    for off, where in img.source_lines.items():
        assert where.rsplit(":", 1)[0] in ("asm/vgetrandom.s", "asm/chacha20_blocks.s", rel), where
        text = text_at(where)
        if where.startswith(rel + ":"):
            assert text.startswith("+"), where
            text, added = text[1:], added + 1
        assert text == text_at(plain.source_lines[off]), (where, plain.source_lines[off])
    assert added == len(re.findall(r"^\+ +[a-z]", Path(path).read_text(), re.M))


def _broken_copy(tmp_path, path: str, old: str, new: str) -> Path:
    text = Path(path).read_text()
    assert old in text
    bad = tmp_path / Path(path).name
    bad.write_text(text.replace(old, new, 1))
    return bad


def test_a_patch_that_no_longer_applies_names_the_mutant_and_the_line(tmp_path):
    """As if vgetrandom.s had changed under the mutant: one context line of
    the hunk differs.  The error is one line: patch file:line, target line."""
    path = str(ASM_DIR / "mutants" / "no_final_recheck.patch")
    bad = _broken_copy(tmp_path, path, "\n     jnz     .Lbulk\n", "\n     jnz     .Lsomewhere_else\n")
    lineno = bad.read_text().splitlines().index("     jnz     .Lsomewhere_else") + 1
    with pytest.raises(AssemblyError) as exc:
        build_image(str(bad))
    msg = str(exc.value)
    assert "\n" not in msg
    assert msg.startswith(f"{bad}:{lineno}: hunk #1 does not apply to asm/vgetrandom.s: line "), msg
    assert "'jnz     .Lsomewhere_else'" in msg and "'jnz     .Lbulk'" in msg
    # GNU patch without fuzz refuses it too (with its default fuzz of 2 it
    # would apply it, ignoring the changed context line)
    if shutil.which("patch"):
        r = subprocess.run(["patch", "--dry-run", "--fuzz=0", "-p1", "-i", str(bad)], cwd=PROJECT_DIR,
                           capture_output=True, text=True)
        assert r.returncode != 0 and "FAILED" in r.stdout


def test_cli_refuses_a_stale_patch_in_one_line(tmp_path, capsys):
    path = str(ASM_DIR / "mutants" / "buffer_overrun.patch")
    bad = _broken_copy(tmp_path, path, "\n     jnz     .Lbulk\n", "\n     jnz     .Lelsewhere\n")
    rc = cli_main(["run", "--image", str(bad), "--size", "4"])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and f"{bad}:" in err and "does not apply" in err, err


def test_hunks_follow_lines_inserted_above_them():
    """The offset rule of GNU patch: lines added above the hunk move it."""
    patch = unidiff.parse(Path(ASM_DIR / "mutants" / "buffer_overrun.patch").read_text(), "m.patch")[0]
    original = VGETRANDOM.read_text()
    shifted = "# one\n# two\n" + original
    a, origins_a = unidiff.apply(patch, original, "v.s", "m.patch")
    b, origins_b = unidiff.apply(patch, shifted, "v.s", "m.patch")
    assert b == "# one\n# two\n" + a
    assert [o for o in origins_b[2:] if o[0] == "m.patch"] == [o for o in origins_a if o[0] == "m.patch"]
    assert [(f, n - 2) for f, n in origins_b[2:] if f == "v.s"] == [o for o in origins_a if o[0] == "v.s"]


@pytest.mark.parametrize("text,pattern", [
    ("just words\n", r"^x\.patch: no unified diff"),
    ("--- a/asm/vgetrandom.s\n+++ b/asm/vgetrandom.s\n@@ -1,2 +1,2 @@\n x\n", r"^x\.patch:3: hunk says -2 \+2"),
    ("--- a/asm/vgetrandom.s\n+++ b/asm/vgetrandom.s\n@@ junk @@\n", r"^x\.patch:3: malformed hunk"),
    ("--- a/asm/vgetrandom.s\n+++ b/asm/vgetrandom.s\n", r"^x\.patch:2: .* no hunk"),
])
def test_malformed_patches(text, pattern):
    with pytest.raises(AssemblyError, match=pattern):
        unidiff.parse(text, "x.patch")


def test_a_patch_must_target_our_sources(tmp_path):
    p = tmp_path / "elsewhere.patch"
    p.write_text("--- a/README.md\n+++ b/README.md\n@@ -1 +1 @@\n-x\n+y\n")
    with pytest.raises(AssemblyError, match=r"not a source in asm/"):
        build_image(str(p))
