"""Code the tests (and benchmarks) use that the package itself never runs."""
