"""Development scripts: benchmarks (``bench_*``), heavy correctness checks (``check_*``) and
the bitstream fuzzer. Each runs as ``python -m lsq.tools.NAME`` and prints its figures; the
evaluation library proper (datasets, metrics, baselines, RD curves, BD-rate) is ``lsq.eval``.
"""
