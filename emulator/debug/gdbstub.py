"""A GDB remote-serial-protocol server over a stepper Session (all-stop subset).

Hand-written rather than udbserver: it must bind loopback by default, leave
the run loop to the Session (fault stops, injections, count-bounded chunks),
and answer `monitor` with the stepper's own views.

Packets: qSupported, qXfer:features:read (target.xml: i386:x86-64 with the
org.gnu.gdb.i386 core, sse, linux and segments features), QStartNoAckMode,
?, g/G, p/P, m/M, s/S, c/C, vCont? / vCont;s|S|c|C, Z0/z0 and Z1/z1, D, k,
vKill, qRcmd (monitor), thread queries (one thread), and Ctrl-C (0x03 while
running: the run proceeds in chunks and polls the socket between them).

Stops: a fault stops the target with SIGSEGV (T0b) *before* it is handled,
with the stepper's fault description sent as console output; gdb's next
stepi/continue carries the handling out (policy skip/retry, OOM, ...).  The
end of the call is a SIGTRAP stop at the return sentinel with rax holding the
return value (so `info registers rax` works); an OOM kill is a SIGKILL stop.
"""
from __future__ import annotations

import ipaddress
import select
import socket
import sys
from dataclasses import dataclass

from unicorn import x86_const as X

from emulator.debug import commands, views
from emulator.errors import FaultpathError, UsageError

MAX_PACKET = 0x4000           # what we advertise (PacketSize, hex digits included)
MAX_INBOUND = 1 << 20         # a "packet" longer than this without '#' is garbage
DEFAULT_PORT = 1234

SIGINT, SIGILL, SIGTRAP, SIGBUS, SIGKILL, SIGSEGV = 2, 4, 5, 7, 9, 11


# ---------------------------------------------------------------------------- registers
@dataclass(frozen=True)
class Reg:
    name: str
    bits: int
    type: str
    feature: str
    group: str = ""


def _reg_table() -> list[Reg]:
    core = "org.gnu.gdb.i386.core"
    regs = [Reg(n, 64, "data_ptr" if n in ("rbp", "rsp") else "int64", core)
            for n in ["rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rbp", "rsp",
                      "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15"]]
    regs.append(Reg("rip", 64, "code_ptr", core))
    regs.append(Reg("eflags", 32, "i386_eflags", core))
    regs += [Reg(n, 32, "int32", core) for n in ["cs", "ss", "ds", "es", "fs", "gs"]]
    regs += [Reg(f"st{i}", 80, "i387_ext", core) for i in range(8)]
    regs += [Reg(n, 32, "int", core, "float")
             for n in ["fctrl", "fstat", "ftag", "fiseg", "fioff", "foseg", "fooff", "fop"]]
    sse = "org.gnu.gdb.i386.sse"
    regs += [Reg(f"xmm{i}", 128, "vec128", sse) for i in range(16)]
    regs.append(Reg("mxcsr", 32, "i386_mxcsr", sse, "vector"))
    regs.append(Reg("orig_rax", 64, "int", "org.gnu.gdb.i386.linux"))
    seg = "org.gnu.gdb.i386.segments"
    regs += [Reg("fs_base", 64, "int", seg), Reg("gs_base", 64, "int", seg)]
    return regs


REGS = _reg_table()
REGNUM = {r.name: i for i, r in enumerate(REGS)}

_TYPES = {
    "org.gnu.gdb.i386.core": """
  <flags id="i386_eflags" size="4">
    <field name="CF" start="0" end="0"/><field name="" start="1" end="1"/>
    <field name="PF" start="2" end="2"/><field name="AF" start="4" end="4"/>
    <field name="ZF" start="6" end="6"/><field name="SF" start="7" end="7"/>
    <field name="TF" start="8" end="8"/><field name="IF" start="9" end="9"/>
    <field name="DF" start="10" end="10"/><field name="OF" start="11" end="11"/>
    <field name="NT" start="14" end="14"/><field name="RF" start="16" end="16"/>
    <field name="VM" start="17" end="17"/><field name="AC" start="18" end="18"/>
    <field name="VIF" start="19" end="19"/><field name="VIP" start="20" end="20"/>
    <field name="ID" start="21" end="21"/>
  </flags>""",
    "org.gnu.gdb.i386.sse": """
  <vector id="v4f" type="ieee_single" count="4"/>
  <vector id="v2d" type="ieee_double" count="2"/>
  <vector id="v16i8" type="int8" count="16"/>
  <vector id="v8i16" type="int16" count="8"/>
  <vector id="v4i32" type="int32" count="4"/>
  <vector id="v2i64" type="int64" count="2"/>
  <union id="vec128">
    <field name="v4_float" type="v4f"/><field name="v2_double" type="v2d"/>
    <field name="v16_int8" type="v16i8"/><field name="v8_int16" type="v8i16"/>
    <field name="v4_int32" type="v4i32"/><field name="v2_int64" type="v2i64"/>
    <field name="uint128" type="uint128"/>
  </union>
  <flags id="i386_mxcsr" size="4">
    <field name="IE" start="0" end="0"/><field name="DE" start="1" end="1"/>
    <field name="ZE" start="2" end="2"/><field name="OE" start="3" end="3"/>
    <field name="UE" start="4" end="4"/><field name="PE" start="5" end="5"/>
    <field name="DAZ" start="6" end="6"/><field name="IM" start="7" end="7"/>
    <field name="DM" start="8" end="8"/><field name="ZM" start="9" end="9"/>
    <field name="OM" start="10" end="10"/><field name="UM" start="11" end="11"/>
    <field name="PM" start="12" end="12"/><field name="FZ" start="15" end="15"/>
  </flags>""",
}


def target_xml() -> str:
    out = ['<?xml version="1.0"?>', '<!DOCTYPE target SYSTEM "gdb-target.dtd">', '<target version="1.0">',
           "  <architecture>i386:x86-64</architecture>", "  <osabi>GNU/Linux</osabi>"]
    feature = None
    for i, r in enumerate(REGS):
        if r.feature != feature:
            if feature is not None:
                out.append("</feature>")
            feature = r.feature
            out.append(f'<feature name="{feature}">{_TYPES.get(feature, "")}')
        g = f' group="{r.group}"' if r.group else ""
        out.append(f'  <reg name="{r.name}" bitsize="{r.bits}" type="{r.type}" regnum="{i}"{g}/>')
    out.append("</feature>")
    out.append("</target>")
    return "\n".join(out) + "\n"


TARGET_XML = target_xml().encode()

_UC = {"eflags": X.UC_X86_REG_EFLAGS, "fctrl": X.UC_X86_REG_FPCW, "fstat": X.UC_X86_REG_FPSW,
       "ftag": X.UC_X86_REG_FPTAG, "mxcsr": X.UC_X86_REG_MXCSR}
# Written through to the CPU; the rest (x87 state, which the vDSO never uses, and
# the segment selectors, which Unicorn would reload in 64-bit mode) are
# accepted and ignored.
_WRITABLE = {r.name for r in REGS[:17]} | {"eflags", "mxcsr", "fs_base", "gs_base"} | {
    f"xmm{i}" for i in range(16)}


def read_reg(session, num: int) -> bytes:
    r = REGS[num]
    uc = session.m.uc
    n = r.name
    if n.startswith("st"):
        v = uc.reg_read(X.UC_X86_REG_FP0 + int(n[2:]))
        val = (v[0] | (v[1] << 64)) if isinstance(v, tuple) else int(v)
    elif n.startswith("xmm"):
        val = uc.reg_read(getattr(X, f"UC_X86_REG_XMM{n[3:]}"))
    elif n in _UC:
        val = uc.reg_read(_UC[n])
    elif n == "orig_rax":
        val = (1 << 64) - 1
    elif n in ("fiseg", "fioff", "foseg", "fooff", "fop"):
        val = 0
    else:
        val = uc.reg_read(getattr(X, f"UC_X86_REG_{n.upper()}"))
    return (val & ((1 << r.bits) - 1)).to_bytes(r.bits // 8, "little")


def write_reg(session, num: int, raw: bytes) -> None:
    r = REGS[num]
    if r.name not in _WRITABLE:
        return                       # x87 state is not modelled: accept and ignore
    val = int.from_bytes(raw[:r.bits // 8], "little")
    uc = session.m.uc
    if r.name.startswith("xmm"):
        uc.reg_write(getattr(X, f"UC_X86_REG_XMM{r.name[3:]}"), val)
    elif r.name in _UC:
        uc.reg_write(_UC[r.name], val)
    else:
        session.set_register(r.name, val)


G_SIZE = sum(r.bits // 8 for r in REGS)


# ---------------------------------------------------------------------------- framing
def checksum(data: bytes) -> int:
    return sum(data) & 0xFF


def escape(data: bytes) -> bytes:
    out = bytearray()
    for b in data:
        if b in (0x23, 0x24, 0x7D, 0x2A):     # # $ } *
            out += bytes((0x7D, b ^ 0x20))
        else:
            out.append(b)
    return bytes(out)


def unescape(data: bytes) -> bytes:
    out = bytearray()
    it = iter(data)
    for b in it:
        if b == 0x7D:
            nxt = next(it, None)
            if nxt is None:
                break
            out.append(nxt ^ 0x20)
        else:
            out.append(b)
    return bytes(out)


def frame(payload: bytes) -> bytes:
    return b"$" + payload + b"#" + b"%02x" % checksum(payload)


class Disconnected(Exception):
    pass


class Connection:
    """One gdb client on one socket."""

    def __init__(self, sock: socket.socket, server: "GdbServer"):
        self.sock = sock
        self.server = server
        self.buf = bytearray()
        self.ack = True
        self.last_sent = b""
        self.interrupt_pending = False
        self.closed = False

    # ------------------------------------------------------------- I/O
    def _recv(self, timeout: float | None = None) -> bool:
        if timeout is not None:
            r, _, _ = select.select([self.sock], [], [], timeout)
            if not r:
                return False
        try:
            data = self.sock.recv(65536)
        except (ConnectionError, OSError):
            data = b""
        if not data:
            self.closed = True
            raise Disconnected()
        self.buf += data
        return True

    def send(self, payload: bytes | str) -> None:
        if isinstance(payload, str):
            payload = payload.encode()
        pkt = frame(payload)
        self.last_sent = pkt
        try:
            self.sock.sendall(pkt)
        except (ConnectionError, OSError):
            self.closed = True
            raise Disconnected() from None

    def console(self, text: str) -> None:
        """Text for gdb's console: O packets (hex), split to fit PacketSize."""
        data = text.encode()
        step = (MAX_PACKET - 16) // 2
        for i in range(0, len(data), step):
            self.send(b"O" + data[i:i + step].hex().encode())

    def read_packet(self) -> bytes | None:
        """The next well-formed packet's payload; None for a Ctrl-C byte."""
        while True:
            # drop anything before a packet start, handling acks and Ctrl-C
            while self.buf:
                b = self.buf[0]
                if b == 0x24:        # '$'
                    break
                del self.buf[0]
                if b == 0x03:
                    return None
                if b == 0x2D and self.ack and self.last_sent:   # '-': resend
                    self._raw(self.last_sent)
            if self.buf:
                end = self.buf.find(b"#")
                if end >= 0 and len(self.buf) >= end + 3:
                    body = bytes(self.buf[1:end])
                    csum = bytes(self.buf[end + 1:end + 3])
                    del self.buf[:end + 3]
                    if b"$" in body:     # a new packet started inside this one: drop the torn part
                        self.server.log("malformed packet (torn) dropped")
                        self.buf[:0] = body[body.rindex(b"$"):] + b"#" + csum
                        continue
                    try:
                        ok = int(csum, 16) == checksum(body)
                    except ValueError:
                        ok = False
                    if not ok:
                        self.server.log("packet with a bad checksum dropped")
                        if self.ack:
                            self._raw(b"-")
                        continue
                    if self.ack:
                        self._raw(b"+")
                    return unescape(body)
                if end < 0 and len(self.buf) > MAX_INBOUND:
                    self.server.log("oversized packet dropped")
                    self.buf.clear()
                    continue
            self._recv()

    def _raw(self, b: bytes) -> None:
        try:
            self.sock.sendall(b)
        except (ConnectionError, OSError):
            self.closed = True
            raise Disconnected() from None

    def poll_interrupt(self) -> bool:
        """Between run chunks: True if gdb sent Ctrl-C (or went away)."""
        try:
            while self._recv(0):
                pass
        except Disconnected:
            return True
        if 0x03 in self.buf:
            i = self.buf.index(0x03)
            del self.buf[i]
            return True
        return False

    # ------------------------------------------------------------- serving
    def serve(self) -> str:
        """Serve until detach, kill or disconnect; returns which."""
        try:
            while True:
                pkt = self.read_packet()
                if pkt is None:          # Ctrl-C while already stopped: nothing to interrupt
                    continue
                try:
                    reply = self.dispatch(pkt)
                except Disconnected:
                    raise
                except FaultpathError as e:
                    self.server.log(f"{pkt[:40]!r}: {e}")
                    reply = b"E01"
                except Exception as e:   # never take the server down for one packet
                    self.server.log(f"{pkt[:40]!r}: internal error: {type(e).__name__}: {e}")
                    reply = b"E01"
                if isinstance(reply, tuple):     # (reply, outcome)
                    if reply[0] is not None:
                        self.send(reply[0])
                    return reply[1]
                if reply is not None:
                    self.send(reply)
        except Disconnected:
            return "disconnect"

    def dispatch(self, pkt: bytes):
        s = self.server
        ses = s.session
        c = pkt[:1]
        body = pkt[1:]
        if pkt == b"?":
            return s.stop_reply()
        if c == b"g":
            return b"".join(read_reg(ses, i) for i in range(len(REGS))).hex().encode()
        if c == b"G":
            raw = bytes.fromhex(body.decode())
            off = 0
            for i, r in enumerate(REGS):
                n = r.bits // 8
                if off + n <= len(raw):
                    write_reg(ses, i, raw[off:off + n])
                off += n
            return b"OK"
        if c == b"p":
            num = int(body, 16)
            if not 0 <= num < len(REGS):
                return b"E45"
            return read_reg(ses, num).hex().encode()
        if c == b"P":
            num, _, val = body.partition(b"=")
            num = int(num, 16)
            if not 0 <= num < len(REGS):
                return b"E45"
            write_reg(ses, num, bytes.fromhex(val.decode()))
            return b"OK"
        if c == b"m":
            a, _, n = body.partition(b",")
            addr, n = int(a, 16), int(n, 16)
            data = ses.read_memory(addr, min(n, (MAX_PACKET - 8) // 2))
            return data.hex().encode() if data or n == 0 else b"E14"
        if c == b"M":
            head, _, data = body.partition(b":")
            a, _, n = head.partition(b",")
            addr, n = int(a, 16), int(n, 16)
            raw = bytes.fromhex(data.decode())
            if len(raw) != n:
                return b"E16"
            return b"OK" if ses.write_memory(addr, raw) == n else b"E14"
        if c == b"X":
            return b""                   # no binary writes: gdb falls back to M
        if c in (b"s", b"c", b"S", b"C"):
            addr = body.split(b";", 1)[1] if c in (b"S", b"C") and b";" in body else (
                body if c in (b"s", b"c") else b"")
            if addr:
                ses.set_register("rip", int(addr, 16))
            return self.resume("step" if c in (b"s", b"S") else "cont")
        if pkt.startswith(b"vCont?"):
            return b"vCont;c;C;s;S"
        if pkt.startswith(b"vCont;"):
            return self.vcont(pkt[6:])
        if c in (b"Z", b"z"):
            kind, _, rest = body.partition(b",")
            if kind not in (b"0", b"1"):
                return b""
            addr = int(rest.split(b",")[0], 16)
            if c == b"Z":
                ses.add_breakpoint(hex(addr))
            else:
                ses.remove_breakpoint_at(addr)
            return b"OK"
        if c == b"D":
            return (b"OK", "detach")
        if pkt == b"k":
            return (None, "kill")
        if pkt.startswith(b"vKill"):
            return (b"OK", "kill")
        if c == b"H" or c == b"T":
            return b"OK"
        if pkt.startswith(b"qSupported"):
            return (f"PacketSize={MAX_PACKET:x};qXfer:features:read+;QStartNoAckMode+;"
                    "swbreak+;hwbreak+;vContSupported+").encode()
        if pkt == b"QStartNoAckMode":
            self.send(b"OK")
            self.ack = False
            return None
        if pkt.startswith(b"qXfer:features:read:"):
            return self.xfer(pkt[len(b"qXfer:features:read:"):])
        if pkt.startswith(b"qRcmd,"):
            return self.monitor(bytes.fromhex(pkt[6:].decode()).decode("utf-8", "replace"))
        if pkt == b"qC":
            return b"QC1"
        if pkt == b"qfThreadInfo":
            return b"m1"
        if pkt == b"qsThreadInfo":
            return b"l"
        if pkt.startswith(b"qAttached"):
            return b"1"
        if pkt.startswith(b"qSymbol"):
            return b"OK"
        if pkt.startswith(b"qThreadExtraInfo"):
            return f"getrandom call {ses.call_no}".encode().hex().encode()
        return b""                       # unsupported: the empty reply

    def xfer(self, rest: bytes) -> bytes:
        annex, _, span = rest.partition(b":")
        if annex != b"target.xml":
            return b"E00"
        off, _, n = span.partition(b",")
        off, n = int(off, 16), int(n, 16)
        chunk = TARGET_XML[off:off + min(n, MAX_PACKET // 2)]
        more = off + len(chunk) < len(TARGET_XML)
        return (b"m" if more else b"l") + escape(chunk)

    def vcont(self, actions: bytes):
        mode = None
        for act in actions.split(b";"):
            if not act:
                continue
            a, _, tid = act.partition(b":")
            if tid and tid not in (b"1", b"-1", b"p1.1", b"p1.-1", b"0", b"p-1.-1"):
                continue
            if a[:1] in (b"s", b"S"):
                mode = "step"
                break
            if a[:1] in (b"c", b"C"):
                mode = "cont"
                break
        if mode is None:
            return b"E01"
        return self.resume(mode)

    def resume(self, mode: str):
        s = self.server
        stop = s.session.resume(mode, 1, poll=self.poll_interrupt)
        if self.closed:
            raise Disconnected()
        s.last_stop = stop
        text = views.stop_text(s.session, stop) if stop.reason in ("fault", "done") else \
            "\n".join(views.event_lines(s.session, stop.events, stop.syscalls))
        if text:
            self.console(text + "\n")
        return s.stop_reply()

    def monitor(self, line: str) -> bytes:
        ses = self.server.session
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
            self.console(text)
        return b"OK"


# ---------------------------------------------------------------------------- server
class GdbServer:
    def __init__(self, make_session, host: str = "127.0.0.1", port: int = DEFAULT_PORT,
                 once: bool = False, log=None):
        self.make_session = make_session
        self.session = make_session()
        self.host = host
        self.port = port
        self.once = once
        self.last_stop = None
        self._log = log or (lambda msg: print(f"faultpath gdb: {msg}", file=sys.stderr, flush=True))
        self.sock = None

    def log(self, msg: str) -> None:
        self._log(msg)

    def listen(self) -> int:
        fam = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        sock = socket.socket(fam, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((self.host, self.port))
            sock.listen(1)
        except OSError as e:
            sock.close()
            raise UsageError(f"cannot listen on {self.host}:{self.port}: {e.strerror or e}") from None
        self.sock = sock
        self.port = sock.getsockname()[1]
        return self.port

    def serve_forever(self) -> None:
        while True:
            try:
                conn, peer = self.sock.accept()
            except OSError as e:
                raise UsageError(f"accept failed: {e.strerror or e}") from None
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self.log(f"gdb connected from {peer[0]}:{peer[1]}")
            outcome = "disconnect"
            try:
                outcome = Connection(conn, self).serve()
            finally:
                try:
                    conn.close()
                except OSError:
                    pass
                # gdb's breakpoints belong to the session that set them
                for a in list(self.session.breakpoints.values()):
                    self.session.remove_breakpoint_at(a)
            self.log({"detach": "gdb detached", "kill": "killed by gdb",
                      "disconnect": "gdb disconnected"}[outcome])
            if self.once:
                return
            if outcome == "kill":
                self.session = self.make_session()
                self.log("a fresh process is ready")
            self.log(f"listening on {self.host}:{self.port}")

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()

    # ------------------------------------------------------------- stop replies
    def stop_reply(self) -> bytes:
        ses = self.session
        ctx = ses.ctx
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
            reason = self.last_stop.reason if self.last_stop is not None else "step"
            sig = SIGINT if reason == "interrupt" else SIGTRAP
            if reason == "breakpoint" and ses.hit == ctx.rip:
                extra = "swbreak:;"
        regs = "".join(f"{REGNUM[n]:02x}:{read_reg(ses, REGNUM[n]).hex()};" for n in ("rbp", "rsp", "rip"))
        return f"T{sig:02x}{extra}thread:1;{regs}".encode()


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
