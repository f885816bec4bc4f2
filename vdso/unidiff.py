"""Unified diffs (`diff -u`, `git diff`): parse them and apply them exactly.

Applying follows GNU patch without fuzz: a hunk's context and removed lines
must match the target to the letter.  When they do not match at the line the
hunk names (the target gained or lost lines above it), the nearest position
after the previous hunk where they do match is taken, as patch does ("Hunk #2
succeeded at 150 (offset 2 lines)").  A hunk that matches nowhere is an
error naming the patch line and the target line it expected, never a silent
partial result.

The result keeps, for every line, where it comes from: unchanged lines point
at the target file and their old line number, added lines at the patch file
and the line of the hunk they were written on.  Text before the first `---`
line (a description, a mail header) is ignored, as patch ignores it.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from vdso.errors import AssemblyError

_HUNK_RE = re.compile(r"@@ -(\d+)(?:,(\d+))? \+(\d+)(?:,(\d+))? @@")


@dataclass(frozen=True)
class HunkLine:
    op: str               # " " context, "-" removed, "+" added
    text: str
    patch_line: int       # where it stands in the patch (1-based)


@dataclass(frozen=True)
class Hunk:
    old_start: int        # 1-based, as in the @@ line
    old_count: int
    patch_line: int       # the @@ line
    lines: tuple[HunkLine, ...]

    @property
    def old_lines(self) -> list[str]:
        return [ln.text for ln in self.lines if ln.op != "+"]


@dataclass(frozen=True)
class FilePatch:
    old_path: str         # as written after `--- ` (timestamp dropped)
    new_path: str
    hunks: tuple[Hunk, ...]

    def target(self, strip: int = 1) -> str:
        """The file patched, with `strip` leading components removed (patch -p1)."""
        path = self.new_path if self.new_path != "/dev/null" else self.old_path
        return "/".join(path.split("/")[strip:]) or path


def _path(line: str) -> str:
    return line[4:].split("\t", 1)[0].strip()


def parse(text: str, name: str) -> list[FilePatch]:
    """The file patches of a unified diff; AssemblyError("name:line: ...")
    when it is malformed."""
    lines = text.splitlines()
    out: list[FilePatch] = []
    i = 0
    while i < len(lines):
        if not (lines[i].startswith("--- ") and i + 1 < len(lines) and lines[i + 1].startswith("+++ ")):
            i += 1
            continue
        old, new = _path(lines[i]), _path(lines[i + 1])
        i += 2
        hunks = []
        while i < len(lines) and lines[i].startswith("@@"):
            m = _HUNK_RE.match(lines[i])
            if not m:
                raise AssemblyError(f"{name}:{i + 1}: malformed hunk header `{lines[i]}`")
            old_start, new_start = int(m.group(1)), int(m.group(3))
            old_count = int(m.group(2)) if m.group(2) is not None else 1
            new_count = int(m.group(4)) if m.group(4) is not None else 1
            header, i = i + 1, i + 1
            body: list[HunkLine] = []
            seen_old = seen_new = 0
            while i < len(lines) and (seen_old < old_count or seen_new < new_count):
                line = lines[i]
                if line.startswith("\\"):               # "\ No newline at end of file"
                    i += 1
                    continue
                op = line[:1] if line else " "
                if op not in " -+":
                    break
                body.append(HunkLine(op, line[1:], i + 1))
                seen_old += op != "+"
                seen_new += op != "-"
                i += 1
            while i < len(lines) and lines[i].startswith("\\"):
                i += 1
            if (seen_old, seen_new) != (old_count, new_count):
                raise AssemblyError(f"{name}:{header}: hunk says -{old_count} +{new_count} lines "
                                    f"but has -{seen_old} +{seen_new}")
            hunks.append(Hunk(old_start, old_count, header, tuple(body)))
        if not hunks:
            raise AssemblyError(f"{name}:{i}: `--- {old}` is followed by no hunk")
        out.append(FilePatch(old, new, tuple(hunks)))
    if not out:
        raise AssemblyError(f"{name}: no unified diff in it (no `---`/`+++` lines)")
    return out


Origin = tuple[str, int]          # (file, 1-based line)


def apply(patch: FilePatch, text: str, target_name: str, patch_name: str) -> tuple[str, list[Origin]]:
    """Apply one file patch to `text`; return the new text and the origin of
    each of its lines."""
    old = text.splitlines()
    out: list[str] = []
    origins: list[Origin] = []
    pos = 0                                  # 0-based: lines before it are done
    for n, hunk in enumerate(patch.hunks, 1):
        at = _find(old, hunk, pos)
        if at is None:
            raise AssemblyError(_mismatch(old, hunk, n, target_name, patch_name))
        for k in range(pos, at):
            out.append(old[k])
            origins.append((target_name, k + 1))
        k = at
        for line in hunk.lines:
            if line.op == "+":
                out.append(line.text)
                origins.append((patch_name, line.patch_line))
            elif line.op == " ":
                out.append(old[k])
                origins.append((target_name, k + 1))
                k += 1
            else:
                k += 1
        pos = k
    for k in range(pos, len(old)):
        out.append(old[k])
        origins.append((target_name, k + 1))
    return "\n".join(out) + ("\n" if out else ""), origins


def _matches(old: list[str], want: list[str], at: int) -> bool:
    return at >= 0 and at + len(want) <= len(old) and old[at:at + len(want)] == want


def _find(old: list[str], hunk: Hunk, pos: int) -> int | None:
    """Where the hunk's old lines stand: at the line it names or, failing
    that, at the nearest offset not before `pos`."""
    want = hunk.old_lines
    # An empty old side (a pure insertion at the top) is "after line old_start".
    named = hunk.old_start - 1 if hunk.old_count else hunk.old_start
    for delta in range(0, len(old) + 1):
        for at in ((named + delta, named - delta) if delta else (named,)):
            if at >= pos and _matches(old, want, at):
                return at
    return None


def _mismatch(old: list[str], hunk: Hunk, n: int, target_name: str, patch_name: str) -> str:
    """One line: which patch line expected what, and what the target has there."""
    named = max(hunk.old_start - 1, 0)
    for j, (line, have) in enumerate(zip([ln for ln in hunk.lines if ln.op != "+"],
                                         old[named:] + [None] * len(hunk.lines))):
        if have != line.text:
            found = "the end of the file" if have is None else repr(have.strip())
            return (f"{patch_name}:{line.patch_line}: hunk #{n} does not apply to {target_name}: "
                    f"line {named + j + 1} should read {line.text.strip()!r} but reads {found}, "
                    f"and the hunk matches nowhere else")
    return (f"{patch_name}:{hunk.patch_line}: hunk #{n} does not apply to {target_name} "
            f"(it would overlap the hunk before it)")
