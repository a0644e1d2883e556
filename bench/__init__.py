"""jaxrec's benchmarks: `python -m bench.speed`, `bench.quality`, `bench.reproduce` (and
`python bench/<script>.py` from the repository root); one-off studies in `bench.experiments`;
what the scripts share in `bench.common`. bench/README.md has the figures."""
