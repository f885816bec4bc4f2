"""The native twin's errors (rooted in faultpath's one hierarchy)."""
from vdso.errors import FaultpathError


class TwinError(FaultpathError):
    """The tracee did something the tracer did not expect (a bug or a hostile host)."""


class TwinUnavailable(TwinError):
    """The native twin cannot run here (no ptrace rights, no host __vdso_getrandom,
    no root for an event); the message is the one-line reason to skip with."""


class TraceeTimeout(TwinError):
    """The tracee made no ptrace stop within its time bound."""
