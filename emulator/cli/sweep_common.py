"""What `faultpath sweep` and its --exec and --native forms share: the JSON
output, the profile as workers find it, the report's length."""
from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from emulator.errors import UsageError
from emulator.outputs import OutputTarget, check_output, write_output

MAX_REPORT = 30           # violation groups printed (--max-report)


def profile_arg(spec: str) -> str:
    """The profile as workers will find it: loaded here first, so that a bad
    one is refused before any work; a path made absolute."""
    from emulator.cycles.profile import load_profile, profile_path
    if not spec.strip():
        raise UsageError("--profile '': empty")
    load_profile(spec)
    return str(profile_path(spec).resolve()) if Path(spec).suffix or os.sep in spec else spec


def json_target(args: argparse.Namespace) -> OutputTarget | None:
    """--json PATH, checked before the sweep runs (emulator/outputs.py)."""
    return check_output(args.json_path, "--json") if args.json_path is not None else None


def write_json(target: OutputTarget, obj: dict) -> None:
    """Whole or not at all: a temporary file renamed over PATH (emulator/outputs.py)."""
    write_output(target, json.dumps(obj, indent=1) + "\n")
