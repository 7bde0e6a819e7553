"""Offline jobs on Ray Data over the whole ladder: ``ladder score`` (``batch``) and ``ladder
collect`` (``collect``), both run by one driver (``driver``)."""
