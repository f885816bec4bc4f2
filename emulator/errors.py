"""faultpath's errors, as the CPU side sees them.

The hierarchy is rooted in vdso/errors.py (the lowest package that raises
user-facing errors); this module re-exports it and adds the classes only the
emulator raises, so that emulator code imports every error from one place.
"""
from vdso.errors import (AssemblyError, FaultpathError, HostVdsoUnavailable, ImageError,  # noqa: F401
                         UnfaithfulInstruction, UsageError)


class EmulationError(FaultpathError):
    """Unicorn reported something the fault path cannot explain; carries the
    original hook exception when there was one."""
