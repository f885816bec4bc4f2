"""The validation set: code the cycle model was not tuned on, measured
natively and predicted by the emulator (`faultpath bench --validate`).

c/            C sources (a vgetrandom of our own, everyday loops) and the
              linker script that lays a gcc build out like a vDSO
build.py      gcc flavours (-O0/-O2/-O3, scalar and SSE2) and keystone kernels -> images
kernels.py    assembly kernels with one known bottleneck each
bodies.py     the cases (body x size), their memory, and the fixed held-out part
native_run.py TSC ticks per call natively (min over interleaved trials of means)
emulated.py   the same calls in a Machine with a profile
report.py     the table, held-out part apart, JSON
run.py        one run: build, measure, predict
"""
