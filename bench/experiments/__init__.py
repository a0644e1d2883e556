"""One-off studies behind figures of bench/README.md: `python -m bench.experiments.<name>`."""
