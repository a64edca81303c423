"""Phoenix benchmarks: `python -m benchmarks {engine,server,all,report} --help`.

- `benchmarks.engine`: every engine x preset x B x C x precision in one process.
- `benchmarks.server`: tritonserver over gRPC, closed and open loop, Triton's own statistics, memory.
- `benchmarks.flops`: the FLOP count behind "achieved TFLOP/s" (formula in its docstring).
- `benchmarks.report`: report.md and PNG plots from the JSON of a run.
"""
