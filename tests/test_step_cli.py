"""`faultpath step` driven the way a user drives it: `-c "cmd; cmd"`, `--script
FILE`, and (when tmux is installed) the real interactive REPL in a tmux pane.

The scripted session stops at the fault on the dropped droppable state page,
walks its handling with fstep, injects a transient OOM at the next fault and
shows the skip with the decoded length and the new rip; the length is checked
against capstone's decoding of the image bytes at that rip.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time

import pytest

from vdso.elf_image import host_has_vgetrandom

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def step(*args: str, timeout: float = 120, env=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "emulator.cli.main", "step", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout, env=env)


def _image_or_skip(image: str):
    if image == "host" and not host_has_vgetrandom():
        pytest.skip("the running kernel's vDSO has no __vdso_getrandom (needs Linux 6.11+)")
    from vdso.loader import load_image
    try:
        return load_image(image)
    except Exception as e:
        pytest.skip(f"--image {image} unavailable: {e}")


WALK = ("vmas; pages state; continue; fault; stepi; continue; inject oom:1; "
        "fstep; fstep; fstep; fstep; fstep; fstep; fstep; faults; cycles; trace 3")


@pytest.mark.parametrize("image", ["builtin", "host"])
def test_scripted_fault_walk_shows_the_skip(image):
    img = _image_or_skip(image)
    r = step("--image", image, "--size", "256", "--calls", "2", "--inject", "drop@2:0", "-c", WALK)
    assert r.returncode == 0, r.stdout + r.stderr
    out = r.stdout
    assert r.stderr == ""
    # banner, the injection applied at instruction 0, the views
    assert "call 2 of 2: getrandom(256)" in out
    assert "inject drop at #0: pages=1" in out
    vm = [l for l in out.splitlines() if " state " in l and "VmFlags" in l][0]
    assert " dp" in vm and "<- droppable" in vm
    assert re.search(r"^  0x[0-9a-f]+  dropped$", out, re.M), out
    # first stop: the read of the dropped page, before it is handled
    stops = list(dict.fromkeys(re.findall(r"^fault at #(\d+) rip=(0x[0-9a-f]+)", out, re.M)))
    assert len(stops) >= 2, out
    assert "pte:     dropped" in out and "mm will: map zero page" in out
    # second stop: the write; a transient OOM injected right there turns it into a skip
    (idx, rip) = int(stops[1][0]), int(stops[1][1], 16)
    assert "mm will now: COW copy: OOM on droppable -> skip instruction" in out
    m = re.search(r"handling fault at #%d rip=0x%x.*: (\d+) stages" % (idx, rip), out)
    assert m, out
    n = int(m.group(1))
    assert n == 7, out          # entry, vma lookup, vma check, alloc (fails), droppable_oom, decode, return
    stages = re.findall(r"^stage (\d+)/(\d+) (\S+)\s+(\d+) cycles", out, re.M)
    assert [int(s[0]) for s in stages] == list(range(1, n + 1))
    kinds = [s[2] for s in stages]
    assert kinds[0] == "fault_entry" and kinds[-1] == "fault_return"
    assert "alloc" in kinds and "droppable_oom" in kinds and "decode" in kinds
    h = re.search(r"fault at #%d handled: skip len=(\d+) new_rip=(0x[0-9a-f]+) \S+ \((\d+) cycles\)" % idx, out)
    assert h, out
    length, new_rip, cyc = int(h.group(1)), int(h.group(2), 16), int(h.group(3))
    assert sum(int(s[3]) for s in stages) == cyc
    # the decoded length is what capstone says of the image bytes at rip
    from vdso.insn import decode_one
    ins = decode_one(img.text[rip - img.base:rip - img.base + 15], rip)
    assert ins is not None and ins.size == length
    assert f"; {length} bytes)" in out
    assert new_rip == rip + length
    # the skipped instruction retired: the stop after the walk is at idx+1, new rip
    assert re.search(r"^#%d\s+0x%x " % (idx + 1, new_rip), out, re.M), out
    assert f"-> skip len={length} new_rip={new_rip:#x}" in out
    # deterministic: a second run prints the same transcript
    r2 = step("--image", image, "--size", "256", "--calls", "2", "--inject", "drop@2:0", "-c", WALK)
    assert r2.stdout == out


def test_bad_commands_print_one_line_and_the_repl_goes_on():
    cmds = ["bogus", "stepi x", "x/zz 1", "x/4xb 0x10", "pages 0x10", "inject nope", "policy maybe",
            "memory -3", "fstep", "delete 7", "until", "break nosuchsym", "regs"]
    r = step("--image", "builtin", "-c", "; ".join(cmds))
    assert r.returncode == 1
    assert "Traceback" not in r.stdout + r.stderr
    out = r.stdout.splitlines()
    for c in cmds[:-1]:
        i = out.index(f"(faultpath) {c}")
        assert out[i + 1].startswith("error: "), (c, out[i + 1])
        assert out[i + 2].startswith("(faultpath) "), (c, out[i + 2])
    assert any(l.startswith("rip  0x") for l in out)      # the last, good command still ran


@pytest.mark.parametrize("args, needle", [
    (["--memory", "1"], "--memory"),
    (["--script", "/nonexistent/cmds"], "--script"),
    (["--inject", "bogus@1"], "bogus"),
    (["--size", "x"], "--size"),
    (["--droppable-oom", "maybe"], "droppable-oom"),
])
def test_bad_options_exit_2_with_one_line(args, needle):
    r = step("--image", "builtin", *args, "-c", "regs")
    assert r.returncode == 2, r.stderr
    lines = [l for l in r.stderr.splitlines() if l.strip()]
    assert len(lines) == 1 and needle in lines[0] and "Traceback" not in r.stderr, r.stderr


def test_script_file_breakpoint_and_return(tmp_path):
    _image_or_skip("builtin")
    script = tmp_path / "walk.fp"
    script.write_text("# stop in the ChaCha20 code, look, run to the end\n"
                      "break __arch_chacha20_blocks_nostack\n"
                      "\n"
                      "continue\n"
                      "stepi 40\n"
                      "regs xmm\n"
                      "dis 3\n"
                      "delete\n"
                      "continue\n"
                      "x/2xg buffer\n")
    r = step("--image", "builtin", "--script", str(script))
    assert r.returncode == 0, r.stdout
    out = r.stdout
    assert re.search(r"^breakpoint 1 at 0x[0-9a-f]+ <__arch_chacha20_blocks_nostack>$", out, re.M)
    assert re.search(r"^breakpoint 1, 0x[0-9a-f]+ <__arch_chacha20_blocks_nostack>$", out, re.M)
    assert re.search(r"^=>.*<__arch_chacha20_blocks_nostack\+\d+>", out, re.M)
    assert re.search(r"^xmm0\s+0x[0-9a-f]{32}$", out, re.M)
    assert "call 2 ended: getrandom(256) -> 256  outcome=returned" in out
    assert re.search(r"^0x[0-9a-f]+ <buffer>:\t0x[0-9a-f]{16}\t0x[0-9a-f]{16}$", out, re.M)
    assert "# stop" not in out


def test_gdb_style_commands_in_a_script():
    """help CMD with its aliases, info, bt, display, finish, reverse-stepi,
    restart after the call ended: each prints what a gdb user expects."""
    _image_or_skip("builtin")
    cmds = ["help rsi", "help info", "break __arch_chacha20_blocks_nostack", "continue", "bt",
            "display/i $pc", "stepi 3", "finish", "undisplay", "info breakpoints", "info state",
            "reverse-stepi 2", "delete", "continue", "stepi", "restart", "where", "info frame"]
    r = step("--image", "builtin", "-c", "; ".join(cmds))
    assert r.returncode == 0, r.stdout + r.stderr
    out = r.stdout
    assert "reverse-stepi [N]" in out and "aliases: rsi, rs" in out
    assert "info registers|breakpoints|watchpoints|vmas|state" in out and "aliases: i" in out
    bt = re.findall(r"^#(\d+)\s+0x[0-9a-f]{16} <(\w+)", out, re.M)          # bt lines: 16 hex digits
    assert bt[:3] == [("0", "__arch_chacha20_blocks_nostack"), ("1", "__vdso_getrandom"),
                      ("2", "faultpath_caller")], out
    assert re.search(r"^1: /i \$pc\n=>", out, re.M), out          # display after each moving command
    assert "run till exit from #0" in out
    assert re.search(r"^struct vgetrandom_state at 0x[0-9a-f]+ <state>", out, re.M)
    assert re.search(r"^  in_use      1  \(a call is using this state\)$", out, re.M)
    assert "call 2 ended: getrandom(256) -> 256" in out
    i = out.index("(faultpath) restart")
    assert "restarted call 2 at #0" in out[i:] and re.search(r"^#0\s+0x[0-9a-f]+ <__vdso_getrandom>", out[i:], re.M)


def test_events_come_out_in_the_order_they_happened():
    """Faults, syscalls (with the kernel's own faults under them) and injections
    in execution order; the first call's buffer is fresh, so the fallback
    syscall's copy_to_user faults in kernel mode, which stops the call."""
    _image_or_skip("builtin")
    r = step("--image", "builtin", "--calls", "1", "--inject", "not-ready@1:0", "-c", "continue; continue; faults")
    assert r.returncode == 0, r.stdout + r.stderr
    out = r.stdout
    assert "stopped after a syscall in which the kernel faulted" in out, out
    i = out.index("syscall at #")
    assert re.search(r"^  kernel fault at #\d+ in getrandom:copy_to_user: write 0x[0-9a-f]+ <buffer> -> mapped",
                     out[i:], re.M), out
    idx = [int(x) for x in re.findall(r"^(?:  kernel )?(?:fault|syscall|inject \w+) at #(\d+)", out, re.M)]
    assert idx == sorted(idx), out


def test_default_step_is_the_fault_path_scenario():
    """No options: the canned fault-path scenario on call 2 (drop + transient OOM)."""
    r = step("-c", "continue; continue; faults")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "scenario=fault-path" in r.stdout
    assert re.search(r"fault at #\d+ handled: skip len=\d+ new_rip=0x", r.stdout)


# ----------------------------------------------------------------------------- tmux
TMUX = shutil.which("tmux")


@pytest.mark.skipif(TMUX is None, reason="tmux is not installed")
def test_interactive_session_in_tmux(tmp_path):
    _image_or_skip("builtin")
    sock = f"faultpath-test-{os.getpid()}"
    env = dict(os.environ, HOME=str(tmp_path), FAULTPATH_HISTORY=str(tmp_path / "hist"), TERM="xterm")

    def tmux(*a, check=True):
        return subprocess.run([TMUX, "-L", sock, *a], capture_output=True, text=True, env=env, timeout=20,
                              check=check)

    def pane() -> str:
        return tmux("capture-pane", "-p", "-J", "-S", "-200", "-t", "fp").stdout

    def wait_for(text: str, timeout: float = 20) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            p = pane()
            if text in p:
                return p
            time.sleep(0.1)
        raise AssertionError(f"{text!r} never appeared:\n{pane()}")

    cmd = (f"cd {ROOT} && {sys.executable} -m emulator.cli.main step --image builtin --inject drop@2:0; "
           f"echo EXIT=$?; sleep 30")
    tmux("new-session", "-d", "-s", "fp", "-x", "200", "-y", "50", cmd)
    try:
        wait_for("(faultpath) ")
        tmux("send-keys", "-t", "fp", "continue", "Enter")
        wait_for("mm will: map zero page")
        tmux("send-keys", "-t", "fp", "fstep", "Enter")
        wait_for("stage 1/")
        tmux("send-keys", "-t", "fp", "", "Enter")      # an empty line repeats fstep, as gdb does
        wait_for("stage 2/")
        tmux("send-keys", "-t", "fp", "nonsense", "Enter")
        wait_for("error: unknown command 'nonsense'")
        tmux("send-keys", "-t", "fp", "", "Enter")      # empty line: repeats nothing after an error
        tmux("send-keys", "-t", "fp", "vmas", "Enter")
        wait_for("<- droppable")
        tmux("send-keys", "-t", "fp", "Up", "Enter")        # readline history: vmas again
        deadline = time.monotonic() + 20
        while pane().count("<- droppable") < 2 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert pane().count("<- droppable") >= 2, pane()
        # tab completion: a command, then a state field after it
        tmux("send-keys", "-t", "fp", "wat", "Tab")
        tmux("send-keys", "-t", "fp", "state.in_", "Tab")
        tmux("send-keys", "-t", "fp", "Enter")
        wait_for("watchpoint 1 (write): state.in_use at")
        tmux("send-keys", "-t", "fp", "help rs", "Enter")
        wait_for("aliases: rsi, rs")
        tmux("send-keys", "-t", "fp", "quit", "Enter")
        p = wait_for("EXIT=0")
        assert "Traceback" not in p
    finally:
        tmux("kill-server", check=False)
    assert (tmp_path / "hist").exists()
