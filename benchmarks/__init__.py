"""Benchmark scripts (run as modules from the repository root): numbers go to benchmarks/results/."""
