"""`faultpath gdb`: stock gdb in batch mode and a raw RSP client against the stub.

gdb: target remote, stepi into the fault on the dropped droppable state page
(SIGSEGV at the right rip), `info registers rip`, `monitor vmas` (dp),
`p $xmm0` inside the ChaCha20 routine, continue to the return with the right
return value and output.  The expected values come from an in-process
stepper Session with the same options (the same engine, without gdb), and the
output also from `faultpath run`.

Raw client: malformed packets (bad checksum, garbage, torn, truncated),
abrupt disconnects, re-attach, Ctrl-C while running, a port in use, the
non-loopback warning.
"""
from __future__ import annotations

import os
import re
import select
import shutil
import socket
import subprocess
import sys
import time

import pytest

from emulator.debug.commands import execute as run_cmd
from vdso.elf_image import host_has_vgetrandom

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GDB = shutil.which("gdb")
needs_gdb = pytest.mark.skipif(GDB is None, reason="gdb is not installed")


# ----------------------------------------------------------------------------- helpers
class Server:
    """`faultpath gdb ... --port 0` as a subprocess; .port from its banner."""

    def __init__(self, *args: str, once: bool = True):
        cmd = [sys.executable, "-m", "emulator.cli.main", "gdb", *args, "--port", "0"] + (["--once"] if once else [])
        self.p = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        self.err: list[str] = []
        self._pending = b""
        self.port = None
        deadline = time.monotonic() + 30
        while self.port is None:
            line = self._line(deadline)
            if line is None:
                raise AssertionError(f"no listening line from faultpath gdb: {self.err}")
            m = re.search(r"listening on [\d.]+:(\d+)", line)
            if m:
                self.port = int(m.group(1))

    def _line(self, deadline: float) -> str | None:
        """One stderr line (unbuffered reads: select() and a buffered reader do not mix)."""
        fd = self.p.stderr.fileno()
        while b"\n" not in self._pending:
            if time.monotonic() > deadline:
                return None
            r, _, _ = select.select([fd], [], [], 0.1)
            if r:
                chunk = os.read(fd, 4096)
                if not chunk:
                    return None
                self._pending += chunk
        line, _, self._pending = self._pending.partition(b"\n")
        self.err.append(line.decode())
        return self.err[-1]

    def wait(self, timeout: float = 20) -> int:
        rc = self.p.wait(timeout)
        rest = self._pending + self.p.stderr.read()
        self.err += rest.decode().splitlines()
        return rc

    def stop(self) -> None:
        if self.p.poll() is None:
            self.p.terminate()
            try:
                self.p.wait(5)
            except subprocess.TimeoutExpired:
                self.p.kill()
                self.p.wait(5)


def gdb_batch(port: int, *commands: str, timeout: float = 60) -> str:
    args = [GDB, "-batch", "-nx", "-ex", "set architecture i386:x86-64", "-ex", f"target remote 127.0.0.1:{port}"]
    for c in commands:
        args += ["-ex", c]
    r = subprocess.run(args, capture_output=True, text=True, timeout=timeout)
    return r.stdout + r.stderr


class Rsp:
    """A minimal raw RSP client (ack mode)."""

    def __init__(self, port: int):
        self.s = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = b""
        self.console = ""

    def raw(self, data: bytes) -> None:
        self.s.sendall(data)

    def send(self, payload: str) -> None:
        body = payload.encode()
        self.raw(b"$" + body + b"#%02x" % (sum(body) & 0xFF))

    def _fill(self) -> None:
        d = self.s.recv(65536)
        if not d:
            raise ConnectionError("server closed the connection")
        self.buf += d

    def read_ack(self) -> bytes:
        while not self.buf:
            self._fill()
        c, self.buf = self.buf[:1], self.buf[1:]
        return c

    def reply(self) -> str:
        """The next packet that is not console output (O packets are collected)."""
        while True:
            while b"#" not in self.buf or len(self.buf) < self.buf.index(b"#") + 3:
                self._fill()
            start = self.buf.index(b"$")
            end = self.buf.index(b"#", start)
            body = self.buf[start + 1:end]
            assert int(self.buf[end + 1:end + 3], 16) == sum(body) & 0xFF
            self.buf = self.buf[end + 3:]
            self.raw(b"+")
            text = body.decode()
            if text.startswith("O") and text not in ("OK",) and re.fullmatch(r"O([0-9a-f]{2})+", text):
                self.console += bytes.fromhex(text[1:]).decode()
                continue
            return text

    def cmd(self, payload: str) -> str:
        self.send(payload)
        assert self.read_ack() == b"+"
        return self.reply()

    def monitor(self, line: str) -> str:
        self.console = ""
        assert self.cmd("qRcmd," + line.encode().hex()) == "OK"
        return self.console

    def close(self) -> None:
        self.s.close()


def reference(image: str, *extra: str):
    """The expected values, from the same engine without gdb."""
    from emulator.run import RunConfig
    from emulator.debug.session import Session
    from vdso.loader import load_image
    s = Session(RunConfig(image=load_image(image), sizes=[256], calls=2, injections=["drop@0", *extra]))
    out = {"entry": s.ctx.rip}
    st = s.resume("cont")
    assert st.reason == "fault"
    out["fault_rip"] = s.ctx.rip
    out["fault_index"] = s.ctx.index
    chacha = [a for a, n in s.symbols.code if "chacha" in n or n.startswith("sub_")][0]
    out["chacha"] = chacha
    s.faultstop = False
    s.add_breakpoint(hex(chacha))
    st = s.resume("cont")
    assert st.reason == "breakpoint" and s.ctx.rip == chacha
    s.resume("step", 40)
    out["in_chacha_rip"] = s.ctx.rip
    out["xmm0"] = s.m.xmm()[0]
    s.remove_breakpoint_at(chacha)
    st = s.resume("cont")
    assert st.reason == "done"
    out["ret"] = s.ctx.result.ret
    out["output"] = s.ctx.result.output
    out["buffer"] = s.caller.buffer
    return out


def _images():
    out = ["builtin"]
    if host_has_vgetrandom():
        out.append("host")
    return out


# ----------------------------------------------------------------------------- gdb
@needs_gdb
@pytest.mark.parametrize("image", ["builtin", "host"])
def test_gdb_steps_into_the_fault_and_continues_to_the_return(image):
    if image == "host" and not host_has_vgetrandom():
        pytest.skip("the running kernel's vDSO has no __vdso_getrandom (needs Linux 6.11+)")
    from emulator.errors import ImageError
    try:
        ref = reference(image)
    except ImageError as e:     # e.g. the builtin image cannot be built here
        pytest.skip(f"--image {image} unavailable: {e}")
    srv = Server("--image", image, "--size", "256", "--calls", "2")
    try:
        out = gdb_batch(
            srv.port,
            "info registers rip",
            "monitor inject drop",
            "monitor vmas",
            "stepi 400",
            "info registers rip",
            "monitor fault",
            "monitor faultstop off",
            f"break *{ref['chacha']:#x}",
            "continue",
            "stepi 40",
            "info registers rip",
            "p $xmm0",
            "info registers xmm0",
            "delete",
            "continue",
            "info registers rax",
            f"x/16xb {ref['buffer']:#x}",
            "monitor faults",
        )
        assert srv.wait() == 0, srv.err
    finally:
        srv.stop()
    assert "Remote connection closed" not in out and "Remote failure" not in out, out
    rips = re.findall(r"^rip\s+(0x[0-9a-f]+)", out, re.M)
    assert [int(r, 16) for r in rips] == [ref["entry"], ref["fault_rip"], ref["in_chacha_rip"]], out
    # the fault stop: SIGSEGV, with the stepper's description as console output
    assert "Program received signal SIGSEGV" in out, out
    assert f"fault at #{ref['fault_index']} rip={ref['fault_rip']:#x}" in out
    assert "mm will:" in out and "<state+0x" in out
    # monitor vmas: the state VMA is droppable
    state_line = [l for l in out.splitlines() if " state " in l and "VmFlags" in l][0]
    assert " dp" in state_line and "<- droppable" in state_line
    assert "inject drop at #0: pages=1" in out
    # the breakpoint in the ChaCha20 code, and xmm0 there
    assert re.search(r"Breakpoint 1, 0x0*%x" % ref["chacha"], out), out
    m = re.search(r"uint128 = (\d+|0x[0-9a-f]+)", out)
    assert m and int(m.group(1), 0) == ref["xmm0"], out
    assert "xmm0" in out and "v4_int32" in out
    # the return: SIGTRAP at the sentinel, rax = the return value, the output bytes
    assert "Program received signal SIGTRAP" in out
    assert re.search(r"^rax\s+0x100\s+256", out, re.M), out
    assert ref["ret"] == 256
    got = bytes(int(b, 16) for b in re.findall(r"0x([0-9a-f]{2})\b", _xblock(out, ref["buffer"])))
    assert got == ref["output"][:16], (got.hex(), ref["output"][:16].hex())
    assert f"call 2 ended: getrandom(256) -> 256  outcome=returned" in out


def _xblock(out: str, addr: int) -> str:
    """The x/16xb lines gdb printed for addr."""
    lines = [l.split(":", 1)[1] for l in out.splitlines()
             if re.match(r"0x0*(%x|%x):" % (addr, addr + 8), l)]
    return " ".join(lines)


@needs_gdb
def test_gdb_stepi_carries_out_a_skip():
    """At the write fault, `monitor inject oom:1` then stepi: the skip's new rip
    is what gdb sees."""
    from emulator.run import RunConfig
    from emulator.debug.session import Session
    from vdso.loader import load_image
    s = Session(RunConfig(image=load_image("builtin"), calls=2, injections=["drop@0"]))
    s.resume("cont")
    run_cmd(s, "stepi")
    s.resume("cont")
    rip = s.ctx.rip
    length = s.insn_at(rip).size
    srv = Server("--image", "builtin", "--calls", "2")
    try:
        out = gdb_batch(srv.port, "monitor inject drop", "continue", "stepi", "continue",
                        "info registers rip", "monitor inject oom:1", "stepi", "info registers rip",
                        "monitor faults")
        assert srv.wait() == 0
    finally:
        srv.stop()
    rips = [int(r, 16) for r in re.findall(r"^rip\s+(0x[0-9a-f]+)", out, re.M)]
    assert rips == [rip, rip + length], out
    assert out.count("Program received signal SIGSEGV") == 2
    assert f"handled: skip len={length} new_rip={rip + length:#x}" in out


@needs_gdb
def test_gdb_output_matches_faultpath_run():
    """The bytes the call returns under gdb are what `faultpath run` returns
    with the same injection."""
    import json
    r = subprocess.run([sys.executable, "-m", "emulator.cli.main", "run", "--image", "builtin", "--size", "256",
                        "--calls", "2", "--inject", "drop@2:0", "--json"], cwd=ROOT, capture_output=True,
                       text=True, timeout=60)
    if r.returncode != 0:
        pytest.skip(f"--image builtin unavailable: {r.stderr.strip()}")
    want = bytes.fromhex(json.loads(r.stdout)["calls"][1]["output"])
    ref = reference("builtin")
    assert ref["output"] == want


@needs_gdb
def test_gdb_reattach_after_detach_keeps_the_process():
    srv = Server("--image", "builtin", once=False)
    try:
        out1 = gdb_batch(srv.port, "stepi 5", "info registers rip")
        out2 = gdb_batch(srv.port, "info registers rip", "stepi", "info registers rip")
    finally:
        srv.stop()
    r1 = re.findall(r"^rip\s+(0x[0-9a-f]+)", out1, re.M)
    r2 = re.findall(r"^rip\s+(0x[0-9a-f]+)", out2, re.M)
    assert r1 and r2 and r1[-1] == r2[0], (out1, out2)
    assert r2[1] != r2[0]


# ----------------------------------------------------------------------------- raw RSP
def test_rsp_basics_and_monitor():
    srv = Server("--image", "builtin", "--inject", "drop@0")
    try:
        c = Rsp(srv.port)
        feats = c.cmd("qSupported:multiprocess+;swbreak+;hwbreak+;xmlRegisters=i386")
        assert "qXfer:features:read+" in feats and "PacketSize=" in feats
        xml = ""
        off = 0
        while True:
            r = c.cmd(f"qXfer:features:read:target.xml:{off:x},400")
            xml += r[1:]
            off += len(r) - 1
            if r[0] == "l":
                break
        for needle in ("i386:x86-64", "org.gnu.gdb.i386.core", "org.gnu.gdb.i386.sse", 'name="xmm15"',
                       'name="eflags"', 'name="st7"', 'name="fop"', 'name="mxcsr"', 'name="fs_base"'):
            assert needle in xml
        assert c.cmd("?").startswith("T05")
        g = c.cmd("g")
        from emulator.debug.gdbstub import G_SIZE, REGNUM
        assert len(g) == 2 * G_SIZE
        assert c.cmd("G" + g) == "OK" and c.cmd("g") == g      # writing it all back changes nothing
        assert c.cmd(f"P{REGNUM['rbx']:x}=" + (0x1234).to_bytes(8, "little").hex()) == "OK"
        assert c.cmd(f"p{REGNUM['rbx']:x}") == (0x1234).to_bytes(8, "little").hex()
        rip = int.from_bytes(bytes.fromhex(c.cmd(f"p{REGNUM['rip']:x}")), "little")
        from vdso.loader import load_image
        assert rip == load_image("builtin").symbol("__vdso_getrandom")
        assert c.cmd(f"p{len(REGNUM) + 5:x}").startswith("E")
        # memory: readable code, an unmapped hole is an error
        assert len(c.cmd(f"m{rip:x},10")) == 32
        assert c.cmd("m10,8").startswith("E")
        # writes: the vDSO text is read-only, the stack is writable
        assert c.cmd(f"M{rip:x},1:90").startswith("E")
        rsp = int.from_bytes(bytes.fromhex(c.cmd(f"p{REGNUM['rsp']:x}")), "little")
        assert c.cmd(f"M{rsp - 64:x},4:deadbeef") == "OK"
        assert c.cmd(f"m{rsp - 64:x},4") == "deadbeef"
        # monitor: the stepper's views
        assert " dp" in c.monitor("vmas")
        assert "dropped" in c.monitor("pages state")
        assert "error:" in c.monitor("stepi")
        assert "error:" in c.monitor("inject nonsense")
        assert "monitor commands" in c.monitor("help")
        assert c.cmd("vCont?").startswith("vCont;")
        assert c.cmd("vMustReplyEmpty") == ""
        # step until the fault: a SIGSEGV stop reply
        for _ in range(200):
            r = c.cmd("vCont;s:1")
            if r.startswith("T0b"):
                break
        assert r.startswith("T0b"), r
        assert "mm will:" in c.console
        c.send("D")
        assert c.read_ack() == b"+" and c.reply() == "OK"
        c.close()
        assert srv.wait() == 0
    finally:
        srv.stop()


def test_rsp_malformed_packets_and_disconnects_leave_the_server_usable():
    srv = Server("--image", "builtin", once=False)
    try:
        c = Rsp(srv.port)
        c.raw(b"$g#00")                       # bad checksum
        assert c.read_ack() == b"-"
        c.raw(b"garbage\x00\xff!!")             # noise between packets is skipped
        c.raw(b"$m1,zz#" + b"%02x" % (sum(b"m1,zz") & 0xFF))   # well-framed, bad content
        assert c.read_ack() == b"+"
        assert c.reply().startswith("E")
        c.raw(b"$qSupp$?#3f")                 # torn: a new packet starts inside
        assert c.read_ack() == b"+"
        assert c.reply().startswith("T05")
        c.raw(b"$qXfer:features:read:nosuch.xml:0,10#")   # truncated checksum, then the client dies
        c.close()
        # a client that vanishes mid-packet, another that sends only garbage
        s = socket.create_connection(("127.0.0.1", srv.port), timeout=5)
        s.sendall(b"$m7fff")
        s.close()
        s = socket.create_connection(("127.0.0.1", srv.port), timeout=5)
        s.sendall(os.urandom(4096).replace(b"$", b"x"))
        s.close()
        # still serving
        c = Rsp(srv.port)
        assert c.cmd("?").startswith("T05")
        assert len(c.cmd("g")) > 100
        assert c.cmd("vCont;s").startswith("T05")
        c.close()
        assert srv.p.poll() is None
    finally:
        srv.stop()


def test_ctrl_c_interrupts_a_running_continue():
    # A long-running continue: droppable-oom retry under persistent OOM refaults
    # until the (raised) livelock limit; faultstop off so it keeps running.
    srv = Server("--image", "builtin", "--droppable-oom", "retry", "--livelock", "10000000",
                 "--inject", "drop@2:0", "--inject", "oom@2:0")
    try:
        c = Rsp(srv.port)
        assert "off" in c.monitor("faultstop off")
        c.send("vCont;c")
        assert c.read_ack() == b"+"
        time.sleep(0.3)
        c.raw(b"\x03")
        t0 = time.monotonic()
        r = c.reply()
        assert r.startswith("T02"), r
        assert time.monotonic() - t0 < 5
        assert c.cmd("?").startswith("T02")
        assert "retry" in c.monitor("faults")
        c.send("k")
        assert c.read_ack() == b"+"
        assert srv.wait() == 0
    finally:
        srv.stop()


def test_port_in_use_is_one_clear_line():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(1)
    port = s.getsockname()[1]
    try:
        r = subprocess.run([sys.executable, "-m", "emulator.cli.main", "gdb", "--image", "builtin", "--port",
                            str(port), "--once"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    finally:
        s.close()
    assert r.returncode == 2
    lines = [l for l in r.stderr.splitlines() if l.strip()]
    assert len(lines) == 1 and "cannot listen" in lines[0] and "Traceback" not in r.stderr, r.stderr


def test_bad_gdb_options_exit_2():
    for args in (["--port", "70000"], ["--port", "x"], ["--memory", "1"]):
        r = subprocess.run([sys.executable, "-m", "emulator.cli.main", "gdb", "--image", "builtin", *args, "--once"],
                           cwd=ROOT, capture_output=True, text=True, timeout=60)
        assert r.returncode == 2, (args, r.stderr)
        assert len([l for l in r.stderr.splitlines() if l.strip()]) == 1, r.stderr


def test_non_loopback_listen_warns():
    srv = Server("--image", "builtin", "--listen", "0.0.0.0")
    try:
        assert any("warning" in l and "0.0.0.0" in l for l in srv.err), srv.err
        c = Rsp(srv.port)
        c.send("D")
        c.read_ack()
        assert c.reply() == "OK"
        c.close()
        assert srv.wait() == 0
    finally:
        srv.stop()


def test_default_bind_is_loopback():
    srv = Server("--image", "builtin")
    try:
        assert any("listening on 127.0.0.1:" in l for l in srv.err)
        assert not any("warning" in l for l in srv.err)
        c = Rsp(srv.port)
        c.send("k")
        c.read_ack()
        c.close()
        assert srv.wait() == 0
    finally:
        srv.stop()
