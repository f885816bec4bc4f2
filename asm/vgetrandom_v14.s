# faultpath: vDSO getrandom, v14 ABI (the VM_DROPPABLE series, before 6.11).
#
#   ssize_t __vdso_getrandom(void *buffer,        rdi
#                            size_t len,          rsi
#                            unsigned int flags,  edx
#                            void *state);        rcx
#
# States come from vgetrandom_alloc (syscall 451) and have the 144-byte layout
# of the 6.11 ABI, so this entry supplies the missing fifth argument and runs
# the shared body in vgetrandom.s (assembled after this file; there the 6.11
# entry label is skipped because this one already defines __vdso_getrandom).
# With opaque_len = 144 the params query can never match, as v14 had none.

.type   __vdso_getrandom, @function
__vdso_getrandom:
    mov     r8d, 0x90                       # opaque_len = sizeof(struct vgetrandom_state)
    jmp     __vgetrandom_opaque
.size   __vdso_getrandom, .-__vdso_getrandom
