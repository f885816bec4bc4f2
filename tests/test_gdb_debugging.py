"""Issue 16's "Done when", with a stock gdb in batch mode: no symbol loading by
hand, against --image builtin and --image host, gdb breaks on
__arch_chacha20_blocks_nostack, sets `watch -l` on the state's in_use,
continues to the watchpoint stop, reverse-continues to the last writer and
prints a backtrace.  Plus `--symbols FILE`.

What each step proves comes from gdb's own output and from facts outside the
stub: the breakpoint's address is the symbol's in the image's ELF tables, the
writer gdb stops at is a byte store of 0 to state+0x89 (decoded by gdb
itself), and the registers at that stop make its address &state.in_use.
"""
from __future__ import annotations

import re
import shutil
import subprocess
import sys

import pytest

from test_gdb_stub import GDB, ROOT, Server
from vdso.elf_image import host_has_vgetrandom

needs_gdb = pytest.mark.skipif(GDB is None, reason="gdb is not installed")

SESSION = [
    "tbreak __arch_chacha20_blocks_nostack",
    "continue",
    "bt",
    "watch -l state.in_use",
    "continue",
    "reverse-continue",
    "x/i $pc",
    "p/x $pc",
    "bt",
    "p state.in_use",
]


def gdb_script(port: int, commands: list[str], timeout: float = 120) -> str:
    """gdb -batch with no symbol file and no set-up but `target remote`."""
    args = [GDB, "-batch", "-nx", "-ex", f"target remote 127.0.0.1:{port}"]
    for c in commands:
        args += ["-ex", c]
    r = subprocess.run(args, capture_output=True, text=True, timeout=timeout)
    return r.stdout + r.stderr


def _image(name: str):
    if name == "host" and not host_has_vgetrandom():
        pytest.skip("the running kernel's vDSO has no __vdso_getrandom (needs Linux 6.11+)")
    from vdso.loader import load_image
    return load_image(name)


@needs_gdb
@pytest.mark.parametrize("image", ["builtin", "host"])
def test_gdb_breaks_watches_reverses_and_backtraces_with_no_manual_symbols(image):
    img = _image(image)
    from emulator.debug.identify import identified_symbols
    chacha = img.base + {**img.symbols, **identified_symbols(img)}["__arch_chacha20_blocks_nostack"]
    srv = Server("--image", image, "--size", "256", "--calls", "2")
    try:
        out = gdb_script(srv.port, SESSION + ["kill"])
        assert srv.wait() == 0, srv.err
    finally:
        srv.stop()
    # gdb found the vDSO and the caller with no help, and stopped at the ChaCha20 routine
    assert "No symbol table is loaded" not in out and "not defined" not in out, out
    assert re.search(r"Temporary breakpoint 1, 0x0*%x in __arch_chacha20_blocks_nostack \(\)" % chacha, out), out
    # a sane stack: the routine, the vDSO entry point that called it, the caller; nothing below
    first_bt = re.findall(r"^#(\d+)\s+(?:0x[0-9a-f]+ in )?(\S+) \(\)", out.split("Hardware watchpoint")[0], re.M)
    assert first_bt == [("0", "__arch_chacha20_blocks_nostack"), ("1", "__vdso_getrandom"),
                        ("2", "faultpath_caller")], out
    # the watchpoint stop: in_use goes from 1 to 0 when the call is done with the state
    stops = re.findall(r"Hardware watchpoint \d+: -location state.in_use\s+Old value = (\w+)\s+New value = (\w+)",
                       out)
    assert stops[0] == ("true", "false"), out
    # reverse-continue lands on the writer, before it runs (gdb shows the values the other way round)
    assert stops[1] == ("false", "true"), out
    insn = re.search(r"=> (0x[0-9a-f]+) <__vdso_getrandom\+\d+>:\s+movb\s+\$0x0,0x89\(%(\w+)\)", out)
    assert insn, out
    pc = int(insn.group(1), 16)
    assert re.search(r"^\$\d+ = 0x%x$" % pc, out, re.M), out
    # the last bt: the writer in __vdso_getrandom, called from the caller
    tail = out[out.index(insn.group(0)):]
    assert re.findall(r"^#(\d+)\s+0x[0-9a-f]+ in (\S+) \(\)", tail, re.M) == [
        ("0", "__vdso_getrandom"), ("1", "faultpath_caller")], tail
    assert re.search(r"^\$\d+ = true$", tail, re.M), tail          # not written yet
    assert "Remote failure" not in out and "Remote connection closed" not in out, out


@needs_gdb
def test_the_writer_register_points_at_in_use():
    """At the reverse-continue stop, the store's base register + 0x89 is
    &state.in_use: the stop is at the last writer of that byte."""
    srv = Server("--image", "builtin", "--size", "256", "--calls", "2")
    try:
        out = gdb_script(srv.port, ["watch -l state.in_use", "continue", "reverse-continue", "x/i $pc",
                                    "p/x &state.in_use", "info registers", "kill"])
        assert srv.wait() == 0
    finally:
        srv.stop()
    reg = re.search(r"movb\s+\$0x1,0x89\(%(\w+)\)", out).group(1)     # in_use = 1 at the start of the call
    base = int(re.search(r"^%s\s+(0x[0-9a-f]+)" % reg, out, re.M).group(1), 16)
    in_use = int(re.search(r"^\$\d+ = (0x[0-9a-f]+)$", out, re.M).group(1), 16)
    assert base + 0x89 == in_use, out


@needs_gdb
def test_symbols_file_names_what_it_names_and_a_foreign_one_is_refused(tmp_path):
    """--symbols FILE is served as the image's debug file (matched by build-id):
    a name only that file has reaches gdb.  A file of another image is refused."""
    if shutil.which("objcopy") is None:
        pytest.skip("objcopy (binutils) is not installed")
    img = _image("host")
    raw = tmp_path / "vdso.so"
    raw.write_bytes(img.text)
    dbg = tmp_path / "vdso64.so.dbg"
    from emulator.debug.identify import identified_symbols
    off = identified_symbols(img)["__arch_chacha20_blocks_nostack"]
    import io
    from elftools.elf.elffile import ELFFile
    text = ELFFile(io.BytesIO(img.text)).get_section_by_name(".text")["sh_addr"]
    r = subprocess.run(["objcopy", "--add-symbol", f"only_in_the_debug_file=.text:{off - text:#x},function,global",
                        str(raw), str(dbg)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    srv = Server("--image", "host", "--symbols", str(dbg))
    try:
        out = gdb_script(srv.port, ["break only_in_the_debug_file", "continue", "kill"])
        assert srv.wait() == 0
    finally:
        srv.stop()
    assert re.search(r"Breakpoint 1, 0x0*%x in " % (img.base + off), out), out
    # an image's debug file must be that image's
    other = tmp_path / "builtin.so"
    other.write_bytes(_image("builtin").text)
    r = subprocess.run([sys.executable, "-m", "emulator.cli.main", "gdb", "--image", "host", "--symbols",
                        str(other), "--port", "0", "--once"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert r.returncode == 2
    lines = [l for l in r.stderr.splitlines() if l.strip()]
    assert len(lines) == 1 and "build-id" in lines[0] and "Traceback" not in r.stderr, r.stderr
