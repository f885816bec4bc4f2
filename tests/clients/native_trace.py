"""Run a client natively under ``strace -f`` and normalise what it did.

The runner and the normalisation moved into the product, where
`faultpath exec --native` needs them too (emulator/exec/strace.py); this
module keeps the tests' import path."""
from emulator.exec.strace import (ADDRESS_MIN, DATA_CALLS, Event, Trace, have_strace, normalise,  # noqa: F401
                                  parse_line, render, run)
