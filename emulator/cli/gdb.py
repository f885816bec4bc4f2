"""`faultpath gdb`: serve the stepped call to gdb over the remote serial protocol.

    faultpath gdb [run options] [--port N] [--listen ADDR] [--once] [--symbols FILE]
    gdb -ex 'target remote 127.0.0.1:1234'

The process is set up as for `faultpath step` (calls 1..K-1 run, the target
stops at instruction 0 of call K).  gdb finds the vDSO and its symbols by
itself, as for a real process (aux vector, /proc/PID/maps, build-id debug
file); `--symbols FILE` supplies a debug file such as the kernel's
vdso64.so.dbg for the running kernel's image.

Binds 127.0.0.1 unless --listen names another address, which must be
explicit (an empty one is refused; then a warning: anyone who can connect
can read and write the emulated process).  Serves one gdb at a time: a
second one gets an error reply.  Keeps serving after a detach or disconnect
(a `kill` starts a fresh process) until killed; --once exits after the first
session.
"""
from __future__ import annotations

import argparse
import sys


def register(sub, parser_class) -> None:
    from emulator.cli.main import add_run_options
    from emulator.debug.gdbstub import DEFAULT_PORT, IDLE_TIMEOUT, PACKET_TIMEOUT
    from emulator.debug.timeline import DEFAULT_EVERY
    p = sub.add_parser("gdb", help="GDB remote stub: symbols, watchpoints, reverse execution, fault stops")
    add_run_options(p)
    p.set_defaults(calls=2)
    p.add_argument("--port", type=_port, default=DEFAULT_PORT,
                   help=f"TCP port (default {DEFAULT_PORT}; 0 picks a free one and prints it)")
    p.add_argument("--listen", metavar="ADDR", default="127.0.0.1",
                   help="address to bind (default 127.0.0.1; anything else is reachable from the network "
                        "and must be named explicitly, e.g. 0.0.0.0)")
    p.add_argument("--once", action="store_true", help="exit after the first gdb session ends")
    p.add_argument("--symbols", metavar="FILE", default=None,
                   help="debug file for the image (e.g. the kernel's vdso64.so.dbg); its build-id must match")
    p.add_argument("--idle-timeout", type=_seconds, default=IDLE_TIMEOUT, metavar="SECONDS",
                   help=f"drop a client that sends nothing for this long (default {IDLE_TIMEOUT:g}; 0: never)")
    p.add_argument("--packet-timeout", type=_seconds, default=PACKET_TIMEOUT, metavar="SECONDS",
                   help=f"drop a client whose packet does not complete in this long (default {PACKET_TIMEOUT:g})")
    p.add_argument("--snapshot-every", type=_positive, default=DEFAULT_EVERY, metavar="N",
                   help=f"snapshot every N instructions for reverse execution (default {DEFAULT_EVERY})")
    p.set_defaults(func=cmd_gdb)


def _port(s: str) -> int:
    try:
        n = int(s, 0)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{s!r} is not a port number") from None
    if not 0 <= n <= 65535:
        raise argparse.ArgumentTypeError(f"{n} is out of range (0..65535)")
    return n


def _seconds(s: str) -> float:
    try:
        v = float(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{s!r} is not a number of seconds") from None
    if not 0 <= v <= 86400 * 7:
        raise argparse.ArgumentTypeError(f"{s} is out of range (0..604800)")
    return v


def _positive(s: str) -> int:
    try:
        n = int(s, 0)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{s!r} is not a number") from None
    if not 1 <= n <= 1 << 32:
        raise argparse.ArgumentTypeError(f"{n} is out of range (1..{1 << 32})")
    return n


def cmd_gdb(args: argparse.Namespace) -> int:
    from emulator.cli.main import build_run_config
    from emulator.debug.gdbstub import GdbServer, is_loopback
    from emulator.debug.session import Session
    from emulator.errors import UsageError
    if not args.listen.strip():
        raise UsageError("--listen: an empty address would listen on every interface; name one "
                         "(127.0.0.1, or e.g. 0.0.0.0 to accept other hosts)")
    cfg = build_run_config(args)
    server = GdbServer(lambda: Session(cfg, snapshot_every=args.snapshot_every), host=args.listen,
                       port=args.port, once=args.once, symbols_file=args.symbols,
                       idle_timeout=args.idle_timeout or None, packet_timeout=max(args.packet_timeout, 0.1))
    try:
        port = server.listen()
        if not is_loopback(args.listen):
            print(f"faultpath gdb: warning: listening on {args.listen}, not loopback: anyone who can reach "
                  f"this port can read and write the emulated process", file=sys.stderr, flush=True)
        ses = server.session
        host = args.listen if ":" not in args.listen else f"[{args.listen}]"
        print(f"faultpath gdb: call {ses.call_no} stopped at {ses.where(ses.ctx.rip)}; "
              f"listening on {host}:{port} (gdb: target remote {host}:{port})", file=sys.stderr, flush=True)
        server.serve_forever()
    finally:
        server.close()
    return 0
