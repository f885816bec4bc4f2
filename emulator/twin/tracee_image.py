"""The tracee program: a few dozen bytes of keystone-assembled x86-64 in a
minimal static ELF, so the process under test holds nothing but the call.

No libc, no dynamic loader: after execve the process is its text page, one
bss page set, its stack and the kernel's vDSO/vvar.  That keeps fork (the
twin's snapshot mechanism) cheap and makes every instruction the tracer sees
either ours or the vDSO's.

The program is a call server driven entirely by the tracer through registers:

  serve:      int3                  the tracer sets the arguments, rsp and
  call_site:  call [FN_SLOT]        rip = call_site, then resumes;
  after_call: int3                  rax holds the return value here
              jmp serve
  syscall_gadget: syscall; int3     injected syscalls (mmap, fork)
  load_gadget:    mov rax,[rdi]; int3   a load done by the tracee itself
                                    (the vvar page is not readable through
                                    process_vm_readv: VM_PFNMAP)
  nested_ret:     int3              return address of a re-entered call
  rep_probe:      rep stosb; ret    a rep string function (count checks)
  spin:           jmp spin          a call that never returns (time bound checks)
"""
from __future__ import annotations

import functools
import os
import struct
from dataclasses import dataclass

from vdso.asm_build import assemble_snippet

TEXT_BASE = 0x400000
CODE_OFFSET = 0x100            # code follows the ELF and program headers in the first page
DATA_BASE = 0x600000
DATA_SIZE = 0x40000            # bss: slots, the params, buffers (untouched pages cost nothing)
FN_SLOT = DATA_BASE            # u64: the function call_site calls
PARAMS = DATA_BASE + 0x100     # struct vgetrandom_opaque_params, written by the params query
BUFFERS = DATA_BASE + 0x1000   # the tracer carves call buffers from here

_SOURCE = f"""
serve:
    int3
call_site:
    call qword ptr [{FN_SLOT:#x}]
after_call:
    int3
    jmp serve
syscall_gadget:
    syscall
    int3
load_gadget:
    mov rax, qword ptr [rdi]
    int3
nested_ret:
    int3
rep_probe:
    mov rcx, rsi
    mov al, 0x5a
    rep stosb
    ret
spin:
    jmp spin
"""
_LABELS = ("serve", "call_site", "after_call", "syscall_gadget", "load_gadget", "nested_ret", "rep_probe", "spin")


@dataclass(frozen=True)
class TraceeImage:
    path: str                 # the executable: /proc/self/fd/N of a memfd (valid in this process and its forks)
    code: bytes
    labels: dict[str, int]    # label -> absolute address

    def __getattr__(self, name: str) -> int:      # image.call_site, image.after_call, ...
        try:
            return self.labels[name]
        except KeyError:
            raise AttributeError(name) from None


def _assemble(source: str, address: int) -> tuple[bytes, dict[str, int]]:
    # Through the project's one assembler entry (literals normalised: keystone's
    # radix is process-global state that another assembly may have left set).
    code = assemble_snippet(source, address, "<twin tracee>")
    labels = {}
    # Keystone reports no symbol table: find each label by assembling the source
    # up to it (labels are at line starts, so the prefix assembles alone).
    lines = source.strip("\n").splitlines()
    for name in _LABELS:
        idx = lines.index(f"{name}:")
        prefix = "\n".join(lines[:idx])
        labels[name] = address + (len(assemble_snippet(prefix, address, "<twin tracee>")) if prefix.strip() else 0)
    return code, labels


def _elf(code: bytes, entry: int) -> bytes:
    """ELF64 ET_EXEC: PT_LOAD text (R+X, the headers and the code), PT_LOAD bss
    (R+W, no file bytes) and PT_GNU_STACK (R+W: a non-executable stack)."""
    ehsize, phentsize, phnum = 64, 56, 3
    text_size = CODE_OFFSET + len(code)
    eh = struct.pack("<16sHHIQQQIHHHHHH",
                     b"\x7fELF\x02\x01\x01" + bytes(9),       # 64-bit, little endian, SysV
                     2, 0x3E, 1,                              # ET_EXEC, EM_X86_64, EV_CURRENT
                     entry, ehsize, 0, 0, ehsize, phentsize, phnum, 0, 0, 0)
    PF_X, PF_W, PF_R = 1, 2, 4
    ph = struct.pack("<IIQQQQQQ", 1, PF_R | PF_X, 0, TEXT_BASE, TEXT_BASE, text_size, text_size, 0x1000)
    ph += struct.pack("<IIQQQQQQ", 1, PF_R | PF_W, 0, DATA_BASE, DATA_BASE, 0, DATA_SIZE, 0x1000)
    ph += struct.pack("<IIQQQQQQ", 0x6474E551, PF_R | PF_W, 0, 0, 0, 0, 0, 16)
    head = eh + ph
    assert len(head) <= CODE_OFFSET
    return head + bytes(CODE_OFFSET - len(head)) + code


@functools.lru_cache(maxsize=1)
def build() -> TraceeImage:
    """Assemble the tracee into a memfd (nothing is left on disk; the fd is
    close-on-exec, which execve through /proc/self/fd allows for an ELF)."""
    code, labels = _assemble(_SOURCE, TEXT_BASE + CODE_OFFSET)
    raw = _elf(code, labels["serve"])
    fd = os.memfd_create("faultpath-twin-tracee")
    os.write(fd, raw)
    return TraceeImage(f"/proc/self/fd/{fd}", code, labels)
