"""The benchmark: `./pdmw run bench` (see docs/PERFORMANCE.md)."""
