"""Command-line tools: ``cute-moe-bench`` (bench.py) and ``cute-moe-convert`` (convert_weights.py)."""
