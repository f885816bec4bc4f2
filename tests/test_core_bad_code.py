"""Code a corrupt image may contain must end in an outcome, never a traceback
(issue 15): found by flipping bytes of __vdso_getrandom; reduced to two
hand-written images."""
from __future__ import annotations

import json

import pytest

PARAMS = """\
.globl __vdso_getrandom
__vdso_getrandom:
    cmp     r8, -1                      # the params query (opaque_len == ~0)
    jne     .Lcall
    mov     dword ptr [rcx], 144        # size_of_opaque_state
    mov     dword ptr [rcx + 4], 3      # mmap_prot
    mov     dword ptr [rcx + 8], 0x28   # mmap_flags
    xor     eax, eax
    ret
.Lcall:
"""


def _run(tmp_path, body: str, capsys) -> dict:
    from emulator.cli.main import main
    src = tmp_path / "img.s"
    src.write_text(PARAMS + body)
    rc = main(["run", "--image", str(src), "--size", "16", "--calls", "1", "--json"])
    out, err = capsys.readouterr()
    assert rc == 0 and "Traceback" not in err, err
    return json.loads(out)["calls"][0]


def test_a_store_through_a_sib_byte_without_index(tmp_path, capsys):
    # 48 89 04 27: mov qword ptr [rdi + riz], rax -- a store into the not yet present buffer
    call = _run(tmp_path, "    .byte 0x48, 0x89, 0x04, 0x27\n    mov rax, rsi\n    ret\n", capsys)
    assert call["outcome"] == "returned" and call["ret"] == 16


def test_the_getrandom_syscall_with_a_huge_count(tmp_path, capsys):
    call = _run(tmp_path, "    mov eax, 318\n    movabs rsi, 0x7fffffffffffffff\n    xor edx, edx\n"
                          "    syscall\n    ret\n", capsys)
    assert call["outcome"] == "returned" and call["ret"] > 0
