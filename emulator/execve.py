"""Starting a program: a fresh emulated machine and its first process, as
execve(2) leaves it (fs/exec.c do_execveat_common -> bprm_execve ->
load_elf_binary -> start_thread).

boot() builds the Kernel (the vDSO image placed as the layout puts it),
the System with its console, and the first Process: the kernel's [vvar] and
[vdso] mappings, fds 0-2, the read policy, the program and its loader
mapped with the initial stack (emulator/binfmt_elf.py), and the registers
start_thread sets: rip at the loader's entry, rsp at argc, every other
general register zero, RFLAGS.IF, no FS base.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field

from unicorn import x86_const as X

from emulator.binfmt_elf import ExecError, load_elf_binary, program_search_dirs, read_elf
from emulator.cycles.profile import load_profile
from emulator.fdtable import Console as ConsoleFile
from emulator.kernel import Kernel
from emulator.layout import STACK_TOP, install_kernel_mappings, place_image
from emulator.process import Heap, Process
from emulator.records import DEFAULT_LIVELOCK
from emulator.sched import Console, System
from emulator.syscall_64 import PROCESS_SYSCALLS
from vdso.image import VdsoImage

DEFAULT_ENV = ("PATH=/usr/local/bin:/usr/bin:/bin",)
DEFAULT_EXEC_BUDGET = 2_000_000_000         # instructions per process
DEFAULT_EXEC_MEMORY = 65536                 # pages: 256 MiB of emulated RAM (libc's page cache included)
_ZERO_AT_START = ("RAX", "RBX", "RCX", "RDX", "RSI", "RDI", "RBP", "R8", "R9", "R10", "R11", "R12", "R13",
                  "R14", "R15")


@dataclass
class ExecConfig:
    """Everything a program run depends on: same config, same run."""
    image: VdsoImage
    program: str
    args: list[str] = field(default_factory=list)
    env: list[str] = field(default_factory=lambda: list(DEFAULT_ENV))
    seed: int = 0
    memory_pages: int = DEFAULT_EXEC_MEMORY
    droppable_oom: str = "skip"
    budget: int = DEFAULT_EXEC_BUDGET
    livelock_limit: int = DEFAULT_LIVELOCK
    allow_read: list[str] = field(default_factory=list)
    profile: str = "zen4"
    passthrough: bool = True            # the program's output goes to faultpath's stdout/stderr as it runs


def _fs(s: str) -> bytes:
    return os.fsencode(s)


def boot(cfg: ExecConfig) -> System:
    """A kernel, a System and the program's process, ready to run."""
    if not os.path.lexists(cfg.program):
        raise ExecError(f"{cfg.program}: no such file")
    if os.path.isdir(cfg.program):
        raise ExecError(f"{cfg.program}: is a directory")
    if not os.access(cfg.program, os.X_OK):
        raise ExecError(f"{cfg.program}: not executable (execve would fail with EACCES)")
    kernel = Kernel(place_image(cfg.image), memory_pages=cfg.memory_pages, seed=cfg.seed,
                    profile=load_profile(cfg.profile))
    system = System(kernel, Console(passthrough=cfg.passthrough))
    pid = system.alloc_pid()
    p = Process(kernel, system, PROCESS_SYSCALLS, pid=pid, name=f"{os.path.basename(cfg.program)}[{pid}]",
                droppable_oom=cfg.droppable_oom, livelock_limit=cfg.livelock_limit, budget=cfg.budget)
    install_kernel_mappings(p.mm, kernel)
    p.sync()
    for fd in (0, 1, 2):
        p.files.install(ConsoleFile(fd, system.console))
    _read_policy(p, cfg)
    p.exe = os.path.realpath(cfg.program)
    p.argv = [_fs(cfg.program)] + [_fs(a) for a in cfg.args]
    img = load_elf_binary(p, cfg.program, p.argv, [_fs(e) for e in cfg.env], _fs(cfg.program), STACK_TOP)
    p.image = img
    p.heap = Heap(img.start_brk, img.start_brk)
    start_thread(p, img.start, img.sp)
    system.add(p)
    return system


def start_thread(p: Process, rip: int, rsp: int) -> None:
    for r in _ZERO_AT_START:
        p.set_reg(r, 0)
    p.set_reg("FS_BASE", 0)
    p.set_reg("GS_BASE", 0)
    p.set_reg("RSP", rsp)
    p.uc.reg_write(X.UC_X86_REG_RFLAGS, 0x202)        # X86_EFLAGS_IF (bit 1 always reads 1)
    p.set_reg("RIP", rip)
    p.ctx.rip = rip


def _read_policy(p: Process, cfg: ExecConfig) -> None:
    """The program, its loader, the loader's directory (where a distribution
    keeps libc), the program's RUNPATH/RPATH, and --allow-read."""
    pol = p.read_policy
    pol.allow_file(cfg.program)
    elf = read_elf(cfg.program)
    if elf.interp is not None:
        pol.allow_file(elf.interp)
        pol.allow_dir(os.path.dirname(os.path.realpath(elf.interp)))
    for d in program_search_dirs(elf):
        pol.allow_dir(d)
    for d in cfg.allow_read:
        pol.allow_dir(d)
