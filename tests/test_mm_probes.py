"""mm against the running kernel: the same probe scripts run natively (the C
interpreter of tests/test_mm_probes_native.py, one process per probe) and through
mm's API (the interpreter below, one MM per probe), and every output line must
agree.

The probes cover what issue 14 found mm getting wrong (soft-dirty, mlock and
populate order under MCL_FUTURE, RLIMIT_MEMLOCK for the unprivileged, KSM advice,
MADV_POPULATE errnos, guard regions, mremap) plus the droppable basics and
file-backed mappings of test files written here (fsync'ed, so their page-cache
pages are clean and smaps' Clean/Dirty split does not depend on writeback).

    python tests/test_mm_probes.py          # the table: native vs mm, per line
    python tests/test_mm_probes.py --diff   # only the lines that differ
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from test_mm_probes_native import build_native, kernel_release, run_native  # noqa: E402

import mm as M  # noqa: E402

P = 4096
B = 0x100000000000                       # probes live at 16 TiB, far from anything else
FNR = 0x100000                           # MAP_FIXED_NOREPLACE: exact placement or -EEXIST
ANON = 0x22 | FNR                        # MAP_PRIVATE | MAP_ANONYMOUS
DROP = 0x28 | FNR                        # MAP_DROPPABLE | MAP_ANONYMOUS
PRIV = 0x02 | FNR                        # MAP_PRIVATE (file)
SHARED = 0x01 | FNR                      # MAP_SHARED (file)
LOCKED = 0x2000
GROWSDOWN = 0x0100
HUGETLB = 0x40000
NORESERVE = 0x4000
POPULATE = 0x8000


def h(n: int) -> str:
    return f"{n:#x}"


def b(off: int) -> str:
    return h(B + off)


# --- the probes -------------------------------------------------------------------------
# Each is a script for both interpreters (format: tests/test_mm_probes_native.py).

PROBES: dict[str, tuple[str, str]] = {}


def probe(name: str, mode: str, body: str) -> None:
    PROBES[name] = (mode, body)


probe("fresh_vmflags", "priv", f"""
map A {b(0)} {4*P} 3 {ANON}
vmflags A
map D {b(0x100000)} {4*P} 3 {DROP}
vmflags D
map N {b(0x200000)} {4*P} 0 {ANON}
vmflags N
map R {b(0x300000)} {4*P} 1 {ANON | NORESERVE}
vmflags R
map X {b(0x400000)} {4*P} 7 {ANON}
vmflags X
""")

for _flags, _tag in ((2, "future"), (6, "future_onfault")):
    probe(f"mcl_{_tag}", "priv", f"""
mlockall {_flags}
vmlck
map D {b(0)} {4*P} 3 {DROP}
smaps D Rss
smaps D Locked
vmflags D
vmlck
map A {b(0x100000)} {4*P} 3 {ANON}
smaps A Rss
smaps A Locked
vmflags A
vmlck
map R {b(0x200000)} {4*P} 1 {DROP}
smaps R Rss
vmflags R
map N {b(0x300000)} {4*P} 0 {DROP}
smaps N Rss
mlock D {P}
vmflags D
vmlck
fork
  map C {b(0x400000)} {4*P} 3 {DROP}
  smaps C Rss
  vmflags A
  vmlck
endfork
munlockall
vmlck
map E {b(0x500000)} {4*P} 3 {DROP}
smaps E Rss
""")

    probe(f"unpriv_{_tag}", f"unpriv {1 << 20}", f"""
mlockall {_flags}
map D {b(0)} {2 << 20} 3 {DROP}
map D {b(0x400000)} {512 << 10} 3 {DROP}
smaps D Rss
vmflags D
vmlck
map A {b(0x800000)} {4*P} 3 {ANON}
vmlck
map T {b(0xc00000)} {1 << 20} 3 {DROP}
map U {b(0xc00000)} {(1 << 20) - 4*P} 3 {DROP}
smaps U Rss
mlock D {P}
vmlck
map L {b(0x1000000)} {P} 3 {ANON | LOCKED}
vmlck
munlockall
map F {b(0x1400000)} {2 << 20} 3 {DROP}
smaps F Rss
""")

probe("unpriv_mlock", f"unpriv {64 << 10}", f"""
map L {b(0)} {8*P} 3 {ANON | LOCKED}
vmlck
map D {b(0x100000)} {32*P} 3 {DROP}
mlock D {32*P}
mlock D {P}
vmflags D
vmlck
mlock L {17*P}
mremap L L {8*P} {32*P} 0
mremap L L {8*P} {16*P} 0
vmlck
smaps L Rss
""")

probe("mlock_droppable", "priv", f"""
map D {b(0)} {4*P} 3 {DROP}
mlock2 D {4*P} 1
smaps D Rss
vmflags D
vmlck
map A {b(0x100000)} {4*P} 3 {ANON}
mlock2 A {4*P} 1
smaps A Rss
vmflags A
vmlck
munlock D {4*P}
munlock A {4*P}
vmlck
map E {b(0x200000)} {4*P} 3 {DROP}
mlock E {4*P}
smaps E Rss
smaps E Locked
munlock E {4*P}
""")

probe("ksm", "priv", f"""
map D {b(0)} {4*P} 3 {DROP}
madvise D {4*P} 12
vmflags D
madvise D {4*P} 13
vmflags D
map A {b(0x100000)} {4*P} 3 {ANON}
madvise A {P} 12
vmflags A
vma A
madvise A {P} 13
vmflags A
vma A
madvise A+{h(0x10000)} {P} 12
""")

probe("populate", "priv", f"""
map D {b(0)} {4*P} 1 {DROP}
madvise D {4*P} 23
madvise D {4*P} 22
smaps D Rss
map N {b(0x100000)} {4*P} 0 {DROP}
madvise N {4*P} 22
madvise N {4*P} 23
map A {b(0x200000)} {4*P} 1 {ANON}
madvise A {4*P} 23
map W {b(0x300000)} {4*P} 3 {DROP}
madvise W {4*P} 23
smaps W Rss
madvise W {4*P} 22
madvise W+{P} {4*P} 22
madvise {b(0x800000)} {P} 22
map X {b(0x400000)} {4*P} 3 {ANON}
madvise X {2*P} 22
smaps X Rss
madvise X {2*P} 23
smaps X Rss
map Y {b(0x500000)} {4*P} 3 {ANON}
madvise Y+{P} {4*P} 23
smaps Y Rss
""")

probe("guard_droppable", "priv", f"""
map D {b(0)} {4*P} 3 {DROP}
write D+{P} 7
madvise D+{P} {P} 102
read D+{P}
write D+{P} 1
vmflags D
vma D
smaps D Rss
read D
write D 5
read D
madvise D {4*P} 4
read D+{P}
read D
madvise D {4*P} 22
madvise D {P} 22
madvise D {4*P} 23
fork
  read D+{P}
endfork
madvise D+{P} {P} 103
read D+{P}
vmflags D
madvise D+1 {P} 102
madvise D {P} 19
madvise D {P} 17
""")

probe("guard_anon", "priv", f"""
map A {b(0)} {4*P} 3 {ANON}
write A+{P} 7
madvise A+{P} {P} 102
read A+{P}
fork
  read A+{P}
  madvise A+{P} {P} 103
  read A+{P}
endfork
read A+{P}
mprotect A+{P} {P} 1
read A+{P}
vma A+{P}
vmflags A+{P}
vmflags A
mprotect A+{P} {P} 3
vma A
mlock A {4*P}
vmflags A
smaps A Rss
smaps A Locked
madvise A {4*P} 102
madvise A {4*P} 103
read A+{P}
munlock A {4*P}
madvise A {4*P} 102
smaps A Rss
madvise A {4*P} 4
read A+{2*P}
madvise {b(0x800000)} {P} 102
map N {b(0x100000)} {P} 0 {ANON}
madvise N {P} 102
mprotect N {P} 3
read N
munmap A {4*P}
map A {b(0)} {4*P} 3 {ANON}
read A+{P}
vmflags A
""")

probe("guard_mremap", "priv", f"""
map D {b(0)} {4*P} 3 {DROP}
madvise D+{P} {P} 102
mremap D D {4*P} {4*P} 3 {b(0x500000)}
read D+{P}
vmflags D
mremap D D {4*P} {8*P} 0
read D+{P}
madvise D+{P} {P} 103
read D+{P}
vmflags D
""")

probe("mremap_droppable", "priv", f"""
map D {b(0)} {4*P} 3 {DROP}
write D 1
write D+{P} 2
mremap D D {4*P} {8*P} 0
vma D
vmflags D
read D
smaps D Rss
map K {b(0xc000)} {P} 1 {ANON}
mremap D D {8*P} {16*P} 0
mremap D D {8*P} {16*P} 1
read D
read D+{P}
vmflags D
smaps D Rss
read {b(0)}
mremap D D {16*P} {2*P} 0
vma D
mremap D D {2*P} {2*P} 3 {b(0x40000)}
read D+{P}
vmflags D
mremap D D {2*P} {2*P} 2 {b(0x80000)}
mremap D D {2*P} {2*P} 3 D+{P}
mremap D D+1 {P} {P} 0
mremap D D {P} {P} 8
mremap D D {P} 0 0
mremap D {b(0x800000)} {P} {2*P} 1
mremap D D {2*P} {P} 5
mremap D D {2*P} {2*P} 4
mremap D D {2*P} {2*P} 3 {b(0x7fff00000000 - B)}
mremap U D {2*P} {2*P} 7 {b(0x100000)}
read U+{P}
read D+{P}
smaps D Rss
smaps U Rss
vmflags U
vmflags D
""")

probe("mremap_anon", "priv", f"""
map A {b(0)} {4*P} 3 {ANON}
mprotect A+{2*P} {2*P} 1
mremap A A {4*P} {3*P} 0
vma A+{2*P}
mremap A A {3*P} {3*P} 3 {b(0x100000)}
vma A
vma A+{2*P}
mremap A A {3*P} {6*P} 1
mremap A A {3*P} {3*P} 1
mremap A A {64*P} {2*P} 0
vma A
vma A+{2*P}
mremap A A 0 {P} 1
map C {b(0x200000)} {P} 3 {ANON}
map C2 {b(0x202000)} {P} 3 {ANON}
write C 1
write C+{2*P} 2
mremap C C {3*P} {3*P} 3 {b(0x300000)}
read C
read C+{P}
read C+{2*P}
mremap C C+{P} {2*P} {2*P} 3 {b(0x400000)}
map L {b(0x500000)} {2*P} 3 {ANON | LOCKED}
vmlck
mremap L L {2*P} {4*P} 0
vmlck
smaps L Rss
smaps L Locked
mremap M L {4*P} {4*P} 7 {b(0x600000)}
vmlck
vmflags L
vmflags M
mremap M M {4*P} {8*P} 3 {b(0x700000)}
vmlck
smaps M Rss
map Q {b(0x900000)} {4*P} 3 {ANON}
write Q 7
mremap Q Q {2*P} {3*P} 0
mremap Q Q {2*P} {3*P} 1
read Q
vma {b(0x902000)}
read {b(0x900000)}
map N {b(0xa00000)} {P} 0 {ANON}
mremap N N {P} {2*P} 0
vma N
mremap N N {4*P} {P} 0
vma N
""")

probe("mremap_edges", "priv", f"""
mremap X {b(0x800000)} {P} {P} 0
map A {b(0)} {4*P} 3 {ANON}
mprotect A+{2*P} {2*P} 1
mremap A A {P} {P} 3 0x1000
mremap A A {4*P} {3*P} 3 {b(0x100000)}
vma {b(0x100000)}
read A
map B {b(0x200000)} {4*P} 3 {ANON}
mremap B B+{P} {P} {2*P} 3 {b(0x300000)}
read B+{P}
vma B
map C {b(0x400000)} {P} 3 {ANON}
map C2 {b(0x402000)} {P} 3 {ANON}
write C 1
map T {b(0x501000)} {P} 3 {ANON}
write T 9
mremap C C {3*P} {3*P} 7 {b(0x500000)}
read C
read C+{P}
read {b(0x400000)}
vma {b(0x402000)}
map E {b(0x600000)} {P} 3 {ANON}
map F {b(0x602000)} {P} 3 {ANON}
mremap E E {P} {2*P} 0
vma E
mremap E E {P+1} {P+5} 0
vma E
""")

probe("mmap_min_addr", f"unpriv {64 << 10}", f"""
map Z 0 {P} 3 {ANON}
map A {b(0)} {P} 3 {ANON}
mremap A A {P} {P} 3 0
mremap A A {P} {2*P} 3 0
read A
""")

probe("file_private", "priv", f"""
mapf A {b(0)} {3*P} 1 {PRIV} @F5000 0
read A
read A+4999
read A+5000
read A+{2*P - 1}
read A+{2*P}
write A 1
smaps A Rss
smaps A Anonymous
vma A
vmflags A
maps A
mprotect A {2*P} 3
vmflags A
write A 9
read A
read A+1
smaps A Rss
smaps A Anonymous
smaps A Private_Dirty
smaps A Private_Clean
madvise A {2*P} 4
read A
smaps A Anonymous
write A+{P} 4
fork
  read A+{P}
  write A+{P} 6
  read A+{P}
  read A+{P + 1}
  write A 7
  read A
endfork
read A+{P}
read A
madvise A {P} 8
madvise A {P} 18
madvise A+{P} {2*P} 22
madvise A {P} 102
read A
madvise A {P} 103
read A
""")

probe("file_mmap_rules", "priv", f"""
mapf W {b(0)} {2*P} 3 {PRIV} @F5000 0
vmflags W
write W 5
read W
read W+1
mapf S {b(0x100000)} {2*P} 1 {SHARED} @F5000 0
vma S
vmflags S
read S+4999
mprotect S {P} 3
mremap N S 0 {2*P} 1
read N+4999
vma N
maps N
mremap N2 S+{P} 0 {P} 3 {b(0xb00000)}
read N2
vma S
mremap N3 S 0 {P} 0
mapf T {b(0x200000)} {2*P} 3 {SHARED} @F5000 0
mapf V {b(0x200000)} {P} 1 {0x03 | 0x80000 | FNR} @F5000 0
mapf V {b(0x200000)} {P} 1 {0x03 | FNR} @F5000 0
vmflags V
mapf E {b(0x300000)} {P} 5 {PRIV} @FEXEC 0
vmflags E
maps E
read E
mapf O {b(0x400000)} {P} 1 {PRIV} @F5000 4097
mapf O {b(0x400000)} {P} 1 {PRIV} @F5000 {16*P}
read O
maps O
mapf D {b(0x500000)} {P} 3 {0x08 | FNR} @F5000 0
mapf G {b(0x600000)} {P} 3 {PRIV | GROWSDOWN} @F5000 0
mapf H {b(0x600000)} {P} 1 {PRIV | HUGETLB} @F5000 0
mapf P {b(0x700000)} {2*P} 1 {PRIV | POPULATE} @F8192 0
smaps P Rss
mapf Q {b(0x800000)} {2*P} 3 {PRIV | POPULATE} @F8192 0
smaps Q Rss
smaps Q Anonymous
map M {b(0x900000)} {4*P} 3 {ANON}
write M 1
mapf M2 {b(0x901000)} {2*P} 1 {0x02 | 0x10} @F8192 {P}
read {b(0x900000)}
read {b(0x901000)}
read {b(0x903000)}
vma {b(0x901000)}
maps {b(0x902000)}
mremap M2 M2 {2*P} {4*P} 1
read M2+{P}
read M2+{2*P}
maps M2+{P}
mapf Z {b(0xa00000)} 0 1 {PRIV} @F5000 0
""")

probe("droppable_basics", "priv", f"""
map D 0 {P} 3 {0x28}
map X {b(0)} {P} 3 {DROP | LOCKED}
map X {b(0)} {P} 3 {DROP | GROWSDOWN}
map X {b(0)} {P} 3 {0x2a | FNR}
map X {b(0)} {P} 3 {0x29 | FNR}
map X {b(0)} {P} 3 {0x08 | FNR}
map X {b(0)} {P} 3 {DROP | HUGETLB}
map X {b(0)} {P} 3 {DROP | POPULATE}
smaps X Rss
madvise D {P} 19
madvise D {P} 17
madvise D {P} 18
madvise D {P} 10
vmflags D
madvise D {P} 11
write D 5
fork
  read D
  write D 6
  read D
  vmflags D
endfork
read D
mprotect D {P} 1
write D 1
mprotect D {P} 3
madvise D {P} 4
read D
write D 9
madvise D {P} 21
read D
mlock D {P}
vmflags D
smaps D Locked
madvise D {P} 8
vmflags D
""")


# Files the file-mapping probes map (@NAME in a script): size, mode. Contents are
# never zero, so a zero byte read back is a zero-filled tail or a fresh page.
FILES = {"F5000": (5000, 0o644), "F8192": (8192, 0o644), "FEXEC": (4096, 0o755)}


def file_bytes(size: int) -> bytes:
    return bytes((i * 7 + 3) % 251 + 1 for i in range(size))


def make_files(directory: Path) -> dict[str, Path]:
    paths = {}
    for name, (size, mode) in FILES.items():
        p = directory / name
        with open(p, "wb") as f:
            f.write(file_bytes(size))
            f.flush()
            os.fsync(f.fileno())       # clean page cache: smaps' Clean/Dirty split is stable
        p.chmod(mode)
        paths[name] = p
    return paths


def script_text(names=None, files: dict[str, Path] | None = None) -> str:
    out = []
    for name, (mode, body) in PROBES.items():
        if names is not None and name not in names:
            continue
        if "@" in body and files is None:
            continue
        for fname, path in (files or {}).items():
            body = body.replace(f"@{fname}", str(path))
        out.append(f"probe {name} {mode}")
        out.extend(ln for ln in body.strip().splitlines())
        out.append("end")
    return "\n".join(out) + "\n"


# --- the mm interpreter -------------------------------------------------------------------

def _cfmt_hex(n: int) -> str:
    """C's %#lx: no 0x prefix for zero."""
    return "0" if n == 0 else f"{n:#x}"


def host_mmap_min_addr() -> int:
    """The host's vm.mmap_min_addr: the unprivileged probes run under it."""
    try:
        return int(Path("/proc/sys/vm/mmap_min_addr").read_text())
    except (OSError, ValueError):
        return M.MMAP_MIN_ADDR


class MMInterpreter:
    """Runs one probe script through mm's API, printing what the C interpreter prints."""

    def __init__(self, name: str, mode: str) -> None:
        self.name = name
        words = mode.split()
        phys = M.PhysMem(1 << 18, overcommit_memory=1)
        if words[0] == "unpriv":
            self.mm = M.MM(phys, rlimit_memlock=int(words[1]), cap_ipc_lock=False,
                           mmap_min_addr=host_mmap_min_addr())
        else:
            # root: CAP_IPC_LOCK, and CAP_SYS_RAWIO lifts vm.mmap_min_addr.
            self.mm = M.MM(phys, cap_ipc_lock=True, mmap_min_addr=0)
        self.regs: dict[str, int] = {}
        self.index = 0
        self.files: dict[str, object] = {}

    def eval(self, s: str) -> int:
        if s[0].isdigit():
            return int(s, 0)
        for sign in ("+", "-"):
            if sign in s:
                name, num = s.split(sign, 1)
                return self.regs[name] + (int(num, 0) if sign == "+" else -int(num, 0))
        return self.regs[s]

    # --- views -------------------------------------------------------------------
    @staticmethod
    def _smaps_block(mm, addr: int):
        """(start, end, perms, {field: value}) of the smaps block containing addr."""
        found = cur = None
        for ln in mm.smaps().splitlines():
            head = ln.split(" ", 1)[0]
            if "-" in head and ":" not in head:
                s, e = (int(x, 16) for x in head.split("-"))
                cur = (s, e, ln.split()[1], {}) if s <= addr < e else None
                if cur is not None:
                    cur[3]["_header_rest"] = " ".join(ln.split()[2:])
                found = found or cur
                continue
            if cur is not None:
                k, _, v = ln.partition(":")
                v = v.strip()
                if v.endswith(" kB"):
                    v = v[:-3].strip()
                cur[3][k] = v
        return found

    def touch(self, mm, addr: int, write: bool, val: int = 0) -> str:
        flags = M.FAULT_FLAG_USER | (M.FAULT_FLAG_WRITE if write else 0)
        for _ in range(8):
            vma = mm.find_vma(addr)
            if vma is None or mm.access_error(vma, flags):
                return "SIGSEGV"
            pte = mm.pte(addr)
            if pte is not None and pte.frame is not None and (pte.writable or not write):
                if write:
                    pte.frame.data[addr & (P - 1)] = val
                    return "ok"
                return f"ok:{pte.frame.data[addr & (P - 1)]}"
            res = mm.handle_mm_fault(vma, addr, flags)
            if res.bits & M.VM_FAULT_SIGSEGV:
                return "SIGSEGV"
            if res.bits & M.VM_FAULT_SIGBUS:
                return "SIGBUS"
            if res.bits & M.VM_FAULT_OOM:
                return "OOM"
        return "livelock"

    # --- execution -----------------------------------------------------------------
    def run(self, lines: list[str]) -> list[str]:
        out: list[str] = []
        self._run(self.mm, self.name, lines, out)
        return out

    def _run(self, mm, name: str, lines: list[str], out: list[str]) -> None:
        i = 0
        while i < len(lines):
            line = lines[i]
            if line == "fork":
                depth, j = 0, i + 1
                while j < len(lines):
                    if lines[j] == "fork":
                        depth += 1
                    elif lines[j] == "endfork":
                        if depth == 0:
                            break
                        depth -= 1
                    j += 1
                child = mm.dup_mm()
                idx = self.index
                self.index += 1
                if isinstance(child, int):
                    out.append(f"{name}.{idx} fork = {child}")
                else:
                    out.append(f"{name}.{idx} fork = ok")
                    saved_regs, saved_index = dict(self.regs), self.index
                    self._run(child, f"{name}/c", lines[i + 1:j], out)
                    self.regs, self.index = saved_regs, saved_index
                    child.exit_mmap()
                i = j + 1
                continue
            idx = self.index
            self.index += 1
            try:
                res = self.op(mm, line.split())
            except KeyError:                       # a register never bound
                res = "noreg"
            except AttributeError as e:            # an mm without this operation
                res = f"unsupported({e.name})"
            out.append(f"{name}.{idx} {line} = {res}")
            i += 1

    def _addr_result(self, reg: str, r: int, want: int) -> str:
        if r < 0:
            return str(r)
        self.regs[reg] = r
        return "ok" if r == want else "ok@other"

    def op(self, mm, t: list[str]) -> str:
        e = self.eval
        k = t[0]
        if k == "map":
            want = e(t[2])
            return self._addr_result(t[1], mm.mmap(want, e(t[3]), e(t[4]), e(t[5])), want)
        if k == "mapf":
            want = e(t[2])
            f = M.HostFile.open(t[6])
            return self._addr_result(t[1], mm.mmap(want, e(t[3]), e(t[4]), e(t[5]), 3, e(t[7]), file=f),
                                     want)
        if k == "munmap":
            return str(mm.munmap(e(t[1]), e(t[2])))
        if k == "mprotect":
            return str(mm.mprotect(e(t[1]), e(t[2]), e(t[3])))
        if k == "madvise":
            return str(mm.madvise(e(t[1]), e(t[2]), e(t[3])))
        if k == "mremap":
            old, fl = e(t[2]), e(t[5])
            na = e(t[6]) if len(t) == 7 else 0
            r = mm.mremap(old, e(t[3]), e(t[4]), fl, na)
            return self._addr_result(t[1], r, na if fl & M.MREMAP_FIXED else old)
        if k == "mlock":
            return str(mm.mlock(e(t[1]), e(t[2])))
        if k == "munlock":
            return str(mm.munlock(e(t[1]), e(t[2])))
        if k == "mlock2":
            return str(mm.mlock2(e(t[1]), e(t[2]), e(t[3])))
        if k == "mlockall":
            return str(mm.mlockall(e(t[1])))
        if k == "munlockall":
            return str(mm.munlockall())
        if k == "read":
            return self.touch(mm, e(t[1]), False)
        if k == "write":
            return self.touch(mm, e(t[1]), True, e(t[2]))
        if k in ("smaps", "vmflags", "vma", "maps"):
            a = e(t[1])
            blk = self._smaps_block(mm, a)
            if blk is None:
                return "novma"
            s, end, perms, fields = blk
            if k == "smaps":
                return fields.get(t[2], "nofield")
            if k == "vmflags":
                return fields.get("VmFlags", "nofield")
            if k == "maps":
                return fields["_header_rest"]
            return f"-{_cfmt_hex(a - s)} +{_cfmt_hex(end - a)} {perms}"
        if k == "vmlck":
            return str(mm.locked_vm * (P // 1024))
        return "bad-op"


def run_mm(script: str) -> list[str]:
    out: list[str] = []
    lines = [ln.split("#", 1)[0].strip() for ln in script.splitlines()]
    lines = [ln for ln in lines if ln]
    i = 0
    while i < len(lines):
        if lines[i].startswith("probe "):
            _, name, mode = lines[i].split(" ", 2)
            j = lines.index("end", i)
            out.extend(MMInterpreter(name, mode).run(lines[i + 1:j]))
            i = j
        i += 1
    return out


def compare(native: list[str], emulated: list[str]) -> list[tuple[str, str | None, str | None]]:
    """(line key, native result, mm result) for every line, in native order."""
    def split(lines):
        d = {}
        for ln in lines:
            key, _, res = ln.partition(" = ")
            d[key] = res
        return d
    n, m = split(native), split(emulated)
    keys = list(n) + [k for k in m if k not in n]
    return [(k, n.get(k), m.get(k)) for k in keys]


# --- the test -------------------------------------------------------------------------------

def _needs_host():
    if sys.platform != "linux":
        pytest.skip("the probes compare against a running Linux kernel")
    if kernel_release() < (6, 18):
        pytest.skip(f"the probes record Linux 6.18 semantics (guard regions, VM_MAYBE_GUARD, "
                    f"multi-VMA mremap); this kernel is {os.uname().release}")


@pytest.fixture(scope="module")
def probe_files(tmp_path_factory):
    return make_files(tmp_path_factory.mktemp("mm_probe_files"))


@pytest.fixture(scope="module")
def native_lines(tmp_path_factory, probe_files):
    _needs_host()
    exe = build_native(tmp_path_factory.mktemp("mm_probe"))
    return run_native(exe, script_text(files=probe_files))


@pytest.mark.parametrize("name", list(PROBES))
def test_probe_matches_kernel(name, native_lines, probe_files):
    mode = PROBES[name][0]
    if mode == "priv" and os.geteuid() != 0:
        pytest.skip("privileged probes need root (CAP_IPC_LOCK) on the host")
    native = [ln for ln in native_lines if ln.split(".", 1)[0].split("/", 1)[0] == name]
    assert native, f"the native interpreter printed nothing for {name}"
    emulated = run_mm(script_text({name}, files=probe_files))
    diff = [(k, a, b) for k, a, b in compare(native, emulated) if a != b]
    assert not diff, "\n".join(f"{k}: kernel {a!r}, mm {b!r}" for k, a, b in diff)


def main(argv: list[str]) -> int:
    import tempfile
    with tempfile.TemporaryDirectory() as d:
        try:
            exe = build_native(Path(d))
        except pytest.skip.Exception as e:
            print(e)
            return 1
        files = make_files(Path(d))
        native = run_native(exe, script_text(files=files))
        rows = compare(native, run_mm(script_text(files=files)))
    same = sum(a == b for _, a, b in rows)
    for k, a, b in rows:
        if "--diff" in argv and a == b:
            continue
        mark = "  " if a == b else "!="
        print(f"{mark} {k:<60} kernel={a!s:<28} mm={b}")
    print(f"{len(rows)} probe lines, {same} equal, {len(rows) - same} different "
          f"(kernel {os.uname().release})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
