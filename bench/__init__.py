"""The benchmark (bench.py), its figure definitions, plot writer and JSON comparison."""
