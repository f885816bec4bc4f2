"""Bad input and output files across every subcommand: no traceback, no hang,
nothing lost or destroyed (issue 15).

The corpus (tests/bad_input_corpus.py, seeded) runs in-process through the
CLI's main(argv); each case must exit 2 with exactly one line on stderr (or
exit as a valid input does), leave no new or changed file but its intended
outputs and no temporary file.  The default run takes a deterministic share
of every category (at least SAMPLE_PER_CATEGORY cases each, over 500 in
all); the whole corpus (about 1,600 cases) is marked slow.  A few cases go
through the real `faultpath` entry point in a subprocess.
"""
from __future__ import annotations

import os
import shutil
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bad_input_corpus import CATEGORIES, Case, build_corpus, isolated_home, run_case

SAMPLE_PER_CATEGORY = 40
PROJECT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    work = tmp_path_factory.mktemp("corpus")
    with isolated_home(work):
        yield work, build_corpus(work)


def _sample(cases: list[Case], n: int) -> list[Case]:
    """Every k-th case: a deterministic share spread over the whole category."""
    if len(cases) <= n:
        return cases
    step = len(cases) / n
    return [cases[int(i * step)] for i in range(n)]


def _check(work: Path, cases: list[Case]) -> None:
    failures = []
    with isolated_home(work):
        for c in cases:
            o = run_case(c, work)
            if o.problems:
                failures.append(f"{c.label()[:160]}: {'; '.join(o.problems)[:400]} :: {o.stderr.strip()[:200]}")
    assert not failures, f"{len(failures)} of {len(cases)} cases broke the contract:\n" + "\n".join(failures[:30])


def test_the_corpus_is_large_and_covers_every_category(corpus):
    work, cases = corpus
    by_cat = {c: [x for x in cases if x.category == c] for c in CATEGORIES}
    assert {c.category for c in cases} == set(CATEGORIES)
    assert len(cases) >= 1500
    assert sum(len(_sample(v, SAMPLE_PER_CATEGORY)) for v in by_cat.values()) >= 500
    for sub in ("run", "asm", "step", "gdb", "skipcheck", "decodecheck", "sweep", "calibrate", "bench",
                "compare", "diffcheck"):
        assert any(c.argv[0] == sub for c in cases), sub


@pytest.mark.parametrize("category", CATEGORIES)
def test_contract(corpus, category):
    work, cases = corpus
    _check(work, _sample([c for c in cases if c.category == category], SAMPLE_PER_CATEGORY))


@pytest.mark.slow
@pytest.mark.parametrize("category", CATEGORIES)
def test_contract_whole_corpus(corpus, category):
    work, cases = corpus
    _check(work, [c for c in cases if c.category == category])


def test_same_seed_same_output(capsys):
    from emulator.cli.main import main
    argv = ["run", "--size", "16,300", "--calls", "3", "--json", "--inject", "drop@40"]
    outs = []
    for seed in ("5", "5", "6"):
        assert main(argv + ["--seed", seed]) == 0
        outs.append(capsys.readouterr().out)
    assert outs[0] == outs[1] != outs[2]


# ------------------------------------------------------------------ the real entry point

def _faultpath() -> list[str]:
    exe = Path(sys.executable).parent / "faultpath"
    return [str(exe)] if exe.exists() else [sys.executable, "-c", "import sys; from emulator.cli.main import main; "
                                                                   "sys.exit(main())"]


def _cli(args: list[str], cwd: Path, timeout: float = 60, **kw) -> subprocess.CompletedProcess:
    env = dict(os.environ, HOME=str(cwd), FAULTPATH_PROFILE_DIR=str(cwd / "profiles"))
    return subprocess.run(_faultpath() + args, cwd=cwd, capture_output=True, text=True, timeout=timeout,
                          env=env, **kw)


def _one_line_exit_2(r: subprocess.CompletedProcess) -> str:
    assert r.returncode == 2, (r.returncode, r.stderr[-500:])
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
    return lines[0]


def test_special_files_through_the_real_entry_point(tmp_path):
    os.mkfifo(tmp_path / "fifo.so")
    with open(tmp_path / "big.toml", "wb") as f:
        f.truncate(3 << 30)
    t0 = time.monotonic()
    assert "is a FIFO" in _one_line_exit_2(_cli(["run", "--image", "fifo.so"], tmp_path, timeout=30))
    assert "is a character device" in _one_line_exit_2(_cli(["run", "--image", "/dev/zero"], tmp_path, timeout=30))
    assert "3221225472 bytes" in _one_line_exit_2(_cli(["run", "--profile", "./big.toml"], tmp_path, timeout=30))
    assert time.monotonic() - t0 < 30
    assert sorted(os.listdir(tmp_path)) == ["big.toml", "fifo.so"]


def test_several_outputs_all_or_nothing_through_the_real_entry_point(tmp_path, corpus):
    work, _ = corpus
    shutil.copy(work / "in" / "report.json", tmp_path / "report.json")
    line = _one_line_exit_2(_cli(["compare", "--from-json", "report.json", "--json", "good.json",
                                  "--plot", "/dev/full"], tmp_path))
    assert "--plot /dev/full" in line
    assert sorted(os.listdir(tmp_path)) == ["report.json"]
    r = _cli(["compare", "--from-json", "report.json", "--json", "ünï.json", "--plot", "ünï.svg"], tmp_path)
    assert r.returncode == 0, r.stderr
    assert sorted(os.listdir(tmp_path)) == ["report.json", "ünï.json", "ünï.svg"]


def test_a_file_size_limit_leaves_no_partial_output(tmp_path, corpus):
    import resource
    work, _ = corpus
    shutil.copy(work / "in" / "report.json", tmp_path / "report.json")

    def limit():
        resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))
    r = _cli(["compare", "--from-json", "report.json", "--json", "out.json", "--plot", "out.svg"], tmp_path,
             preexec_fn=limit)
    assert "File too large" in _one_line_exit_2(r)
    assert sorted(os.listdir(tmp_path)) == ["report.json"]


def _children(pid: int) -> list[str]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return f.read().split()
    except OSError:
        return []


def test_ctrl_c_exits_130_with_no_files_or_workers_left(tmp_path):
    p = subprocess.Popen(_faultpath() + ["compare", "--json", "r.json", "--plot", "r.svg", "--jobs", "2"],
                         cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         start_new_session=True, env=dict(os.environ, HOME=str(tmp_path)))
    deadline = time.monotonic() + 60
    while len(_children(p.pid)) < 2:       # both workers are running jobs
        assert time.monotonic() < deadline and p.poll() is None
        time.sleep(0.05)
    time.sleep(0.3)
    t0 = time.monotonic()
    os.killpg(p.pid, signal.SIGINT)        # what the terminal does on Ctrl-C: the whole group
    _, err = p.communicate(timeout=60)
    assert time.monotonic() - t0 < 10, "the interrupt waited for queued jobs"
    assert p.returncode == 130 and "Traceback" not in err, err[-500:]
    for _ in range(50):
        try:
            os.killpg(p.pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.1)
    else:
        pytest.fail("worker processes outlived the interrupted command")
    assert os.listdir(tmp_path) == []


# ------------------------------------------------------------------ device nodes and symlinks survive

def _mknod(path: Path) -> None:
    try:
        os.mknod(path, 0o666 | stat.S_IFCHR, os.makedev(1, 3))
    except PermissionError:
        pytest.skip("mknod is not permitted here (needs CAP_MKNOD)")
    except OSError as e:
        pytest.skip(f"mknod: {e.strerror}")


def _fake_calibrate(out_path, **kw):
    """calibrate's measuring replaced by a fixed profile; its writing is the real one."""
    from emulator.calibrate.output import dump_toml, write_atomic
    write_atomic(out_path, dump_toml({"meta": {"name": "t", "base": "zen4"}}))
    meta = {"name": "t", "base": "zen4", "tsc_mhz": 2596.0, "tsc_per_core_cycle": 0.7}
    return {"vdso": {}, "vdso_note": "faked", "syscall": {}, "faults": {}}, {"meta": meta}


OUTPUT_OPTIONS = {
    "compare --json": ["compare", "--from-json", "{report}", "--json", "{p}"],
    "compare --plot": ["compare", "--from-json", "{report}", "--plot", "{p}"],
    "sweep --json": ["sweep", "--size", "4", "--events", "drop", "--placements", "start", "--jobs", "0",
                     "--calls-before", "0", "--after", "0", "--boundaries", "0-3", "--json", "{p}"],
    "calibrate -o": ["calibrate", "-o", "{p}"],
    "diffcheck --json": ["diffcheck", "--count", "0", "--kind", "flags", "--json", "{p}"],
}


@pytest.mark.parametrize("option", OUTPUT_OPTIONS)
def test_a_device_node_and_a_symlink_survive_every_output_option(tmp_path, corpus, option, monkeypatch, capsys):
    from emulator.cli.main import main
    work, _ = corpus
    monkeypatch.setattr("emulator.calibrate.output.calibrate", _fake_calibrate)
    monkeypatch.chdir(tmp_path)
    dev = tmp_path / "dev"
    _mknod(dev)
    target = tmp_path / "target"
    target.write_text("old")
    link = tmp_path / "link"
    link.symlink_to("target")
    argv = [a.replace("{report}", str(work / "in" / "report.json")) for a in OUTPUT_OPTIONS[option]]

    before = os.lstat(dev)
    assert main([a.replace("{p}", str(dev)) for a in argv]) == 2
    err = capsys.readouterr().err
    assert "is a character device" in err and len(err.strip().splitlines()) == 1
    after = os.lstat(dev)
    assert stat.S_ISCHR(after.st_mode) and (after.st_ino, after.st_rdev) == (before.st_ino, before.st_rdev)

    rc = main([a.replace("{p}", str(link)) for a in argv])
    err = capsys.readouterr().err
    if option.startswith("diffcheck") and rc == 2:
        pytest.skip(f"diffcheck cannot run natively here: {err.strip()}")
    assert rc == 0, err
    assert link.is_symlink() and os.readlink(link) == "target"
    assert target.read_text() != "old"                      # written through the link
    assert sorted(os.listdir(tmp_path)) == ["dev", "link", "target"]
