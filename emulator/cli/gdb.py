"""`faultpath gdb`: serve the stepped call to gdb over the remote serial protocol.

    faultpath gdb [run options] [--port N] [--listen ADDR] [--once]
    gdb -ex 'set architecture i386:x86-64' -ex 'target remote 127.0.0.1:1234'

The process is set up as for `faultpath step` (calls 1..K-1 run, the target
stops at instruction 0 of call K).  Binds 127.0.0.1 unless --listen names
another address (then a warning: anyone who can connect can read and write
the emulated process).  Keeps serving after a detach or disconnect (a `kill`
starts a fresh process) until killed; --once exits after the first session.
"""
from __future__ import annotations

import argparse
import sys



def register(sub, parser_class) -> None:
    from emulator.cli.main import add_run_options
    from emulator.debug.gdbstub import DEFAULT_PORT
    p = sub.add_parser("gdb", help="GDB remote stub: stepi into faults, monitor vmas/pages/fault/inject")
    add_run_options(p)
    p.set_defaults(calls=2)
    p.add_argument("--port", type=_port, default=DEFAULT_PORT,
                   help=f"TCP port (default {DEFAULT_PORT}; 0 picks a free one and prints it)")
    p.add_argument("--listen", metavar="ADDR", default="127.0.0.1",
                   help="address to bind (default 127.0.0.1; anything else is reachable from the network)")
    p.add_argument("--once", action="store_true", help="exit after the first gdb session ends")
    p.set_defaults(func=cmd_gdb)


def _port(s: str) -> int:
    try:
        n = int(s, 0)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{s!r} is not a port number") from None
    if not 0 <= n <= 65535:
        raise argparse.ArgumentTypeError(f"{n} is out of range (0..65535)")
    return n


def cmd_gdb(args: argparse.Namespace) -> int:
    from emulator.cli.main import build_run_config
    from emulator.debug.gdbstub import GdbServer, is_loopback
    from emulator.debug.session import Session
    cfg = build_run_config(args)
    server = GdbServer(lambda: Session(cfg), host=args.listen, port=args.port, once=args.once)
    port = server.listen()
    if not is_loopback(args.listen):
        print(f"faultpath gdb: warning: listening on {args.listen}, not loopback: anyone who can reach "
              f"this port can read and write the emulated process", file=sys.stderr, flush=True)
    ses = server.session
    host = args.listen if ":" not in args.listen else f"[{args.listen}]"
    print(f"faultpath gdb: call {ses.call_no} stopped at {ses.where(ses.ctx.rip)}; "
          f"listening on {host}:{port} (gdb: target remote {host}:{port})", file=sys.stderr, flush=True)
    try:
        server.serve_forever()
    finally:
        server.close()
    return 0
