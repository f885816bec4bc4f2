"""The one error hierarchy of faultpath.

Every error a user can provoke (bad image, bad assembly, bad option, an
instruction Unicorn cannot run faithfully) is a FaultpathError.  The CLI turns
it into a single line on stderr and exit status 2; anything else is a bug and
keeps its traceback.

The hierarchy is rooted here, in the lowest package that raises user-facing
errors, so that vdso/ (image loaders, the assembler) and emulator/ share it
without vdso/ importing emulator/.  mm/ raises none: like the kernel, it
answers -errno.  emulator/errors.py adds the CPU side's own classes.
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
