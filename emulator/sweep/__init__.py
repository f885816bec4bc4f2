"""faultpath sweep: every instruction boundary of a getrandom call x every
event, each run judged by an oracle that trusts nothing the code wrote.

Modules (one job each; arrows point down the list):

  coordinator.py  sweep(): plan the tasks, hand them to an executor, gather
  executors.py    where tasks run: local worker processes (crash-isolated),
                  in this process, or a Dask cluster
  worker.py       what a worker runs: execute_task on a cached harness
  harness.py      one configuration's process walked boundary by boundary:
                  snapshots, the events, nested (signal-handler) calls
  report.py       SweepResult: counts, text and JSON reports, reproduction lines
  records.py      SweepTask, RunRecord, BaselineRecord: what crosses processes
  config.py       SweepConfig, the events and state placements, their parsing
  oracle.py       the invariants (Judge) and the memory-discipline diff
  ledger.py       known keys, what was handed out, attribution of output bytes
  keystream.py    the oracle's own ChaCha20 and its keystream cache
  symbols.py      addresses as sym+off (file:line) [insn]
"""
