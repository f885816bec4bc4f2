"""faultpath exec: a real program, and its glibc, in the emulated machine.

The kernel side lives at emulator/'s top (binfmt_elf, process, sched,
signal, the sys_* syscall handlers, cpuid, fdtable, vfs, execve); this room
holds the tools around it:

  run.py       run_program(): boot, run every process, an ExecReport
  triggers.py  --inject KIND@WHERE in process mode (vDSO calls, syscalls,
               symbols, instruction indices)
  recorder.py  the run's syscalls, signals and exits in strace's notation
  sysfmt.py    that notation, call by call
  strace.py    native runs under strace -f, and the normalisation both sides share
  native.py    the native run of the same program, and the two side by side
  report.py    the human summary and --trace
"""
