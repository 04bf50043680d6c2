"""OpenDify benchmarks: the Dify emulator called directly vs the same traffic through the gateway.

Run `python -m bench` from the repository root; bench/README.md explains every figure.
"""
