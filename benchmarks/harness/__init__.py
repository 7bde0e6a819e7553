"""Test and benchmark harness (load generators, fault injection, frontier arithmetic): used by
benchmarks/ and tests/, not shipped in the ``ladder`` package."""
