"""faultpath's CPU side.  The top of this package is the arch core, named
after the kernel code each module stands for; the tools sit in subpackages
and import the core, never the other way round (docs/architecture.md).

The CPU and the run loop
  task.py, machine.py   a Unicorn CPU with its mm and trace; a Task that runs calls
  cpu.py, cpuid.py      the CPU as Linux leaves it for a user task (CPL 3), CPUID
  entry.py              the run loop: each stop becomes what the kernel does
  blockhook.py          the native block hook: instruction budget, first sight
  instrument.py         what a block needs before it first runs (fix-ups, refusals)
  fixups.py, simd_fp.py what Unicorn 2.1.4 computes wrong, put right
  mmu.py                Unicorn's mappings kept equal to mm's page tables

Faults, traps, user copies (arch/x86/mm, arch/x86/kernel)
  fault.py              do_user_addr_fault() for user and kernel mode
  insn_fetch.py, insn_length.py   the skip design's fetch and length
  traps.py, umip.py     exceptions and the signals and si_codes Linux delivers
  usercopy.py           copy_to_user / copy_from_user

The emulated kernel
  kernel.py             shared state of a parent and its forked children
  syscalls.py, syscall_abi.py, syscall_names.py, syscall_64.py   the syscall layer
  sys_getrandom.py, sys_mm.py, sys_files.py, sys_process.py, sys_signal.py, sys_time.py
  signal.py, sigframe.py   delivery on the user stack, the rt_sigframe layout
  process.py, sched.py, execve.py, binfmt_elf.py, fdtable.py, vfs.py   a whole program

Calls, events, records
  libc.py               a caller that behaves like glibc's vgetrandom
  inject.py             events at instruction N of a call
  layout.py             where the vDSO, vvar and other kernel mappings go
  records.py, trace.py  what happened, stage by stage
  run.py, scenarios.py  `faultpath run`
  options.py, outputs.py, errors.py   option values, files written whole, the errors

Subpackages: cycles (the cycle model), calibrate, debug (stepper, GDB stub),
sweep, compare, skipcheck, diffcheck, exec, twin, tracing, api, cli.
"""
