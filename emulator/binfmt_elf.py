"""Loading an ELF program into an emulated process (fs/binfmt_elf.c, fs/exec.c).

load_elf_binary() does what the kernel does for execve of an x86-64 ELF:
read the ELF header and program headers, map every PT_LOAD segment of the
program (and of its PT_INTERP loader) as private file mappings through mm,
clear the tail of a segment's last file page and map anonymous memory for
the rest of its bss, place the stack, set the break after the program's
last segment, and build the initial stack with create_elf_tables(): the
argument and environment strings, the platform string, AT_RANDOM's 16
bytes, then argc, argv[], envp[] and the auxiliary vector.

Addresses are those of a process with address-space randomisation off
(`setarch -R`): a position-independent program at ELF_ET_DYN_BASE, its
loader where mm's top-down get_unmapped_area puts it (below the vDSO),
the stack ending at the process's stack top.  AT_RANDOM comes from the
emulated kernel's seeded entropy, so the same seed gives the same stack
guard and pointer guard.
"""
from __future__ import annotations

import os
import struct
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from emulator.errors import FaultpathError
from emulator.usercopy import access_user
from mm import flags as F
from mm.file import HostFile
from mm.flags import PAGE_MASK, PAGE_SIZE
from vdso.elf_structs import EM_X86_64, ET_DYN, PF_R, PF_W, PF_X, PT_LOAD, Elf64_Ehdr, Elf64_Phdr

if TYPE_CHECKING:
    from emulator.process import Process

ET_EXEC = 2
PT_INTERP = 3
PT_GNU_STACK = 0x6474E551
BINPRM_BUF_SIZE = 256
MAX_PHNUM = 65536 // Elf64_Phdr.size            # the kernel reads at most 64 KiB of program headers
# x86-64: 2/3 of the 47-bit user address space (DEFAULT_MAP_WINDOW / 3 * 2).
ELF_ET_DYN_BASE = ((1 << 47) - PAGE_SIZE) // 3 * 2
STACK_SIZE = 8 << 20             # RLIMIT_STACK's usual soft limit: the stack VMA's extent here
MAX_ARG_STRLEN = 32 * PAGE_SIZE
ELF_PLATFORM = b"x86_64"

# auxv entry types (uapi linux/auxvec.h, asm/auxvec.h)
AT_NULL, AT_PHDR, AT_PHENT, AT_PHNUM, AT_PAGESZ, AT_BASE, AT_FLAGS, AT_ENTRY = 0, 3, 4, 5, 6, 7, 8, 9
AT_UID, AT_EUID, AT_GID, AT_EGID, AT_PLATFORM, AT_HWCAP, AT_CLKTCK = 11, 12, 13, 14, 15, 16, 17
AT_SECURE, AT_RANDOM, AT_HWCAP2, AT_RSEQ_FEATURE_SIZE, AT_RSEQ_ALIGN = 23, 25, 26, 27, 28
AT_EXECFN, AT_SYSINFO_EHDR, AT_MINSIGSTKSZ = 31, 33, 51
AT_NAMES = {AT_PHDR: "AT_PHDR", AT_PHENT: "AT_PHENT", AT_PHNUM: "AT_PHNUM", AT_PAGESZ: "AT_PAGESZ",
            AT_BASE: "AT_BASE", AT_FLAGS: "AT_FLAGS", AT_ENTRY: "AT_ENTRY", AT_UID: "AT_UID", AT_EUID: "AT_EUID",
            AT_GID: "AT_GID", AT_EGID: "AT_EGID", AT_PLATFORM: "AT_PLATFORM", AT_HWCAP: "AT_HWCAP",
            AT_CLKTCK: "AT_CLKTCK", AT_SECURE: "AT_SECURE", AT_RANDOM: "AT_RANDOM", AT_HWCAP2: "AT_HWCAP2",
            AT_RSEQ_FEATURE_SIZE: "AT_RSEQ_FEATURE_SIZE", AT_RSEQ_ALIGN: "AT_RSEQ_ALIGN",
            AT_EXECFN: "AT_EXECFN", AT_SYSINFO_EHDR: "AT_SYSINFO_EHDR", AT_MINSIGSTKSZ: "AT_MINSIGSTKSZ"}
USER_HZ = 100
# struct rseq's size up to mm_cid (6.3+), and its alignment.
RSEQ_FEATURE_SIZE = 28
RSEQ_ALIGN = 32


class ExecError(FaultpathError):
    """The program cannot be executed (not an x86-64 ELF, missing loader...):
    what execve would have answered with an errno."""


@dataclass(frozen=True)
class Phdr:
    type: int
    flags: int
    offset: int
    vaddr: int
    filesz: int
    memsz: int
    align: int

    @property
    def prot(self) -> int:
        """make_prot(): PF_R/W/X -> PROT_READ/WRITE/EXEC."""
        return ((F.PROT_READ if self.flags & PF_R else 0) | (F.PROT_WRITE if self.flags & PF_W else 0)
                | (F.PROT_EXEC if self.flags & PF_X else 0))


@dataclass
class ElfFile:
    """What load_elf_binary reads of a file: its header and program headers."""
    path: str
    type: int
    entry: int
    phoff: int
    phnum: int
    phdrs: list[Phdr]
    interp: str | None = None
    file: HostFile | None = field(default=None, repr=False)

    @property
    def loads(self) -> list[Phdr]:
        return [p for p in self.phdrs if p.type == PT_LOAD]

    def total_mapping_size(self) -> int:
        """The span from the first PT_LOAD's page to the last one's end."""
        loads = self.loads
        first, last = loads[0], loads[-1]
        return last.vaddr + last.memsz - (first.vaddr & PAGE_MASK)

    def max_align(self) -> int:
        a = max((p.align for p in self.loads), default=PAGE_SIZE)
        return a if a & (a - 1) == 0 and a >= PAGE_SIZE else PAGE_SIZE


def read_elf(path: str, what: str = "program") -> ElfFile:
    """Open and check an x86-64 ELF executable or shared object (the checks
    of load_elf_binary / load_elf_interp); ExecError otherwise."""
    try:
        hf = HostFile.open(os.path.realpath(path))      # mappings name the file as d_path does
    except OSError as e:
        raise ExecError(f"{what} {path}: {e.strerror or e}") from None
    head = hf.read(0, max(BINPRM_BUF_SIZE, Elf64_Ehdr.size))
    if len(head) < Elf64_Ehdr.size or head[:4] != b"\x7fELF":
        raise ExecError(f"{what} {path}: not an ELF file (execve would fail with ENOEXEC)")
    (ident, e_type, e_machine, _ver, entry, phoff, _shoff, _fl, _ehsize, phentsize, phnum, *_rest) = \
        struct.unpack(Elf64_Ehdr.fmt, head[:Elf64_Ehdr.size])
    if ident[4] != 2 or ident[5] != 1:
        raise ExecError(f"{what} {path}: not a 64-bit little-endian ELF file")
    if e_machine != EM_X86_64:
        raise ExecError(f"{what} {path}: machine {e_machine}, not x86-64")
    if e_type not in (ET_EXEC, ET_DYN):
        raise ExecError(f"{what} {path}: ELF type {e_type} is neither an executable nor a shared object")
    if phentsize != Elf64_Phdr.size or not 1 <= phnum <= MAX_PHNUM:
        raise ExecError(f"{what} {path}: bad program header table ({phnum} x {phentsize} bytes)")
    raw = hf.read(phoff, phnum * phentsize)
    if len(raw) != phnum * phentsize:
        raise ExecError(f"{what} {path}: program headers past the end of the file")
    phdrs = []
    for i in range(phnum):
        typ, flags, off, vaddr, _paddr, filesz, memsz, align = struct.unpack_from(Elf64_Phdr.fmt, raw, i * phentsize)
        phdrs.append(Phdr(typ, flags, off, vaddr, filesz, memsz, align))
    elf = ElfFile(path, e_type, entry, phoff, phnum, phdrs, file=hf)
    if not elf.loads:
        raise ExecError(f"{what} {path}: no PT_LOAD segment")
    for p in phdrs:
        if p.type == PT_LOAD and p.filesz > p.memsz:
            raise ExecError(f"{what} {path}: a PT_LOAD segment with p_filesz > p_memsz")
        if p.type == PT_INTERP:
            name = hf.read(p.offset, p.filesz)
            if not name.endswith(b"\0") or len(name) < 2 or p.filesz > 4096:
                raise ExecError(f"{what} {path}: malformed PT_INTERP")
            elf.interp = name[:-1].decode("utf-8", "replace")
    return elf


@dataclass
class ExecImage:
    """Where exec left things: what start_thread and the auxiliary vector say."""
    program: ElfFile
    interp: ElfFile | None
    load_bias: int
    interp_base: int
    entry: int              # the program's AT_ENTRY
    start: int              # where the CPU starts: the loader's entry, or the program's
    phdr_addr: int
    start_brk: int
    stack_top: int
    sp: int = 0
    auxv: list[tuple[int, int]] = field(default_factory=list)
    execfn: int = 0
    random_bytes: bytes = b""


def _elf_map(p: "Process", elf: ElfFile, addr: int, ph: Phdr, prot: int, flags: int, total: int) -> int:
    """elf_map(): the segment's file pages (with the whole image's span
    reserved by the first mapping, the rest unmapped again)."""
    size = ph.filesz + (ph.vaddr & ~PAGE_MASK)
    off = ph.offset - (ph.vaddr & ~PAGE_MASK)
    addr &= PAGE_MASK
    size = F.page_align(size)
    if not size:
        return addr
    if total:
        total = F.page_align(total)
        r = p.mm.mmap(addr, total, prot, flags, -1, off, file=elf.file)
        if r >= 0 and total > size:
            p.mm.munmap(r + size, total - size)
    else:
        r = p.mm.mmap(addr, size, prot, flags, -1, off, file=elf.file)
    return r


def _elf_load(p: "Process", elf: ElfFile, addr: int, ph: Phdr, flags: int, total: int) -> int:
    """elf_load(): map the segment; for its bss, zero the rest of the last
    file page (padzero: a kernel write, so a copy-on-write of that page)
    and map anonymous memory for the pages beyond."""
    prot = ph.prot
    if ph.filesz:
        map_addr = _elf_map(p, elf, addr, ph, prot, flags, total)
        if map_addr < 0:
            return map_addr
        zero_start = map_addr + (ph.vaddr & ~PAGE_MASK) + ph.filesz
        zero_end = map_addr + (ph.vaddr & ~PAGE_MASK) + ph.memsz
        if ph.memsz > ph.filesz and zero_start & ~PAGE_MASK:
            p.sync()
            n = PAGE_SIZE - (zero_start & ~PAGE_MASK)
            # Errors are ignored for a segment that is not writable.
            if access_user(p, zero_start, bytes(n)) != n and prot & F.PROT_WRITE:
                return -F.EFAULT
    else:
        map_addr = zero_start = addr & PAGE_MASK
        zero_end = zero_start + (ph.vaddr & ~PAGE_MASK) + ph.memsz
    if ph.memsz > ph.filesz:
        lo, hi = F.page_align(zero_start), F.page_align(zero_end)
        if hi > lo:
            # vm_brk_flags(): anonymous data pages (read-write; executable
            # when the segment is).
            r = p.mm.mmap(lo, hi - lo, F.PROT_READ | F.PROT_WRITE | (prot & F.PROT_EXEC),
                          F.MAP_PRIVATE | F.MAP_ANONYMOUS | F.MAP_FIXED, -1, 0)
            if r < 0:
                return r
    return map_addr


def _load_segments(p: "Process", elf: ElfFile, bias: int, first_flags: int) -> tuple[int, int]:
    """Map every PT_LOAD of elf at bias (bias is where the first segment's
    page lands minus its vaddr; a first mapping without MAP_FIXED lets mm
    choose).  Returns (the final bias, the end of the last segment)."""
    total = elf.total_mapping_size()
    first = True
    end = 0
    for ph in elf.loads:
        flags = F.MAP_PRIVATE | (first_flags if first else F.MAP_FIXED)
        r = _elf_load(p, elf, bias + ph.vaddr, ph, flags, total if first else 0)
        if r < 0:
            raise ExecError(f"{elf.path}: mapping a segment at {bias + ph.vaddr:#x} failed with errno {-r}")
        if first:
            bias = r - (ph.vaddr & PAGE_MASK)
            first = False
        end = max(end, bias + ph.vaddr + ph.memsz)
    p.sync()
    return bias, end


def load_elf_binary(p: "Process", path: str, argv: list[bytes], envp: list[bytes], execfn: bytes,
                    stack_top: int) -> ExecImage:
    """execve(path, argv, envp) into p's fresh mm (which already holds the
    kernel's [vvar]/[vdso] mappings)."""
    prog = read_elf(path)
    interp = None
    if prog.interp is not None:
        interp = read_elf(prog.interp, "ELF interpreter")
        if interp.interp is not None:
            raise ExecError(f"ELF interpreter {prog.interp} itself names an interpreter")
    # setup_arg_pages(): the stack VMA below stack_top.
    r = p.mm.mmap(stack_top - STACK_SIZE, STACK_SIZE, F.PROT_READ | F.PROT_WRITE,
                  F.MAP_PRIVATE | F.MAP_ANONYMOUS | F.MAP_FIXED | F.MAP_GROWSDOWN, -1, 0)
    if r < 0:
        raise ExecError(f"cannot map the stack: errno {-r}")
    if prog.type == ET_EXEC:
        bias, first_flags = 0, F.MAP_FIXED_NOREPLACE
    elif interp is not None:
        # A PIE with a loader goes at ELF_ET_DYN_BASE (aligned to its largest
        # segment alignment), minus its first vaddr.
        base = ELF_ET_DYN_BASE & ~(prog.max_align() - 1)
        bias, first_flags = (base - prog.loads[0].vaddr) & PAGE_MASK, F.MAP_FIXED_NOREPLACE
    else:
        # A static PIE or a loader run directly: mm picks the place.
        bias, first_flags = -(prog.loads[0].vaddr & PAGE_MASK), 0
    bias, end = _load_segments(p, prog, bias, first_flags)
    phdr_addr = 0
    for ph in prog.loads:
        if ph.offset <= prog.phoff < ph.offset + ph.filesz:
            phdr_addr = prog.phoff - ph.offset + ph.vaddr + bias
            break
    entry = prog.entry + bias
    interp_base = 0
    start = entry
    if interp is not None:
        # load_elf_interp(): a position-independent loader goes where
        # get_unmapped_area puts its whole span (top-down, below the vDSO).
        if interp.type == ET_EXEC:
            interp_base, _ = _load_segments(p, interp, 0, F.MAP_FIXED)
        else:
            interp_base, _ = _load_segments(p, interp, -(interp.loads[0].vaddr & PAGE_MASK), 0)
        start = interp_base + interp.entry
    start_brk = F.page_align(end)
    img = ExecImage(prog, interp, bias, interp_base, entry, start, phdr_addr, start_brk, stack_top)
    create_elf_tables(p, img, argv, envp, execfn)
    return img


def _push(p: "Process", sp: int, data: bytes) -> int:
    sp -= len(data)
    if access_user(p, sp, data, user=False) != len(data):
        raise ExecError(f"cannot write the initial stack at {sp:#x}")
    return sp


def create_elf_tables(p: "Process", img: ExecImage, argv: list[bytes], envp: list[bytes],
                      execfn: bytes) -> None:
    """The initial stack, from the top down, as exec lays it out:
    a null word; the file name (AT_EXECFN); the environment strings; the
    argument strings; (16-byte alignment) the platform string; AT_RANDOM's
    16 bytes; then, 16-byte aligned, argc, argv[], NULL, envp[], NULL and
    the auxiliary vector ending with AT_NULL."""
    for s in argv + envp:
        if len(s) + 1 > MAX_ARG_STRLEN:
            raise ExecError("an argument or environment string is longer than MAX_ARG_STRLEN")
    sp = img.stack_top - 8                              # bprm->p: a null word at the very top
    sp = _push(p, sp, execfn + b"\0")
    img.execfn = sp
    env_ptrs = []
    for s in reversed(envp):
        sp = _push(p, sp, s + b"\0")
        env_ptrs.append(sp)
    env_ptrs.reverse()
    arg_ptrs = []
    for s in reversed(argv):
        sp = _push(p, sp, s + b"\0")
        arg_ptrs.append(sp)
    arg_ptrs.reverse()
    p.arg_start, p.arg_end = (arg_ptrs[0] if arg_ptrs else sp), (env_ptrs[0] if env_ptrs else img.execfn)
    sp &= ~0xF                                          # arch_align_stack (no randomisation)
    sp = _push(p, sp, ELF_PLATFORM + b"\0")
    u_platform = sp
    img.random_bytes = p.kernel.entropy_bytes(16)
    sp = _push(p, sp, img.random_bytes)
    u_rand = sp
    model = p.cpu_model
    k = p.kernel
    auxv = [
        (AT_SYSINFO_EHDR, k.image.base),
        (AT_MINSIGSTKSZ, p.minsigstksz()),
        (AT_HWCAP, model.hwcap),
        (AT_PAGESZ, PAGE_SIZE),
        (AT_CLKTCK, USER_HZ),
        (AT_PHDR, img.phdr_addr),
        (AT_PHENT, Elf64_Phdr.size),
        (AT_PHNUM, img.program.phnum),
        (AT_BASE, img.interp_base),
        (AT_FLAGS, 0),
        (AT_ENTRY, img.entry),
        (AT_UID, p.cred.uid), (AT_EUID, p.cred.uid), (AT_GID, p.cred.gid), (AT_EGID, p.cred.gid),
        (AT_SECURE, 0),
        (AT_RANDOM, u_rand),
        (AT_HWCAP2, 0),                 # no FSGSBASE for user code (emulator/cpuid.py)
        (AT_EXECFN, img.execfn),
        (AT_PLATFORM, u_platform),
        (AT_RSEQ_FEATURE_SIZE, RSEQ_FEATURE_SIZE),
        (AT_RSEQ_ALIGN, RSEQ_ALIGN),
        (AT_NULL, 0),
    ]
    img.auxv = auxv
    items = (len(argv) + 1) + (len(envp) + 1) + 1
    sp -= 16 * len(auxv)                                # STACK_ADD(p, ei_index)
    sp = (sp - items * 8) & ~0xF                        # STACK_ROUND
    words = [len(argv), *arg_ptrs, 0, *env_ptrs, 0]
    table = struct.pack(f"<{len(words)}Q", *words) + b"".join(struct.pack("<QQ", a, v) for a, v in auxv)
    if access_user(p, sp, table, user=False) != len(table):
        raise ExecError(f"cannot write the initial stack at {sp:#x}")
    img.sp = sp


def program_search_dirs(elf: ElfFile) -> list[str]:
    """Directories the program's loader will look for libraries in, as far as
    the program says: DT_RUNPATH and DT_RPATH ($ORIGIN expanded).  For the
    read policy (emulator/vfs.py)."""
    from elftools.elf.elffile import ELFFile
    out: list[str] = []
    try:
        with open(elf.path, "rb") as f:
            dyn = ELFFile(f).get_section_by_name(".dynamic")
            if dyn is None:
                return out
            for tag in dyn.iter_tags():
                if tag.entry.d_tag in ("DT_RUNPATH", "DT_RPATH"):
                    val = tag.runpath if tag.entry.d_tag == "DT_RUNPATH" else tag.rpath
                    for d in val.split(":"):
                        d = d.replace("$ORIGIN", os.path.dirname(os.path.abspath(elf.path)))
                        if d:
                            out.append(d)
    except Exception:               # a malformed dynamic section: the loader will say so itself
        return out
    return out
