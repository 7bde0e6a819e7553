"""Offline pipelines: fit, calibrate and evaluate policies on outcome files (no Ray, no serving).

Reads outcomes, writes policy files, tables and PNG plots; builds on ``ladder.policies`` and
``ladder.outcomes``. Only the CLI and benchmarks import it.
"""
