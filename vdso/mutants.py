"""Mutants: patches over our own asm sources, applied when the image is built.

Each file in asm/mutants/ is a unified diff (`diff -u`, `git diff`) against
asm/vgetrandom.s that removes one safety property.  It starts with a header
of `#` lines that `faultpath sweep --mutants` reads:

    # mutant: no_final_recheck
    # removes: the final generation re-check (step 9)
    # breaks: Provenance
    #
    # free text ...

    --- a/asm/vgetrandom.s
    +++ b/asm/vgetrandom.s
    @@ -148,9 +148,8 @@
    ...

A mutant is thus only its change: when asm/vgetrandom.s changes, every mutant
follows, and one whose hunk no longer matches fails with the patch line it
stopped at (vdso/unidiff.py), never by building the unpatched source.  Any
`.patch` file over files in asm/ builds the same way (`--image my.patch`).
"""
from __future__ import annotations

from pathlib import Path

from vdso import unidiff
from vdso.asm_source import ASM_DIR, PROJECT_DIR, Source, display_name, read_source
from vdso.errors import AssemblyError

MUTANT_DIR = ASM_DIR / "mutants"
PATCH_SUFFIX = ".patch"


def mutant_files() -> list[str]:
    """Every mutant, as a path (sorted)."""
    if not MUTANT_DIR.is_dir():
        return []
    return sorted(str(p) for p in MUTANT_DIR.glob("*" + PATCH_SUFFIX))


def patched_sources(path: Path, display: str | None = None) -> dict[str, Source]:
    """The asm/ sources a patch file changes, patched: {file name in asm/: Source}.

    Lines keep their origin: an unchanged line is named by its line in the
    original file, an added one by its line in the patch, so errors and
    VdsoImage.source_lines point at what the user can open."""
    display = display or display_name(path)
    text = read_source(path, display).text
    out: dict[str, Source] = {}
    for fp in unidiff.parse(text, display):
        target = (PROJECT_DIR / fp.target()).resolve()
        if target.parent != ASM_DIR or not target.is_file():
            raise AssemblyError(f"{display}:{fp.hunks[0].patch_line}: the patch changes "
                                f"{fp.target()}, which is not a source in asm/")
        if target.name in out:
            raise AssemblyError(f"{display}: patches {fp.target()} twice")
        original = read_source(target)
        new_text, origins = unidiff.apply(fp, original.text, original.display, display)
        out[target.name] = Source(original.display, new_text, tuple(origins))
    return out
