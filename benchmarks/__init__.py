"""Benchmarks of mechlab's methods: `python -m benchmarks.run --size tiny|full`."""
