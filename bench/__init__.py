"""Benchmarks of the gateway against a real local Mosquitto (``python -m bench.run``)."""
