"""GDB remote serial protocol framing on one TCP connection, with bounds.

Packets are `$payload#cs`; acks are `+`/`-` until QStartNoAckMode; a 0x03
byte outside a packet is Ctrl-C.  What a stub needs so that one client
cannot hold it (issue 15):

- a per-packet timeout: once `$` has arrived, the rest of the packet must
  arrive within `packet_timeout` seconds, or the connection is dropped;
- an idle timeout: no packet at all for `idle_timeout` seconds (None: wait
  forever) drops the connection;
- bounded input: a packet longer than MAX_INBOUND is discarded and nacked,
  and no more than that is buffered;
- bounded output: a send that cannot complete within `packet_timeout`
  (a client that stops reading) drops the connection.
"""
from __future__ import annotations

import select
import socket
import time

MAX_PACKET = 0x4000           # the PacketSize we advertise (payload bytes, hex digits included)
MAX_INBOUND = 2 * MAX_PACKET + 16   # an escaped packet of PacketSize bytes is at most twice that


class Disconnected(Exception):
    """The client went away, or was dropped; `why` says which, for the log."""

    def __init__(self, why: str = "gdb disconnected"):
        super().__init__(why)
        self.why = why


def checksum(data: bytes) -> int:
    return sum(data) & 0xFF


def escape(data: bytes) -> bytes:
    """Binary data in a reply: # $ } * are sent as } followed by the byte ^ 0x20."""
    out = bytearray()
    for b in data:
        if b in (0x23, 0x24, 0x7D, 0x2A):
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


class Connection:
    """One client on one socket: read packets, send replies, notice Ctrl-C."""

    def __init__(self, sock: socket.socket, log, packet_timeout: float = 10.0,
                 idle_timeout: float | None = None):
        self.sock = sock
        self.log = log
        self.packet_timeout = packet_timeout
        self.idle_timeout = idle_timeout
        self.buf = bytearray()
        self.ack = True
        self.last_sent = b""
        self.closed = False
        # sends block at most this long: a client that stops reading is dropped
        sock.settimeout(packet_timeout)

    # ------------------------------------------------------------------ input
    def _recv(self, timeout: float | None) -> bool:
        """Read what is there within `timeout` seconds (None: block); False on timeout."""
        if len(self.buf) > MAX_INBOUND + 3:
            return True              # bounded buffer: the caller consumes first
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

    def read_packet(self) -> bytes | None:
        """The next well-formed packet's payload; None for a Ctrl-C byte.
        Raises Disconnected on EOF, an idle timeout or a packet timeout."""
        idle_since = time.monotonic()
        packet_since = None             # when the packet at the front of the buffer began
        while True:
            # drop anything before a packet start, handling acks and Ctrl-C
            while self.buf and self.buf[0] != 0x24:          # '$'
                b = self.buf.pop(0)
                if b == 0x03:
                    return None
                if b == 0x2D and self.ack and self.last_sent:   # '-': resend
                    self._raw(self.last_sent)
            if self.buf:
                size = len(self.buf)
                pkt = self._take_packet()
                if pkt is not None:
                    return pkt
                if len(self.buf) != size:
                    packet_since = None         # that one was dropped; look at what follows
                    continue
                if packet_since is None:
                    packet_since = time.monotonic()
            now = time.monotonic()
            if packet_since is not None:
                left = self.packet_timeout - (now - packet_since)
                if left <= 0:
                    raise Disconnected(f"dropped: a packet did not complete within {self.packet_timeout:g} s")
            elif self.idle_timeout is not None:
                left = self.idle_timeout - (now - idle_since)
                if left <= 0:
                    raise Disconnected(f"dropped: no packet for {self.idle_timeout:g} s")
            else:
                left = None
            self._recv(left)

    def _take_packet(self) -> bytes | None:
        """A complete packet off the front of the buffer (which starts with $),
        or None if there is none yet.  Bad packets are nacked and dropped."""
        end = self.buf.find(b"#")
        body_len = (end if end >= 0 else len(self.buf)) - 1
        if body_len > MAX_INBOUND:
            self.log(f"oversized packet (more than {MAX_INBOUND} bytes) dropped")
            del self.buf[:end + 1 if end >= 0 else len(self.buf)]
            if self.ack:
                self._raw(b"-")
            return None
        if end < 0 or len(self.buf) < end + 3:
            return None
        body = bytes(self.buf[1:end])
        csum = bytes(self.buf[end + 1:end + 3])
        del self.buf[:end + 3]
        if b"$" in body:      # a new packet started inside this one: keep only the new one
            self.log("malformed packet (torn) dropped")
            self.buf[:0] = body[body.rindex(b"$"):] + b"#" + csum
            return None
        try:
            ok = int(csum, 16) == checksum(body)
        except ValueError:
            ok = False
        if not ok:
            self.log("packet with a bad checksum dropped")
            if self.ack:
                self._raw(b"-")
            return None
        if self.ack:
            self._raw(b"+")
        return unescape(body)

    def poll_interrupt(self) -> bool:
        """Between run chunks: True if the client sent Ctrl-C (or went away)."""
        try:
            while self._recv(0):
                if len(self.buf) >= MAX_INBOUND:
                    break
        except Disconnected:
            return True
        i = self.buf.find(b"\x03")
        if i >= 0:
            del self.buf[i]
            return True
        return False

    # ------------------------------------------------------------------ output
    def _raw(self, b: bytes) -> None:
        try:
            self.sock.sendall(b)
        except (ConnectionError, OSError):      # includes socket.timeout
            self.closed = True
            raise Disconnected("dropped: the client stopped reading") from None

    def send(self, payload: bytes | str) -> None:
        if isinstance(payload, str):
            payload = payload.encode()
        if len(payload) > MAX_PACKET:
            raise AssertionError(f"reply of {len(payload)} bytes exceeds PacketSize")
        pkt = frame(payload)
        self.last_sent = pkt
        self._raw(pkt)

    def console(self, text: str) -> None:
        """Text for gdb's console: O packets (hex), split to fit PacketSize."""
        data = text.encode()
        step = (MAX_PACKET - 16) // 2
        for i in range(0, len(data), step):
            self.send(b"O" + data[i:i + step].hex().encode())
