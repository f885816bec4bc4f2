"""The one error hierarchy of faultpath.

Every error a user can provoke (bad image, bad assembly, bad option, an
instruction Unicorn cannot run faithfully) is a FaultpathError.  The CLI turns
it into a single line on stderr and exit status 2; anything else is a bug and
keeps its traceback.
"""


class FaultpathError(Exception):
    """Base class: a user-facing problem, reported as one line."""


class UsageError(FaultpathError):
    """A bad option or argument (size, flag, inject kind, ...)."""


class ImageError(FaultpathError):
    """A vDSO image cannot be loaded: not ELF, truncated, missing symbol."""


class AssemblyError(FaultpathError):
    """Keystone could not assemble a source; the message carries file:line."""


class UnfaithfulInstruction(FaultpathError):
    """Code contains an instruction Unicorn 2.1.x does not run faithfully
    (VEX/EVEX-encoded AVX, lock bt* reg); refused before it runs."""


class HostVdsoUnavailable(ImageError):
    """The running kernel's vDSO has no __vdso_getrandom (before 6.11)."""


class EmulationError(FaultpathError):
    """Unicorn reported something the fault path cannot explain; carries the
    original hook exception when there was one."""
