"""The GDB stub against clients that misbehave (issue 15): one client cannot
block another or the stub, packets and replies are bounded, register and
memory packets are validated, a process's memory is released when gdb kills
it, binding beyond loopback needs an explicit address, and a seeded,
bounded fuzz of raw RSP packets on 127.0.0.1 ends with a stock gdb session
that works.

Policy under test: one client at a time; a second one gets an `E.busy`
error reply (within a grace second, in case the first was just leaving) and
is disconnected; a client whose packet stalls is dropped after the packet
timeout, one that sends nothing after the idle timeout.
"""
from __future__ import annotations

import random
import re
import shutil
import socket
import subprocess
import sys
import time

import pytest

from test_gdb_stub import GDB, ROOT, Rsp, Server, gdb_batch

needs_gdb = pytest.mark.skipif(GDB is None, reason="gdb is not installed")


def _regnum(name: str) -> int:
    from emulator.debug.target import REGNUM
    return REGNUM[name]


def _le(hexstr: str) -> int:
    return int.from_bytes(bytes.fromhex(hexstr), "little")


def kill_and_wait(srv: Server) -> None:
    """`k` from a client, then wait until the stub has built a fresh process."""
    c = Rsp(srv.port)
    assert c.cmd("?").startswith("T")
    c.send("k")
    c.read_ack()
    c.close()
    deadline = time.monotonic() + 30
    while not any("fresh process" in line for line in srv.err):
        assert time.monotonic() < deadline, srv.err[-5:]
        srv._line(time.monotonic() + 0.2)
    srv.err.clear()


# ----------------------------------------------------------------------------- validation
def test_register_and_memory_packets_are_validated():
    srv = Server("--image", "builtin")
    try:
        c = Rsp(srv.port)
        rip = c.cmd(f"p{_regnum('rip'):x}")
        g = c.cmd("g")
        # P10= must not set rip to 0 and reply OK; a short or long value is refused too
        assert c.cmd(f"P{_regnum('rip'):x}=").startswith("E")
        assert c.cmd(f"P{_regnum('rip'):x}=00").startswith("E")
        assert c.cmd(f"P{_regnum('rip'):x}=" + "00" * 9).startswith("E")
        assert c.cmd(f"P{_regnum('rip'):x}" + "00" * 8).startswith("E")        # no '='
        assert c.cmd(f"P{_regnum('rip'):x}=zz" + "00" * 7).startswith("E")
        assert c.cmd(f"p{_regnum('rip'):x}") == rip
        # G00 must not reply OK without writing; a partial G writes nothing
        assert c.cmd("G00").startswith("E")
        assert c.cmd("G" + g[:-2]).startswith("E")
        assert c.cmd("g") == g
        # Z0 at a 161-bit address, with a wrong kind, or with conditions
        assert c.cmd("Z0," + "1" * 41 + ",1").startswith("E")
        assert c.cmd(f"Z0,{_le(rip):x},2").startswith("E")
        assert c.cmd(f"Z0,{_le(rip):x},1;X1,0").startswith("E")
        assert c.cmd("Z9,1000,1").startswith("E")
        assert c.cmd(f"Z0,{_le(rip):x},1") == "OK" and c.cmd(f"z0,{_le(rip):x},1") == "OK"
        # memory: addresses past 2**64, lengths that do not match the data
        assert c.cmd("mffffffffffffffff,10").startswith("E")
        assert c.cmd("m" + "f" * 17 + ",1").startswith("E")
        assert c.cmd("m1000").startswith("E")
        rsp = _le(c.cmd(f"p{_regnum('rsp'):x}"))
        assert c.cmd(f"M{rsp - 64:x},4:dead").startswith("E")
        assert c.cmd(f"M{rsp - 64:x},2:deadbeef").startswith("E")
        assert c.cmd(f"M{rsp - 64:x},2:de").startswith("E")
        assert c.cmd(f"M{rsp - 64:x},2:beef") == "OK" and c.cmd(f"m{rsp - 64:x},2") == "beef"
        # replies stay within PacketSize: a huge read is cut short, not refused
        from emulator.debug.rsp import MAX_PACKET
        assert 0 < len(c.cmd(f"m{_le(rip):x},100000")) <= MAX_PACKET
        assert c.cmd("qRcmd,zz").startswith("E")
        c.send("k")
        c.read_ack()
        assert srv.wait() == 0
    finally:
        srv.stop()
    assert not any("internal error" in l for l in srv.err), srv.err


def test_oversized_packets_are_dropped_and_the_connection_survives():
    from emulator.debug.rsp import MAX_INBOUND
    srv = Server("--image", "builtin")
    try:
        c = Rsp(srv.port)
        body = b"m" + b"0" * (MAX_INBOUND + 100)
        c.raw(b"$" + body + b"#%02x" % (sum(body) & 0xFF))
        assert c.read_ack() == b"-"
        assert c.cmd("?").startswith("T05")
        c.send("k")
        c.read_ack()
        assert srv.wait() == 0
    finally:
        srv.stop()


# ----------------------------------------------------------------------------- one client at a time
def test_a_second_client_gets_an_error_reply_while_the_first_is_served():
    srv = Server("--image", "builtin", "--packet-timeout", "30")
    try:
        a = Rsp(srv.port)
        assert a.cmd("?").startswith("T05")
        b = Rsp(srv.port)
        t0 = time.monotonic()
        b.send("?")
        assert b.read_ack() == b"+"
        r = b.reply()
        assert r.startswith("E.busy"), r
        assert time.monotonic() - t0 < 5          # an answer, not a hang
        with pytest.raises((ConnectionError, OSError)):
            b.cmd("?")                              # and then it is hung up on
        assert a.cmd("?").startswith("T05")         # the first client is unaffected
        a.send("k")
        a.read_ack()
        assert srv.wait() == 0
    finally:
        srv.stop()
    assert any("refused" in l for l in srv.err), srv.err


@needs_gdb
def test_a_stalled_packet_frees_the_stub_after_the_packet_timeout():
    """The issue's case: `$m7ffff7fc0000,4` without `#` from a client that stays
    connected.  Another client is answered (busy) at once, the stalled one is
    dropped after the packet timeout, and then a stock gdb works."""
    srv = Server("--image", "builtin", "--packet-timeout", "3", once=False)
    try:
        stall = socket.create_connection(("127.0.0.1", srv.port), timeout=10)
        stall.sendall(b"$m7ffff7fc0000,4")
        time.sleep(0.2)
        b = Rsp(srv.port)
        b.send("?")
        b.read_ack()
        assert b.reply().startswith("E.busy")
        b.close()
        deadline = time.monotonic() + 10
        while not any("did not complete" in l for l in srv.err):
            assert time.monotonic() < deadline, srv.err
            srv._line(time.monotonic() + 0.5)
        assert stall.recv(100) == b""               # hung up on
        out = gdb_batch(srv.port, "info registers rip", "stepi", "info registers rip", timeout=60)
        assert len(re.findall(r"^rip\s+0x", out, re.M)) == 2, out
        stall.close()
    finally:
        srv.stop()


def test_an_idle_client_is_dropped_after_the_idle_timeout():
    srv = Server("--image", "builtin", "--idle-timeout", "1", once=False)
    try:
        c = socket.create_connection(("127.0.0.1", srv.port), timeout=10)
        t0 = time.monotonic()
        assert c.recv(100) == b""                   # the stub hangs up
        assert 0.8 < time.monotonic() - t0 < 8
        c.close()
        r = Rsp(srv.port)
        assert r.cmd("?").startswith("T05")
        r.close()
    finally:
        srv.stop()


# ----------------------------------------------------------------------------- listening
def test_an_empty_listen_address_is_an_error():
    r = subprocess.run([sys.executable, "-m", "emulator.cli.main", "gdb", "--image", "builtin", "--listen", "",
                        "--once"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert r.returncode == 2
    lines = [l for l in r.stderr.splitlines() if l.strip()]
    assert len(lines) == 1 and "--listen" in lines[0] and "Traceback" not in r.stderr, r.stderr


# ----------------------------------------------------------------------------- memory
@pytest.mark.slow
def test_memory_is_released_when_gdb_kills_the_process():
    """40 -> 106 MB over 100 kills before: each kill builds a fresh process and
    the old one (Unicorn's native memory included) must go."""
    srv = Server("--image", "builtin", once=False)

    def rss() -> int:
        return int(re.search(r"VmRSS:\s+(\d+)", open(f"/proc/{srv.p.pid}/status").read()).group(1)) // 1024

    samples = {}
    try:
        for i in range(1, 101):
            kill_and_wait(srv)
            if i in (10, 100):
                samples[i] = rss()
    finally:
        srv.stop()
    assert samples[100] - samples[10] < 8, samples


# ----------------------------------------------------------------------------- fuzz
COMMANDS = ["?", "g", "G", "p", "P", "m", "M", "X", "s", "c", "S", "C", "vCont;s", "vCont;c", "vCont;x",
            "vCont?", "Z0", "z0", "Z1", "Z2", "z2", "Z3", "Z4", "z4", "H", "T", "qSupported", "qC",
            "qfThreadInfo", "qsThreadInfo", "qAttached", "qRcmd,", "qXfer:features:read:target.xml:",
            "qXfer:auxv:read::", "qXfer:exec-file:read::", "qXfer:nosuch:read::", "vFile:setfs:",
            "vFile:open:", "vFile:pread:", "vFile:close:", "vFile:fstat:", "bs", "bc", "qSymbol::"]
FIELDS = ["0", "1", "10", "7ffff7fc0000", "7ffff7ffc089", "ffffffffffffffff", "1" * 41, "", "zz", "-1",
          "80", "4000", "100000", "p10e2.10e2", "2f70726f632f343234322f6d617073", "0,1c0"]


def _fuzz_packet(rng: random.Random) -> bytes:
    cmd = rng.choice(COMMANDS)
    nfields = rng.randrange(0, 4)
    sep = rng.choice([",", ":", ";", "="])
    args = sep.join(rng.choice(FIELDS) for _ in range(nfields))
    body = (cmd + args).encode()
    if rng.random() < 0.15:
        body = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 64)))
    framing = rng.random()
    if framing < 0.75:
        return b"$" + body + b"#%02x" % (sum(body) & 0xFF)
    if framing < 0.85:
        return b"$" + body + b"#%02x" % ((sum(body) + 1) & 0xFF)        # bad checksum
    if framing < 0.92:
        return rng.choice([b"\x03", b"+", b"-", b"}", b"#", b"$$"])
    return b"$" + body                                                   # torn: the next one starts


@needs_gdb
def test_rsp_fuzz_then_a_stock_gdb_session_works():
    """A seeded fuzz on 127.0.0.1: 1,500 packets at most, 30 s at most, each
    connection answered or closed, never the stub killed; then gdb works."""
    rng = random.Random(20260407)
    srv = Server("--image", "builtin", "--packet-timeout", "1", "--idle-timeout", "5", once=False)
    sent = 0
    t_end = time.monotonic() + 30
    try:
        while sent < 1500 and time.monotonic() < t_end:
            s = socket.create_connection(("127.0.0.1", srv.port), timeout=5)
            s.settimeout(0.2)                        # a reply is read if there is one; torn packets get none
            try:
                for _ in range(min(rng.randrange(20, 150), 1500 - sent)):
                    s.sendall(_fuzz_packet(rng))
                    sent += 1
                    if rng.random() < 0.3:
                        try:
                            s.recv(65536)
                        except socket.timeout:
                            pass
                if rng.random() < 0.5 and sent < 1500:
                    s.sendall(b"$k#6b")
                    sent += 1
            except (ConnectionError, OSError):
                pass
            finally:
                s.close()
            assert srv.p.poll() is None, srv.err[-5:]
        assert sent == 1500, sent                   # the packet bound, not the time bound, ended it
        time.sleep(1.5)                              # a torn last packet times out
        # the fuzz may have moved rip anywhere (`s ADDR`, P, G): kill for a fresh process
        fuzz_log = list(srv.err)
        kill_and_wait(srv)
        out = gdb_batch(srv.port, "info registers rip", "stepi", "info registers rip", "monitor vmas",
                        "p state.in_use", "bt", timeout=90)
    finally:
        srv.stop()
    assert len(re.findall(r"^rip\s+0x", out, re.M)) == 2, out
    assert " dp" in out and "__vdso_getrandom" in out, out
    log = fuzz_log + srv.err
    assert not any("internal error" in line for line in log), [line for line in log if "internal error" in line][:5]
