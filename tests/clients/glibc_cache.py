#!/usr/bin/env python3
"""A glibc with vDSO getrandom (2.41 or later), and the client programs built
against it.

faultpath's real-client work needs a glibc that calls ``__vdso_getrandom``
from its own state allocator.  Debian 12 ships 2.36, so this module fetches
Debian 13's ``libc6``, ``libc6-dev`` and ``linux-libc-dev`` (the kernel
headers that glibc's headers include) as single packages through apt, with a
private apt configuration (its own sources list naming trixie, its own state
and cache directories; the host's apt configuration and package database are
never touched and nothing is installed), and unpacks them with
``dpkg-deb -x`` into a sysroot under ``build/glibc/``.  A host glibc that is
already 2.41 or later is used as it is.

Everything is cached: once ``state.json`` says ``ready`` a second run makes no
apt call.  Where apt, dpkg-deb or the archive cannot be reached the run still
exits 0 and records ``status: unavailable`` with the reason, which the tests
read to skip.

Standard library only, so it runs before the project's venv exists.

    python3 tests/clients/glibc_cache.py fetch    # sysroot + state.json
    python3 tests/clients/glibc_cache.py build    # programs into build/glibc/bin
    python3 tests/clients/glibc_cache.py all      # both (the Makefile target)
    python3 tests/clients/glibc_cache.py env      # state.json + flags, as JSON

Environment: FAULTPATH_GLIBC_DIR (cache directory, default
``<repo>/build/glibc``), FAULTPATH_DEBIAN_MIRROR (archive URI; default: the
Debian archive the host's own apt sources name).
"""
from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
DEFAULT_DIR = REPO / "build" / "glibc"

SUITE = "trixie"                      # Debian 13
PACKAGES = ("libc6", "libc6-dev", "linux-libc-dev")
MIN_VERSION = (2, 41)                 # first glibc that uses __vdso_getrandom
MULTIARCH = "x86_64-linux-gnu"
LOADER = "ld-linux-x86-64.so.2"
STATE_FILE = "state.json"
KEYRING = Path("/usr/share/keyrings/debian-archive-keyring.gpg")

# Compiler flags every client is built with: optimised like a distribution
# build, and no AVX in our own code (glibc's ifuncs still choose for libc).
CFLAGS = ("-O2", "-mno-avx", "-Wall", "-Wextra", "-g0")

# name -> (source, static)
PROGRAMS = {
    "getrandom_loop": ("getrandom_loop.c", False),
    "getrandom_loop_static": ("getrandom_loop.c", True),
    "getrandom_fork": ("getrandom_fork.c", False),
    "getrandom_signal": ("getrandom_signal.c", False),
    "thread_create": ("thread_create.c", False),
    "sigrestart": ("sigrestart.c", False),
}
HEADERS = ("tally.h",)


class Unavailable(Exception):
    """The glibc or the tools to build against it cannot be had here."""


@dataclass
class Cache:
    """What state.json records.  Paths are absolute.

    ``sysroot`` is None for a host glibc.  ``ld_so`` is the loader the
    programs name in PT_INTERP; ``libdir`` holds libc.so.6 and is the
    programs' RUNPATH.
    """
    status: str                       # "ready" | "unavailable"
    reason: str = ""
    source: str = ""                  # "debian-trixie" | "host"
    version: str = ""                 # glibc's version, e.g. "2.41"
    package_version: str = ""         # Debian's, e.g. "2.41-12+deb13u5"
    sysroot: str | None = None
    ld_so: str = ""
    libdir: str = ""
    packages: dict = field(default_factory=dict)

    @property
    def ready(self) -> bool:
        return self.status == "ready"


def cache_dir() -> Path:
    return Path(os.environ.get("FAULTPATH_GLIBC_DIR") or DEFAULT_DIR).resolve()


def load(dir: Path | None = None) -> Cache | None:
    """The recorded state, or None when nothing was recorded yet."""
    path = (dir or cache_dir()) / STATE_FILE
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    known = set(Cache.__dataclass_fields__)
    return Cache(**{k: v for k, v in data.items() if k in known})


def _save(dir: Path, cache: Cache) -> Cache:
    dir.mkdir(parents=True, exist_ok=True)
    tmp = dir / (STATE_FILE + ".tmp")
    tmp.write_text(json.dumps(asdict(cache), indent=2, sort_keys=True) + "\n")
    tmp.replace(dir / STATE_FILE)
    return cache


@contextlib.contextmanager
def _locked(dir: Path):
    """One fetch or build at a time per cache (engineers share a checkout)."""
    dir.mkdir(parents=True, exist_ok=True)
    with open(dir / ".lock", "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _version_tuple(text: str) -> tuple[int, ...]:
    m = re.match(r"(\d+)\.(\d+)", text)
    return (int(m.group(1)), int(m.group(2))) if m else (0, 0)


def host_glibc_version() -> str:
    """The running C library's version ("2.36"), or "" if it is not glibc."""
    try:
        v = os.confstr("CS_GNU_LIBC_VERSION") or ""
    except (ValueError, OSError):
        v = ""
    return v.split()[-1] if v.startswith("glibc") else ""


# ---------------------------------------------------------------- apt side

def _host_codename() -> str:
    try:
        for line in Path("/etc/os-release").read_text().splitlines():
            if line.startswith("VERSION_CODENAME="):
                return line.split("=", 1)[1].strip().strip('"')
    except OSError:
        pass
    return ""


def _host_sources():
    """(types, uris, suites) of every source the host's apt configuration
    lists, from deb822 ``.sources`` files and one-line ``.list`` files."""
    etc = Path("/etc/apt")
    files = [etc / "sources.list"] + sorted((etc / "sources.list.d").glob("*"))
    for f in files:
        try:
            text = f.read_text()
        except OSError:
            continue
        if f.suffix == ".sources":
            for stanza in re.split(r"\n\s*\n", text):
                fields = {}
                for line in stanza.splitlines():
                    if line.startswith("#") or ":" not in line or line[0].isspace():
                        continue
                    k, v = line.split(":", 1)
                    fields[k.strip().lower()] = v.split()
                if fields.get("enabled", ["yes"])[0].lower() == "no":
                    continue
                yield fields.get("types", []), fields.get("uris", []), fields.get("suites", [])
        elif f.name == "sources.list" or f.suffix == ".list":
            for line in text.splitlines():
                line = re.sub(r"\[[^]]*\]", "", line.split("#", 1)[0]).split()
                if len(line) >= 3:
                    yield [line[0]], [line[1]], [line[2]]


def debian_mirror() -> str:
    """The Debian archive to fetch from: FAULTPATH_DEBIAN_MIRROR, else the
    main archive the host's apt sources already use (the suite named after
    the host's codename, not its -updates or -security companions)."""
    env = os.environ.get("FAULTPATH_DEBIAN_MIRROR")
    if env:
        return env.rstrip("/")
    codename = _host_codename()
    for types, uris, suites in _host_sources():
        if "deb" not in types or not uris:
            continue
        if any(s == codename or s in ("stable", "testing", "unstable", "sid", SUITE)
               for s in suites):
            uri = uris[0].rstrip("/")
            if "security" not in uri:
                return uri
    raise Unavailable("the host's apt sources name no Debian archive "
                      "(set FAULTPATH_DEBIAN_MIRROR to one)")


def _run(cmd, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True, **kw)


def _last_error(p: subprocess.CompletedProcess) -> str:
    """apt's first complaint: "E:" and "W: Failed to fetch" lines carry the
    cause ("Could not connect ...", "404 Not Found", "NO_PUBKEY ...")."""
    lines = [l.strip() for l in (p.stderr + "\n" + p.stdout).splitlines() if l.strip()]
    for prefix in ("E:", "W: Failed to fetch", "W:", "Err:"):
        hits = [l for l in lines if l.startswith(prefix)]
        if hits:
            return re.sub(r"\s+", " ", hits[0])
    return lines[-1] if lines else "exit status %d" % p.returncode


class _PrivateApt:
    """apt-get with its own sources, state and cache under ``root``.  The
    host's apt.conf.d still applies (proxies, languages), its sources,
    preferences and package database do not."""

    def __init__(self, root: Path, mirror: str):
        self.root = root
        etc = root / "etc"
        for d in (etc / "sources.list.d", etc / "preferences.d",
                  root / "state" / "lists" / "partial",
                  root / "cache" / "archives" / "partial"):
            d.mkdir(parents=True, exist_ok=True)
        (etc / "sources.list").write_text("")
        signed = f"Signed-By: {KEYRING}\n" if KEYRING.exists() else ""
        (etc / "sources.list.d" / f"{SUITE}.sources").write_text(
            f"Types: deb\nURIs: {mirror}\nSuites: {SUITE}\nComponents: main\n{signed}")
        (root / "state" / "status").write_text("")
        self.opts = []
        for k, v in (
            ("Dir::State", root / "state"),
            ("Dir::State::status", root / "state" / "status"),
            ("Dir::Cache", root / "cache"),
            ("Dir::Etc::sourcelist", etc / "sources.list"),
            ("Dir::Etc::sourceparts", etc / "sources.list.d"),
            ("Dir::Etc::preferences", etc / "preferences"),
            ("Dir::Etc::preferencesparts", etc / "preferences.d"),
            ("APT::Architecture", "amd64"),
            ("APT::Architectures", "amd64"),
            ("Acquire::Languages", "none"),
            ("Acquire::Retries", "0"),
            ("Acquire::http::Timeout", "20"),
            ("Acquire::https::Timeout", "20"),
        ):
            self.opts += ["-o", f"{k}={v}"]
        if os.geteuid() == 0:
            # Our directories are root's; apt's _apt sandbox could not write them.
            self.opts += ["-o", "APT::Sandbox::User=root"]

    def get(self, *args, cwd=None) -> subprocess.CompletedProcess:
        return _run(["apt-get", "-q", *self.opts, *args], cwd=cwd)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _deb_field(deb: Path, name: str) -> str:
    p = _run(["dpkg-deb", "-f", str(deb), name])
    return p.stdout.strip()


def _fetch_debian(dir: Path) -> Cache:
    for tool in ("apt-get", "dpkg-deb"):
        if shutil.which(tool) is None:
            raise Unavailable(f"{tool} not found: cannot fetch Debian 13's glibc")
    mirror = debian_mirror()
    apt = _PrivateApt(dir / "apt", mirror)
    p = apt.get("update")
    if p.returncode != 0 or "Err:" in p.stdout:
        raise Unavailable(f"apt-get update for {SUITE} failed: {_last_error(p)}")
    debs_dir = dir / "debs"
    shutil.rmtree(debs_dir, ignore_errors=True)
    debs_dir.mkdir(parents=True)
    p = apt.get("download", *PACKAGES, cwd=debs_dir)
    if p.returncode != 0:
        raise Unavailable(f"apt-get download {' '.join(PACKAGES)} failed: {_last_error(p)}")

    packages = {}
    for deb in sorted(debs_dir.glob("*.deb")):
        name = _deb_field(deb, "Package")
        packages[name] = {"version": _deb_field(deb, "Version"),
                          "architecture": _deb_field(deb, "Architecture"),
                          "file": deb.name, "sha256": _sha256(deb)}
    missing = [n for n in PACKAGES if n not in packages]
    if missing:
        raise Unavailable(f"apt-get download did not deliver {', '.join(missing)}")
    pkg_version = packages["libc6"]["version"]
    upstream = pkg_version.split(":")[-1].split("-")[0]
    if _version_tuple(upstream) < MIN_VERSION:
        raise Unavailable(f"{SUITE}'s libc6 is {pkg_version}, older than 2.41")

    # Unpack into a fresh tree, then move it into place: a half-unpacked
    # sysroot is never mistaken for a ready one.
    root = dir / "root"
    tmp = dir / "root.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    for info in packages.values():
        p = _run(["dpkg-deb", "-x", str(debs_dir / info["file"]), str(tmp)])
        if p.returncode != 0:
            raise Unavailable(f"dpkg-deb -x {info['file']} failed: {_last_error(p)}")
    # Debian 13 is merged-/usr: libc.so's linker script names
    # /lib/x86_64-linux-gnu/libc.so.6 and /lib64/ld-linux-x86-64.so.2, which
    # base-files' symlinks resolve on a real system.  Give the sysroot the same.
    for link, target in (("lib", "usr/lib"), ("lib64", "usr/lib64")):
        if not (tmp / link).exists():
            (tmp / link).symlink_to(target)
    shutil.rmtree(root, ignore_errors=True)
    tmp.rename(root)
    # The indexes (20 MB) are only needed to download; the .debs stay as the
    # record of what was unpacked.
    shutil.rmtree(dir / "apt", ignore_errors=True)

    libdir = root / "usr" / "lib" / MULTIARCH
    return Cache(status="ready", source=f"debian-{SUITE}", version=upstream,
                 package_version=pkg_version, sysroot=str(root),
                 ld_so=str(libdir / LOADER), libdir=str(libdir), packages=packages)


def _host_cache(version: str) -> Cache:
    libc = _run(["gcc", "-print-file-name=libc.so.6"]).stdout.strip() \
        if shutil.which("gcc") else ""
    libdir = Path(libc).resolve().parent if libc and os.path.isabs(libc) \
        else Path("/lib") / MULTIARCH
    ld_so = Path("/lib64") / LOADER
    return Cache(status="ready", source="host", version=version, sysroot=None,
                 ld_so=str(ld_so), libdir=str(libdir))


def _usable(cache: Cache | None) -> bool:
    return bool(cache and cache.ready and Path(cache.ld_so).exists()
                and (Path(cache.libdir) / "libc.so.6").exists())


def fetch(dir: Path | None = None) -> Cache:
    """Make the glibc available and record it.  Never raises Unavailable:
    the reason is recorded instead."""
    dir = dir or cache_dir()
    with _locked(dir):
        cached = load(dir)
        if _usable(cached):
            return cached
        host = host_glibc_version()
        if host and _version_tuple(host) >= MIN_VERSION:
            return _save(dir, _host_cache(host))
        try:
            cache = _fetch_debian(dir)
        except Unavailable as e:
            cache = Cache(status="unavailable", reason=str(e))
            shutil.rmtree(dir / "apt", ignore_errors=True)
        return _save(dir, cache)


# ---------------------------------------------------------------- gcc side

def compile_flags(cache: Cache, static: bool = False) -> list[str]:
    """gcc flags that build against ``cache``'s glibc and nothing else.

    --sysroot alone is not enough with Debian's gcc: its driver still puts
    the host's /usr/lib/x86_64-linux-gnu (crt1.o, libc.so) ahead of the
    sysroot's, so -B (start files) and -L (libraries) name the cache first.
    """
    flags = list(CFLAGS)
    if cache.sysroot:
        flags += [f"--sysroot={cache.sysroot}", f"-B{cache.libdir}", f"-L{cache.libdir}"]
    if static:
        flags.append("-static")
    elif cache.sysroot:
        flags += [f"-Wl,--dynamic-linker={cache.ld_so}", f"-Wl,-rpath,{cache.libdir}"]
    return flags


def build(cache: Cache | None = None, out: Path | None = None) -> dict[str, Path]:
    """Build every client program; returns name -> path.  Up-to-date
    programs (newer than their sources and the state) are not rebuilt.
    Raises Unavailable when the glibc or gcc is missing."""
    dir = cache_dir()
    cache = cache or load(dir)
    if cache is None:
        raise Unavailable("glibc 2.41 not fetched: run `make glibc`")
    if not _usable(cache):
        raise Unavailable(cache.reason or "the glibc cache is incomplete: run `make glibc`")
    if shutil.which("gcc") is None:
        raise Unavailable("gcc not found: cannot build the glibc client programs")
    out = out or dir / "bin"
    out.mkdir(parents=True, exist_ok=True)
    state_mtime = (dir / STATE_FILE).stat().st_mtime if (dir / STATE_FILE).exists() else 0
    built = {}
    with _locked(dir):
        for name, (src, static) in PROGRAMS.items():
            exe = out / name
            inputs = [HERE / src, *(HERE / h for h in HEADERS), Path(__file__)]
            newest = max([p.stat().st_mtime for p in inputs] + [state_mtime])
            if not exe.exists() or exe.stat().st_mtime < newest:
                fd, tmp = tempfile.mkstemp(prefix=name + ".", dir=out)
                os.close(fd)
                cmd = ["gcc", *compile_flags(cache, static), "-o", tmp, str(HERE / src)]
                p = _run(cmd)
                if p.returncode != 0:
                    os.unlink(tmp)
                    raise RuntimeError(f"{' '.join(cmd)}\n{p.stderr}")
                os.chmod(tmp, 0o755)
                os.replace(tmp, exe)
            built[name] = exe
    return built


def _describe(cache: Cache | None) -> dict:
    if cache is None:
        return {"status": "missing", "reason": "not fetched yet"}
    d = asdict(cache)
    if cache.ready:
        d["cflags_dynamic"] = compile_flags(cache)
        d["cflags_static"] = compile_flags(cache, static=True)
        d["bin"] = str(cache_dir() / "bin")
    return d


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("command", choices=("fetch", "build", "all", "env"))
    args = ap.parse_args(argv)
    if args.command == "env":
        print(json.dumps(_describe(load()), indent=2))
        return 0
    cache = fetch() if args.command in ("fetch", "all") else load()
    if args.command == "fetch" or (cache is not None and not cache.ready):
        if cache.ready:
            print(f"glibc {cache.version} ({cache.source}): {cache.ld_so}")
        else:
            print(f"glibc 2.41 unavailable, its tests will skip: {cache.reason}")
        return 0
    try:
        progs = build(cache)
    except Unavailable as e:
        print(f"glibc clients not built, their tests will skip: {e}")
        return 0
    print(f"glibc {cache.version} ({cache.source}) clients in {cache_dir() / 'bin'}: "
          + " ".join(sorted(progs)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
