"""Writing a fitted profile: TOML text (keys quoted where they must be, every
string escaped, no NaN or infinity: a profile must load back), atomically (a
temporary file in the same directory, fsync, rename; on any error nothing is
left behind), and the whole `calibrate` run: measure, check, fit, write.
"""
from __future__ import annotations

import math

from emulator.calibrate.fit import fit_profile
from emulator.calibrate.measure import check_measurements, measure_all
from emulator.errors import FaultpathError
from emulator.outputs import check_output, write_output


def toml_string(v: str) -> str:
    """A TOML basic string: quotes, backslashes and every control character escaped."""
    out = []
    for ch in v:
        if ch in ('"', "\\"):
            out.append("\\" + ch)
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\t":
            out.append("\\t")
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if not math.isfinite(v):
            raise FaultpathError(f"calibrate: a non-finite figure ({v}) cannot go into a profile")
        return repr(round(v, 4))
    if isinstance(v, str):
        return toml_string(v)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{ " + ", ".join(f"{_key(k)} = {toml_value(x)}" for k, x in v.items()) + " }"
    raise TypeError(f"cannot write {type(v).__name__} to TOML")


def _key(k) -> str:
    k = str(k)
    return k if k.replace("_", "").replace("-", "").isalnum() and k.isascii() else toml_value(k)


def dump_toml(sections: dict, header: str = "", comments: dict | None = None) -> str:
    """Sections of scalars/lists/inline tables, with an optional comment per key."""
    comments = comments or {}
    out = [("# " + line).rstrip() for line in header.splitlines()] if header else []
    for sec, items in sections.items():
        out.append("")
        out.append(f"[{sec}]")
        for k, v in items.items():
            c = comments.get(f"{sec}.{k}")
            out.append(f"{_key(k)} = {toml_value(v)}" + (f"   # {c}" if c else ""))
    return "\n".join(out) + "\n"


def write_atomic(path: str, text: str, option: str = "-o") -> None:
    """Write a profile to path, whole or not at all, never over anything but a
    regular file (emulator/outputs.py: a temporary file in the same directory,
    fsync'ed, renamed)."""
    import tomllib
    tomllib.loads(text)                 # never write something we could not read back
    write_output(check_output(path, option, allow_stdout=False), text)


def calibrate(out_path: str, quick: bool = False, image: str = "auto", base: str = "zen4", log=None,
              name: str | None = None) -> tuple[dict, dict]:
    """Measure, fit and write the profile atomically; returns (measurements, sections)."""
    meas = measure_all(quick=quick, image=image, log=log)
    problems = check_measurements(meas)
    if problems:
        raise FaultpathError("calibrate: " + "; ".join(problems))
    sections, com = fit_profile(meas, base=base, name=name)
    header = ("faultpath cycle profile written by `faultpath calibrate` (a variant of the\n"
              f"'{base}' profile: only what was measured here is listed; the rest comes from it).\n"
              "Units: [forms]/[core] core cycles, [event]/[measured] TSC ticks.\n"
              + (f"vDSO measured: {meas.get('vdso_image')} {meas.get('vdso_note') or ''}".rstrip() + "\n"))
    text = dump_toml(sections, header, com)
    write_atomic(out_path, text)
    return meas, sections
