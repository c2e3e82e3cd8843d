"""flowproof's benchmarks: `make bench` (`python -m bench`), `make soak` (`python -m bench.soak`).

Every figure is measured beside the raw limit of the dependency it rests on, in the same run and
with the same payloads, so a number means something on any machine. See docs/benchmarks.md.
"""
