"""Benchmark building blocks: presets, device ceilings, floors, peers, timing."""
