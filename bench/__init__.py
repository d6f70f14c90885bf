"""mpota benchmarks: ``make bench`` (python -m bench)."""
