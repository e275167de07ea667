"""Benchmarks for token-sidecar, side by side with OpenBao Agent: ``make bench``.

Not a test suite: plain scripts that start real servers (OpenBao dev server, node
oidc-provider) on 127.0.0.1, run real sidecar and agent processes, and write
``BENCHMARKS.md`` and ``BENCHMARKS.json`` at the repository root. See :mod:`bench.run`.
"""
