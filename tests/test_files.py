"""The one way in (vdso/files.py) and the one way out (emulator/outputs.py)."""
from __future__ import annotations

import errno
import os
import socket
import stat
import subprocess
import sys

import pytest

from emulator.errors import UsageError
from emulator.outputs import check_output, write_output, write_outputs
from vdso.errors import ImageError
from vdso.files import parse_json, read_bytes, read_json, read_text


def _one_line(e: pytest.ExceptionInfo) -> str:
    msg = str(e.value)
    assert msg and "\n" not in msg
    return msg


# ------------------------------------------------------------------ reading

def test_a_regular_file_is_read_whole(tmp_path):
    p = tmp_path / "x.txt"
    p.write_text("stepi\nregs\n")
    assert read_text(str(p), limit=100) == "stepi\nregs\n"
    assert read_bytes(str(p), limit=11) == b"stepi\nregs\n"


@pytest.mark.parametrize("make, kind", [
    (lambda d: str(d), "a directory"),
    (lambda d: (os.mkfifo(d / "fifo"), str(d / "fifo"))[1], "a FIFO"),
    (lambda d: "/dev/zero", "a character device"),
])
def test_what_is_not_a_regular_file_is_refused_without_blocking(tmp_path, make, kind):
    path = make(tmp_path)
    with pytest.raises(UsageError) as e:
        read_bytes(path, limit=1 << 20, label=f"--script {path}")
    assert _one_line(e) == f"--script {path}: is {kind}, not a regular file"


def test_a_socket_is_refused(tmp_path):
    path = str(tmp_path / "s")
    with socket.socket(socket.AF_UNIX) as s:
        s.bind(path)
        with pytest.raises(ImageError) as e:
            read_bytes(path, limit=100, error=ImageError)
    assert "No such device" in _one_line(e) or "socket" in _one_line(e)


def test_size_is_capped_before_reading(tmp_path):
    big = tmp_path / "sparse"
    with open(big, "wb") as f:
        f.truncate(3 << 30)                      # 3 GiB, no blocks
    with pytest.raises(UsageError) as e:
        read_bytes(str(big), limit=1 << 20)
    assert "3221225472 bytes, more than the 1048576" in _one_line(e)


def test_a_file_reporting_size_0_is_still_capped():
    # /proc files report 0 bytes: the cap holds on what is actually read.
    with pytest.raises(UsageError) as e:
        read_bytes("/proc/self/maps", limit=16)
    assert "more than the 16 bytes" in _one_line(e)


def test_empty_and_nul_paths(tmp_path):
    with pytest.raises(UsageError, match=r"^--from-json '': empty path$"):
        read_json("", limit=10, label="--from-json ")
    with pytest.raises(UsageError, match="NUL byte"):
        read_text("a\0b", limit=10)


def test_text_must_be_utf8_without_nul(tmp_path):
    p = tmp_path / "bin"
    p.write_bytes(b"ok\n\xff\xfe")
    with pytest.raises(UsageError, match=r"not UTF-8 text \(byte 0xff at offset 3\)"):
        read_text(str(p), limit=100)
    p.write_bytes(b"ok\nstill\0text")
    with pytest.raises(UsageError, match="a NUL byte on line 2"):
        read_text(str(p), limit=100)


@pytest.mark.parametrize("text, why", [
    ("[" * 100_000, "nested deeper than 64"),          # json's own recursion limit is far above
    ("[" * 65 + "]" * 65, "nested deeper than 64"),
    ('{"a": NaN}', "NaN is not a JSON value"),
    ('{"a": Infinity}', "Infinity is not a JSON value"),
    ('{"a": [1, 2', "not valid JSON"),
])
def test_json_is_bounded(text, why):
    with pytest.raises(UsageError) as e:
        parse_json(text, "r.json")
    assert why in _one_line(e)


def test_json_at_the_depth_bound_is_fine():
    assert parse_json("[" * 64 + "]" * 64, "r.json") is not None


# ------------------------------------------------------------------ writing

def _listing(d) -> list[str]:
    return sorted(os.listdir(d))


def test_an_output_is_written_whole_with_the_usual_mode(tmp_path):
    t = check_output(str(tmp_path / "r.json"), "--json")
    write_output(t, "{}\n")
    assert (tmp_path / "r.json").read_text() == "{}\n"
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(os.stat(tmp_path / "r.json").st_mode) == 0o666 & ~umask
    assert _listing(tmp_path) == ["r.json"]


def test_a_replaced_file_keeps_its_mode(tmp_path):
    p = tmp_path / "r.json"
    p.write_text("old")
    p.chmod(0o640)
    write_output(check_output(str(p), "--json"), "new")
    assert p.read_text() == "new" and stat.S_IMODE(p.stat().st_mode) == 0o640


@pytest.mark.parametrize("make, why", [
    (lambda d: "", "an empty path"),
    (lambda d: str(d), "is a directory"),
    (lambda d: str(d) + "/", "names a directory"),
    (lambda d: str(d / "missing" / "x.json"), "does not exist"),
    (lambda d: ((d / "f").write_text("x"), str(d / "f" / "x.json"))[1], "Not a directory"),
    (lambda d: "/dev/null", "is a character device"),
    (lambda d: (os.mkfifo(d / "p"), str(d / "p"))[1], "is a FIFO"),
    (lambda d: "/proc/self/status", "cannot create a file in /proc/self"),
    (lambda d: ((d / "dangling").symlink_to(d / "nowhere"), str(d / "dangling"))[1], "a symlink to a missing"),
    (lambda d: ((d / "tonull").symlink_to("/dev/null"), str(d / "tonull"))[1], "is a character device"),
])
def test_bad_destinations_are_refused_before_any_work(tmp_path, make, why):
    path = make(tmp_path)
    before = _listing(tmp_path)
    with pytest.raises(UsageError) as e:
        check_output(path, "--json")
    assert why in _one_line(e)
    assert _listing(tmp_path) == before


def test_a_read_only_directory_is_refused(tmp_path):
    if os.geteuid() == 0:
        # root writes anyway; a read-only bind mount would be needed: use /proc instead (above)
        pytest.skip("root ignores directory permissions")
    d = tmp_path / "ro"
    d.mkdir()
    d.chmod(0o555)
    with pytest.raises(UsageError, match="cannot create a file"):
        check_output(str(d / "x.json"), "--json")


def test_a_symlink_is_written_through_and_stays_a_link(tmp_path):
    target = tmp_path / "real.json"
    target.write_text("old")
    link = tmp_path / "link.json"
    link.symlink_to(target)
    write_output(check_output(str(link), "--json"), "new")
    assert link.is_symlink() and os.readlink(link) == str(target)
    assert target.read_text() == "new"
    assert _listing(tmp_path) == ["link.json", "real.json"]


def test_stdout(capsys):
    t = check_output("-", "--json")
    write_outputs([(t, "hello\n")])
    assert capsys.readouterr().out == "hello\n"
    with pytest.raises(UsageError, match="must go to a file"):
        check_output("-", "-o", allow_stdout=False)


def test_outputs_come_out_together_or_not_at_all(tmp_path, monkeypatch):
    good, bad = tmp_path / "good.json", tmp_path / "bad.svg"
    bad.write_text("old svg")
    targets = [check_output(str(good), "--json"), check_output(str(bad), "--plot")]
    real_write = os.write

    def enospc_on_second_file(fd, data):
        if bytes(data).startswith(b"<svg"):          # the first file is complete by then
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_write(fd, data)
    monkeypatch.setattr(os, "write", enospc_on_second_file)
    with pytest.raises(UsageError) as e:
        write_outputs([(targets[0], "{}"), (targets[1], "<svg/>")])
    assert "--plot" in _one_line(e) and "No space left" in _one_line(e)
    monkeypatch.undo()
    assert _listing(tmp_path) == ["bad.svg"]             # no good.json, no temporary file
    assert bad.read_text() == "old svg"


def test_a_file_size_limit_leaves_nothing_behind(tmp_path):
    # EFBIG under RLIMIT_FSIZE (Python ignores SIGXFSZ): in a child, so the
    # limit does not stay on the test process.
    code = (
        "import resource, sys\n"
        "resource.setrlimit(resource.RLIMIT_FSIZE, (1000, 1000))\n"
        "from emulator.cli.main import main\n"
        "from emulator.outputs import check_output, write_output\n"
        "from emulator.errors import FaultpathError\n"
        "try:\n"
        f"    write_output(check_output({str(tmp_path / 'r.json')!r}, '--json'), 'x' * 5000)\n"
        "except FaultpathError as e:\n"
        "    print(e, file=sys.stderr); sys.exit(2)\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                       cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert r.returncode == 2, r.stderr
    assert "File too large" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert _listing(tmp_path) == []


def test_two_options_naming_one_file_are_refused(tmp_path):
    from emulator.outputs import check_distinct
    p = str(tmp_path / "x")
    with pytest.raises(UsageError, match="the same file as --json"):
        check_distinct([check_output(p, "--json"), check_output(p, "--plot")])
