"""OOM on non-droppable memory: a user write is an OOM kill, the kernel's
copy_to_user gets -EFAULT through the exception table."""
from __future__ import annotations

from snippets import mmap, snippet_machine


def test_user_write_to_plain_anon_under_oom_is_an_oom_kill():
    m = snippet_machine("mov qword ptr [rdi], 1\nret")
    buf = mmap(m, 4096)
    m.kernel.phys.fail_allocations(persistent=True)
    res = m.call(m.kernel.image.symbol("entry"), [buf])
    assert res.outcome == "killed"
    assert res.faults[-1].decision == "oom-kill"


def test_kernel_copy_into_plain_anon_under_oom_is_efault():
    src = """
        mov eax, 318
        mov esi, 32
        xor edx, edx
        syscall
        ret
    """
    m = snippet_machine(src)
    buf = mmap(m, 4096)
    m.kernel.phys.fail_allocations(persistent=True)
    res = m.call(m.kernel.image.symbol("entry"), [buf])
    assert res.outcome == "returned"
    assert res.ret == -14
    f = [f for f in res.faults if not f.user]
    assert f and f[0].decision == "efault"
    assert res.syscalls[0].ret == -14 and res.syscalls[0].data == b""


def test_kernel_copy_into_droppable_under_transient_oom_refaults_then_succeeds_with_skip():
    src = "mov eax, 318\nmov esi, 32\nxor edx, edx\nsyscall\nret"
    m = snippet_machine(src, policy="skip")
    buf = mmap(m, 4096, droppable=True)
    m.kernel.phys.fail_allocations(count=3)
    res = m.call(m.kernel.image.symbol("entry"), [buf])
    assert res.outcome == "returned" and res.ret == 32
    assert m.read(buf, 32) == res.syscalls[0].data
    kf = [f for f in res.faults if not f.user]
    assert kf[0].decision in ("retry", "retry-oom") and kf[0].repeats == 3


def test_kernel_copy_into_droppable_under_oom_is_efault_with_retry():
    """6.11+ clears VM_FAULT_OOM for user-mode faults only (measured on 6.18:
    tests/test_twin_compare.py): the kernel's copy takes the exception-table
    fixup after one failed allocation, as on any other VMA."""
    src = "mov eax, 318\nmov esi, 32\nxor edx, edx\nsyscall\nret"
    m = snippet_machine(src, policy="retry")
    buf = mmap(m, 4096, droppable=True)
    m.kernel.phys.fail_allocations(count=3)
    res = m.call(m.kernel.image.symbol("entry"), [buf])
    assert res.outcome == "returned" and res.ret == -14
    kf = [f for f in res.faults if not f.user]
    assert len(kf) == 1 and kf[0].decision == "efault"
    assert m.kernel.phys.stats.injected_failures == 1


def test_syscall_sets_rcx_and_r11_like_hardware():
    src = "mov eax, 39\nsyscall\nlea rdx, [rip]\nret"
    m = snippet_machine(src)
    res = m.call(m.kernel.image.symbol("entry"), [])
    assert res.ret == -38                      # getpid is not emulated here: -ENOSYS, recorded
    assert res.syscalls[0].name == "getpid"
    rip_after = res.syscalls[0].rip + 2
    assert m.reg("rcx") == rip_after
    assert m.reg("r11") & 0x2                  # RFLAGS bit 1 is always set
