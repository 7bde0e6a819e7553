"""Ladder: answer each query with the cheapest model rung that is good enough.

The package root imports nothing heavy; subpackages are imported where they are used.
"""

__version__ = "0.1.0"
