"""Option values every tool parses alike: comma lists, names, seeds.

The rule they share: an option the user gave is validated or used, never
silently replaced by its default.  `--designs ''`, `--size 4,,8` and
`--seed -1` are mistakes to report, not requests for the defaults.
"""
from __future__ import annotations

from emulator.errors import UsageError

SEED_LIMIT = 1 << 64


def split_list(spec: str, option: str) -> list[str]:
    """The items of a comma list; an empty list or an empty item (`a,,b`)
    is an error."""
    if not spec.strip():
        raise UsageError(f"{option} {spec!r}: empty")
    items = [p.strip() for p in spec.split(",")]
    if not all(items):
        raise UsageError(f"{option} {spec!r}: an empty item in the comma list")
    return items


def nonempty(value: str | None, option: str) -> str | None:
    """A value given as '' (or blanks) is a mistake, never the default."""
    if value is not None and not value.strip():
        raise UsageError(f"{option} {value!r}: empty")
    return value


def check_seed(seed: int, option: str = "--seed") -> int:
    """Seeds are 0..2^64-1: random.Random(-n) is random.Random(n), so a
    negative seed would silently repeat another seed's run."""
    if not 0 <= seed < SEED_LIMIT:
        raise UsageError(f"{option} {seed}: out of range (0..2^64-1)")
    return seed
