"""faultpath diffcheck: the emulator against this CPU, instruction sequence by
instruction sequence (issue 12).

The same bytes run twice, at the same addresses with the same registers and
memory: natively on this CPU (native.py: an executable mapping, data pages
made inaccessible, a signal handler of a few assembled instructions that
resolves each fault and lets the kernel restart the instruction), and in a
Machine (emulated.py: the data pages given the kernel states that make the CPU
fault and restart: first touch, dropped, zero page, COW).  compare.py diffs
the two final states (registers, arithmetic flags, xmm, MXCSR, data pages,
faults taken, the signal) and names what differs; report.py prints the table.

Where sequences come from:
  flags.py       seeded random flag producer / faulting access / flag consumer
  forms.py       every store form of the skipcheck corpus, in every fault state
  windows.py     straight-line slices around every memory access of the images
  privileged.py  instructions a user-mode CPU refuses (#GP, #UD, #DE, #BP...)

layout.py holds the fixed addresses both sides use and records.py the data
classes; run.py ties it together for the CLI, the tests and `make bench`.
"""
