"""A GDB remote-serial-protocol server over a stepper Session (all-stop).

Hand-written rather than udbserver: it binds loopback by default, leaves the
run loop to the Session (fault stops, injections, count-bounded chunks), and
answers `monitor` with the stepper's own commands.

What gdb gets, and why:
- target.xml (emulator/debug/target.py): x86-64, osabi GNU/Linux;
- the aux vector (qXfer:auxv:read) with AT_SYSINFO_EHDR, the executable
  (qXfer:exec-file:read) and files over vFile (emulator/debug/hostio.py):
  /proc/PID/task/PID/maps, the caller's ELF (emulator/debug/process_elf.py)
  and the vDSO's debug file (emulator/debug/debugfile.py), so gdb loads the
  vDSO's symbols from target memory exactly as for a real process;
- g/G p/P m/M, s/S c/C, vCont, Z0/Z1 breakpoints, Z2/Z3/Z4 watchpoints
  (write/read/access), bs/bc reverse step/continue, D, k, vKill, qRcmd
  (monitor), one thread, Ctrl-C while running.

Stops: a fault stops the target with SIGSEGV (T0b) *before* it is handled;
gdb's next stepi/continue carries it out.  A watchpoint stops with
`watch:ADDR` after the store (gdb shows old and new value); a store the OOM
handler skipped, or watched memory a drop zeroed, stops with SIGTRAP and the
reason named on the console.  The end of the call is a SIGTRAP at the return
sentinel with rax holding the return value; an OOM kill is a SIGKILL stop.
Reverse execution past the start of the call answers `replaylog:begin`.

One client at a time.  A second client is answered with an error reply
(`E.busy...`) and disconnected at once, rather than queued: a stock gdb
then prints the reason instead of hanging.  A client that stops sending in
the middle of a packet is dropped after the packet timeout, one that sends
nothing after the idle timeout (emulator/debug/rsp.py).
"""
from __future__ import annotations

import gc
import ipaddress
import queue
import re
import socket
import sys
import threading

from emulator.debug import commands, views
from emulator.debug.debugfile import debug_file
from emulator.debug.hostio import HostIO
from emulator.debug.procfs import auxv, maps
from emulator.debug.process_elf import EXE_PATH, caller_elf
from emulator.debug.rsp import MAX_PACKET, Connection, Disconnected, escape, frame
from emulator.debug.target import (G_SIZE, REGNUM, REGS, TARGET_XML, ProtocolError, all_registers, parse_g,  # noqa: F401
                                   parse_hex, parse_hexbytes, parse_reg_value, parse_regnum, read_reg,
                                   write_reg)
from emulator.errors import FaultpathError, UsageError

DEFAULT_PORT = 1234
PACKET_TIMEOUT = 10.0          # seconds for the rest of a packet once `$` arrived
IDLE_TIMEOUT = 600.0           # seconds without a packet before a client is dropped
MAX_REFUSING = 8               # busy replies in flight at once; more are closed unanswered
BUSY_GRACE = 1.0               # seconds a second client waits for one that is just leaving
SIGINT, SIGILL, SIGTRAP, SIGBUS, SIGKILL, SIGSEGV = 2, 4, 5, 7, 9, 11
MAX_MEM = (MAX_PACKET - 8) // 2      # bytes per m reply / M packet
# The process id gdb is told (multiprocess): gdb reads /proc/PID/task/PID/maps for
# the vDSO's extent only when the target names a real-looking pid.
PID = 4242
THREAD = f"p{PID:x}.{PID:x}"
WATCH_KINDS = {2: "write", 3: "read", 4: "access"}
_STOP_KEY = {"write": "watch", "read": "rwatch", "access": "awatch"}
_PROC_MAPS = re.compile(rf"/proc/{PID}(/task/{PID})?/maps")

QSUPPORTED = (f"PacketSize={MAX_PACKET:x};qXfer:features:read+;qXfer:auxv:read+;qXfer:exec-file:read+;"
              "QStartNoAckMode+;multiprocess+;swbreak+;hwbreak+;vContSupported+;ReverseStep+;ReverseContinue+").encode()


class Handler:
    """The packets of one connection, against the server's current session."""

    def __init__(self, conn: Connection, server: "GdbServer"):
        self.conn = conn
        self.server = server
        self.hostio = HostIO(server.file_for)

    @property
    def ses(self):
        return self.server.session

    # ------------------------------------------------------------------ loop
    def serve(self) -> str:
        """Serve until detach, kill or disconnect; returns which."""
        try:
            while True:
                pkt = self.conn.read_packet()
                if pkt is None:          # Ctrl-C while already stopped: nothing to interrupt
                    continue
                try:
                    reply = self.dispatch(pkt)
                except Disconnected:
                    raise
                except FaultpathError as e:
                    self.server.log(f"{_show(pkt)}: {e}")
                    reply = b"E16" if isinstance(e, ProtocolError) else b"E01"
                except Exception as e:   # never take the server down for one packet
                    self.server.log(f"{_show(pkt)}: internal error: {type(e).__name__}: {e}")
                    reply = b"E01"
                if isinstance(reply, tuple):     # (reply, outcome)
                    if reply[0] is not None:
                        self.conn.send(reply[0])
                    return reply[1]
                if reply is not None:
                    self.conn.send(reply)
        except Disconnected as e:
            self.server.log(e.why)
            return "disconnect"
        finally:
            self.hostio.close_all()

    def dispatch(self, pkt: bytes):
        ses = self.ses
        c = pkt[:1]
        body = pkt[1:]
        if pkt == b"?":
            return self.server.stop_reply()
        if c == b"g":
            return all_registers(ses).hex().encode()
        if c == b"G":
            values = parse_g(body)                   # all valid, or nothing is written
            for i, raw in enumerate(values):
                write_reg(ses, i, raw)
            return b"OK"
        if c == b"p":
            return read_reg(ses, parse_regnum(body)).hex().encode()
        if c == b"P":
            num, eq, val = body.partition(b"=")
            if not eq:
                raise ProtocolError("P packet without '='")
            n = parse_regnum(num)
            write_reg(ses, n, parse_reg_value(n, val))
            return b"OK"
        if c == b"m":
            addr, n = self._addr_len(body)
            data = ses.read_memory(addr, min(n, MAX_MEM))
            return data.hex().encode() if data or n == 0 else b"E14"
        if c == b"M":
            head, colon, data = body.partition(b":")
            if not colon:
                raise ProtocolError("M packet without ':'")
            addr, n = self._addr_len(head)
            raw = parse_hexbytes(data, "M data")
            if len(raw) != n or n > MAX_MEM:
                raise ProtocolError(f"M packet: {len(raw)} data bytes for a length of {n}")
            return b"OK" if ses.write_memory(addr, raw) == n else b"E14"
        if c == b"X":
            return b""                   # no binary writes: gdb falls back to M
        if c in (b"s", b"c", b"S", b"C"):
            addr = body.split(b";", 1)[1] if c in (b"S", b"C") and b";" in body else (
                body if c in (b"s", b"c") else b"")
            if c in (b"S", b"C") and body:
                parse_hex(body.split(b";", 1)[0], "signal", 0xFF)
            if addr:
                ses.set_register("rip", parse_hex(addr, "resume address"))
            return self.resume("step" if c in (b"s", b"S") else "cont")
        if pkt == b"bs":
            return self.resume("step", reverse=True)
        if pkt == b"bc":
            return self.resume("cont", reverse=True)
        if pkt.startswith(b"vCont?"):
            return b"vCont;c;C;s;S"
        if pkt.startswith(b"vCont;"):
            return self.vcont(pkt[6:])
        if c in (b"Z", b"z"):
            return self.point(c == b"Z", body)
        if c == b"D":
            return (b"OK", "detach")
        if pkt == b"k":
            return (None, "kill")
        if pkt.startswith(b"vKill"):
            return (b"OK", "kill")
        if c == b"H" or c == b"T":
            return b"OK"
        if pkt.startswith(b"qSupported"):
            return QSUPPORTED
        if pkt == b"QStartNoAckMode":
            self.conn.send(b"OK")
            self.conn.ack = False
            return None
        if pkt.startswith(b"qXfer:"):
            return self.xfer(pkt[len(b"qXfer:"):])
        if pkt.startswith(b"vFile:"):
            return self.hostio.handle(pkt, MAX_PACKET)
        if pkt.startswith(b"qRcmd,"):
            line = parse_hexbytes(pkt[6:], "monitor command").decode("utf-8", "replace")
            return self.monitor(line)
        if pkt == b"qC":
            return b"QC" + THREAD.encode()
        if pkt == b"qfThreadInfo":
            return b"m" + THREAD.encode()
        if pkt == b"qsThreadInfo":
            return b"l"
        if pkt.startswith(b"qAttached"):
            return b"1"
        if pkt.startswith(b"qSymbol"):
            return b"OK"
        if pkt.startswith(b"qThreadExtraInfo"):
            return f"getrandom call {ses.call_no}".encode().hex().encode()
        return b""                       # unsupported: the empty reply

    @staticmethod
    def _addr_len(text: bytes) -> tuple[int, int]:
        a, comma, n = text.partition(b",")
        if not comma:
            raise ProtocolError("ADDR,LENGTH expected")
        addr = parse_hex(a, "address")
        length = parse_hex(n, "length")
        if addr + length > 1 << 64:
            raise ProtocolError(f"{addr:#x}+{length:#x} runs past the end of the address space")
        return addr, length

    # ------------------------------------------------------------------ breakpoints, watchpoints
    def point(self, insert: bool, body: bytes) -> bytes:
        fields = body.split(b";", 1)[0].split(b",")
        if len(fields) != 3 or b";" in body:
            raise ProtocolError("Z/z: TYPE,ADDR,KIND expected (no conditions)")
        kind = parse_hex(fields[0], "type", 4)
        addr = parse_hex(fields[1], "address")
        size = parse_hex(fields[2], "kind", 0xFFFF)
        ses = self.ses
        if kind in (0, 1):
            if size != 1:
                raise ProtocolError(f"an x86 breakpoint has kind 1, not {size}")
            if insert:
                ses.add_breakpoint(hex(addr))
            else:
                ses.remove_breakpoint_at(addr)
            return b"OK"
        if not 1 <= size <= 4096 or addr + size > 1 << 64:
            raise ProtocolError(f"watchpoint length {size} out of range (1..4096)")
        if insert:
            ses.add_watch(addr, size, WATCH_KINDS[kind], origin="gdb")
        else:
            ses.remove_watch_at(addr, size, WATCH_KINDS[kind])
        return b"OK"

    # ------------------------------------------------------------------ qXfer
    def xfer(self, rest: bytes) -> bytes:
        obj, _, rest = rest.partition(b":")
        op, _, rest = rest.partition(b":")
        annex, _, span = rest.rpartition(b":")
        if op != b"read":
            return b""
        off, n = self._addr_len(span)
        if obj == b"features":
            if annex != b"target.xml":
                return b"E00"
            data = TARGET_XML
        elif obj == b"auxv":
            data = auxv(self.ses.kernel.image.base)
        elif obj == b"exec-file":
            data = EXE_PATH.encode()
        else:
            return b""
        chunk = data[off:off + min(n, MAX_PACKET // 2 - 8)]
        more = off + len(chunk) < len(data)
        return (b"m" if more else b"l") + escape(chunk)

    # ------------------------------------------------------------------ execution
    def vcont(self, actions: bytes):
        mode = None
        for act in actions.split(b";"):
            if not act:
                continue
            a, _, tid = act.partition(b":")
            if tid and not _our_thread(tid):
                continue
            if a[:1] in (b"s", b"S"):
                mode = "step"
                break
            if a[:1] in (b"c", b"C"):
                mode = "cont"
                break
            raise ProtocolError(f"vCont action {a[:8]!r} not supported")
        if mode is None:
            raise ProtocolError("vCont without an action for thread 1")
        return self.resume(mode)

    def resume(self, mode: str, reverse: bool = False):
        s = self.server
        ses = self.ses
        if reverse:
            stop = ses.reverse(mode, poll=self.conn.poll_interrupt)
        else:
            stop = ses.resume(mode, 1, poll=self.conn.poll_interrupt)
        if self.conn.closed:
            raise Disconnected()
        s.last_stop = stop
        lines = views.event_lines(ses, stop.events, stop.syscalls)
        if stop.watch is not None and not (_reported_as_watch(stop.watch) and stop.watch.why in ("write", "read")):
            lines.append(stop.watch.text(ses.where))      # a reason gdb cannot show by itself
        if stop.reason in ("fault", "done", "kernel-fault", "history-begin"):
            text = views.stop_text(ses, stop)
        else:
            text = "\n".join(lines)
        if text:
            self.conn.console(text + "\n")
        return s.stop_reply()

    def monitor(self, line: str) -> bytes:
        ses = self.ses
        line = line.strip()
        if line in ("", "help"):
            text = "monitor commands:\n" + commands.help_text(monitor=True) + "\n"
        else:
            try:
                text = commands.execute(ses, line, monitor=True)
            except FaultpathError as e:
                text = f"error: {str(e).splitlines()[0] if str(e) else type(e).__name__}"
            if text and not text.endswith("\n"):
                text += "\n"
        if text:
            self.conn.console(text)
        return b"OK"


def _reported_as_watch(w) -> bool:
    """gdb takes a `watch:` stop for a write watchpoint only when the value
    changed (it resumes silently otherwise); the other reasons (a store that
    faulted or was skipped, an unchanged drop) stop as plain SIGTRAP/SIGSEGV
    with the reason on the console."""
    if w.watch.kind == "write":
        return w.changed and w.why in ("write", "kernel-write", "dropped", "changed")
    return w.why in ("read", "write")


def _our_thread(tid: bytes) -> bool:
    """A thread-id that names our one thread (or all threads)."""
    pid, dot, lwp = tid.partition(b".")
    if not dot:
        return tid in (b"-1", b"0", b"1", b"%x" % PID) or tid == f"p{PID:x}".encode()
    return pid in (f"p{PID:x}".encode(), b"p-1", b"p0") and lwp in (b"-1", b"0", b"%x" % PID)


def _show(pkt: bytes) -> str:
    return repr(pkt[:40]) + ("..." if len(pkt) > 40 else "")


# ---------------------------------------------------------------------------- server
class GdbServer:
    def __init__(self, make_session, host: str = "127.0.0.1", port: int = DEFAULT_PORT, once: bool = False,
                 log=None, symbols_file: str | None = None, packet_timeout: float = PACKET_TIMEOUT,
                 idle_timeout: float | None = IDLE_TIMEOUT):
        self.make_session = make_session
        self.host = host
        self.port = port
        self.once = once
        self.symbols_file = symbols_file
        self.packet_timeout = packet_timeout
        self.idle_timeout = idle_timeout
        self.last_stop = None
        self._log = log or (lambda msg: print(f"faultpath gdb: {msg}", file=sys.stderr, flush=True))
        self.sock: socket.socket | None = None
        self._incoming: queue.Queue = queue.Queue()
        self._busy = False                # a client is being served (guarded by _free)
        self._free = threading.Condition()
        self._stopping = threading.Event()
        self._refusing = threading.Semaphore(MAX_REFUSING)
        self._active_peer = ""
        self.session = None
        self._files: dict[str, bytes] = {}
        self.new_session()

    def log(self, msg: str) -> None:
        self._log(msg)

    def new_session(self) -> None:
        old = self.session
        self.session = None
        if old is not None:
            old.close()
            del old
            # A process is a cycle of Python objects (Unicorn hooks call back into
            # the Task that owns the Unicorn); the collector's thresholds count
            # Python objects, not Unicorn's tens of MB of native memory, so left to
            # itself it lets dead processes pile up (40 -> 106 MB over 100 kills).
            gc.collect()
        self.session = self.make_session()
        self.last_stop = None
        ses = self.session
        self._files = {EXE_PATH: caller_elf(ses.kernel, ses.caller)}
        dbg = debug_file(ses.kernel.image, self.symbols_file)
        if dbg is not None:
            self._files[dbg[0]] = dbg[1]

    def file_for(self, path: str) -> bytes | None:
        """What vFile:open of `path` reads (None: no such file)."""
        if _PROC_MAPS.fullmatch(path):
            ses = self.session
            return maps(ses.kernel, ses.m.mm, EXE_PATH, ses.symbols.kernel_names()).encode()
        return self._files.get(path)

    # ------------------------------------------------------------------ sockets
    def listen(self) -> int:
        if not self.host:
            raise UsageError("--listen: an empty address would listen on every interface; "
                             "name one (127.0.0.1, or e.g. 0.0.0.0 to accept other hosts)")
        fam = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        sock = socket.socket(fam, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((self.host, self.port))
            sock.listen(4)
        except OSError as e:
            sock.close()
            raise UsageError(f"cannot listen on {self.host}:{self.port}: {e.strerror or e}") from None
        sock.settimeout(0.5)          # the acceptor checks for shutdown between waits
        self.sock = sock
        self.port = sock.getsockname()[1]
        return self.port

    def _accept_loop(self) -> None:
        while not self._stopping.is_set():
            try:
                conn, peer = self.sock.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if self._claim(0):
                self._incoming.put((conn, peer))
            elif self._refusing.acquire(blocking=False):
                threading.Thread(target=self._refuse, args=(conn, peer), daemon=True).start()
            else:
                conn.close()

    def _claim(self, wait: float) -> bool:
        """Take the session for a new client if it is free within `wait` seconds."""
        with self._free:
            if self._busy:
                self._free.wait_for(lambda: not self._busy, timeout=wait)
            if self._busy:
                return False
            self._busy = True
            return True

    def _release(self) -> None:
        with self._free:
            self._busy = False
            self._free.notify_all()

    def _refuse(self, conn: socket.socket, peer) -> None:
        """Answer a second client's first packet with an error and hang up,
        unless the session frees up within BUSY_GRACE seconds (the previous
        client was just leaving): then it is served."""
        if self._claim(BUSY_GRACE):
            self._refusing.release()
            self._incoming.put((conn, peer))
            return
        try:
            self.log(f"refused {peer[0]}:{peer[1]}: another gdb ({self._active_peer}) is attached")
            conn.settimeout(2.0)
            data = b""
            try:
                while b"#" not in data and len(data) < 4096:
                    chunk = conn.recv(4096)
                    if not chunk:
                        break
                    data += chunk
            except OSError:
                pass
            msg = f"E.busy: faultpath gdb is serving another client ({self._active_peer}); try again later"
            try:
                conn.sendall(b"+" + frame(msg.encode()))
            except OSError:
                pass
        finally:
            conn.close()
            self._refusing.release()

    def serve_forever(self) -> None:
        acceptor = threading.Thread(target=self._accept_loop, daemon=True)
        acceptor.start()
        try:
            while True:
                try:
                    conn, peer = self._incoming.get(timeout=0.5)
                except queue.Empty:
                    continue
                self._active_peer = f"{peer[0]}:{peer[1]}"
                self.log(f"gdb connected from {self._active_peer}")
                outcome = "disconnect"
                try:
                    c = Connection(conn, self.log, self.packet_timeout, self.idle_timeout)
                    outcome = Handler(c, self).serve()
                finally:
                    try:
                        conn.close()
                    except OSError:
                        pass
                    # gdb's breakpoints and watchpoints belong to the connection that set them
                    self.session.forget_debugger_points()
                self.log({"detach": "gdb detached", "kill": "killed by gdb",
                          "disconnect": "connection closed"}[outcome])
                if outcome == "kill":
                    self.new_session()
                    self.log("a fresh process is ready")
                self._release()
                if self.once:
                    return
                self.log(f"listening on {self.host}:{self.port}")
        finally:
            self._stopping.set()

    def close(self) -> None:
        self._stopping.set()
        if self.sock is not None:
            self.sock.close()
        if self.session is not None:
            self.session.close()

    # ------------------------------------------------------------------ stop replies
    def stop_reply(self) -> bytes:
        ses = self.session
        ctx = ses.ctx
        stop = self.last_stop
        extra = ""
        if ctx.done:
            out = ctx.result.outcome
            detail = ctx.result.outcome_detail or ""
            if out == "killed":
                sig = SIGKILL
            elif out == "signal":
                sig = SIGBUS if detail.startswith("SIGBUS") else SIGILL if detail.startswith("SIGILL") else SIGSEGV
            else:
                sig = SIGTRAP
        elif ses.pending() is not None:
            sig = SIGSEGV
        else:
            reason = stop.reason if stop is not None else "step"
            sig = SIGINT if reason == "interrupt" else SIGTRAP
            w = stop.watch if stop is not None else None
            if reason == "history-begin":
                extra = "replaylog:begin;"
            elif w is not None and _reported_as_watch(w):
                extra = f"{_STOP_KEY[w.watch.kind]}:{w.report_addr:x};"
            elif reason == "breakpoint" and ses.hit == ctx.rip:
                extra = "swbreak:;"
        regs = "".join(f"{REGNUM[n]:02x}:{read_reg(ses, REGNUM[n]).hex()};" for n in ("rbp", "rsp", "rip"))
        return f"T{sig:02x}{extra}thread:{THREAD};{regs}".encode()


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
