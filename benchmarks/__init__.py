"""Throughput benchmarks: same files, same cores, one run, ratios. Results in benchmarks/RESULTS.md."""
