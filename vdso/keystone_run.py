"""Keystone, run so that its quirks cannot hurt us.

Keystone 0.9.2 pitfalls handled here and in the source normaliser (all
reproduced on this machine):

* The lexer radix is process-global state.  Installing a sym_resolver (or any
  ks_option call) switches it to 16: `add rsp, 16` assembles as
  `add rsp, 0x16` (keystone issues #481, #538, #571).  Without ks_option the
  radix is whatever the heap held (#528).  So every run here calls ks_option
  once, deterministically (radix 16), and vdso/asm_source.py rewrites every
  decimal literal to 0x form first: the source means what GAS means, whatever
  other keystone users in the process did.
* Symbols supplied through sym_resolver get wrong RIP-relative displacements
  (computed from the displacement field instead of the end of the
  instruction; an addend is dropped: #244, #271, #351).  We never use
  sym_resolver: vdso/asm_program.py defines `vdso_rng_data` as a
  label-relative symbol instead, which keystone resolves exactly.
* `.text` crashes keystone with SIGSEGV, `.section` silently yields no bytes,
  a stray `.cfi_endproc` makes LLVM exit(1), and `.zero -1`, `.skip
  0x100000000`, `.p2align 0x40` hang it; the normaliser keeps all of these
  away.  Untrusted sources are still assembled in a forked child (isolated()):
  any other crash or exit becomes an AssemblyError and a hang is killed after
  ISOLATED_TIMEOUT.
* Keystone reports no line numbers and has no symbol table output; see
  vdso/asm_program.py for how both are recovered.
"""
from __future__ import annotations

import faulthandler
import os
import pickle
import re
import select
import signal
import tempfile
import time
from typing import Callable

from vdso.errors import AssemblyError, FaultpathError

# A user file's assembly runs in a child process, killed after this long.
ISOLATED_TIMEOUT = 30.0


class KsFailure(Exception):
    """Keystone refused the text (an ordinary assembly error, no line yet)."""


def ks_asm(text: str, addr: int) -> bytes:
    """One keystone run.  LLVM's own diagnostics (printed on stderr by the C
    library) are captured and folded into the error."""
    from keystone import KS_ARCH_X86, KS_MODE_64, KS_OPT_SYNTAX_INTEL, Ks, KsError
    ks = Ks(KS_ARCH_X86, KS_MODE_64)
    ks.syntax = KS_OPT_SYNTAX_INTEL        # the ks_option call: radix is now 16, always
    with tempfile.TemporaryFile() as err:
        saved = os.dup(2)
        os.dup2(err.fileno(), 2)
        try:
            try:
                enc, _ = ks.asm(text.encode(), addr, as_bytes=True)
                return bytes(enc or b"")
            except KsError as e:
                failure = str(e)
        finally:
            os.dup2(saved, 2)
            os.close(saved)
        err.seek(0)
        diag = err.read().decode(errors="replace")
    m = re.search(r"error: (.*)", diag)
    raise KsFailure(f"{m.group(1).strip()} ({failure})" if m else failure)


def isolated(fn: Callable, *args, name: str, locate: Callable[[], str | None] | None = None):
    """Run fn(*args) in a forked child and return its (picklable) result.

    FaultpathErrors raised in the child are re-raised here.  A crash (signal,
    exit without an answer) becomes AssemblyError("WHERE: keystone crashed"),
    WHERE being what locate() finds (the first crashing line) or `name`; a
    run longer than ISOLATED_TIMEOUT is killed."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:                                    # child
        os.close(r)
        faulthandler.disable()                      # the parent reports a crash
        try:
            try:
                payload = pickle.dumps(("ok", fn(*args)))
            except FaultpathError as e:
                payload = pickle.dumps(("err", e))
            except BaseException as e:              # a bug: keep the type in the text
                payload = pickle.dumps(("err", AssemblyError(f"{type(e).__name__}: {e}")))
            with os.fdopen(w, "wb") as f:
                f.write(payload)
        finally:
            os._exit(0)
    os.close(w)
    chunks, deadline = [], time.monotonic() + ISOLATED_TIMEOUT
    with os.fdopen(r, "rb", buffering=0) as f:
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([f], [], [], left)[0]:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                raise AssemblyError(f"{name}: keystone did not finish within "
                                    f"{ISOLATED_TIMEOUT:g} s")
            chunk = f.read(1 << 16)
            if not chunk:
                break
            chunks.append(chunk)
    payload = b"".join(chunks)
    _, status = os.waitpid(pid, 0)
    if os.WIFSIGNALED(status) or not payload:
        sig = os.WTERMSIG(status) if os.WIFSIGNALED(status) else 0
        what = signal.Signals(sig).name if sig else f"exit status {os.WEXITSTATUS(status)}"
        where = locate() if locate else None
        raise AssemblyError(f"{where or name}: keystone crashed ({what}) assembling this")
    status_word, value = pickle.loads(payload)
    if status_word == "err":
        raise value
    return value


def crashes(text: str, addr: int) -> bool:
    """Does keystone crash, exit or hang on `text`?  (Run in a child.)"""
    pid = os.fork()
    if pid == 0:
        faulthandler.disable()
        try:
            ks_asm(text, addr)
        except BaseException:
            pass
        os._exit(0)
    deadline = time.monotonic() + ISOLATED_TIMEOUT / 3
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.WIFSIGNALED(status) or os.WEXITSTATUS(status) != 0
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            return True
        time.sleep(0.002)
