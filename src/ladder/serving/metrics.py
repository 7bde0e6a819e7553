"""Prometheus metrics of the serving app (exposed at ``/metrics`` by the ingress replica)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram


class LadderMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("ladder_requests", "Chat requests by outcome", ["status"], registry=self.registry)
        self.answered = Counter(
            "ladder_answered", "Answers by the tier that gave them", ["tier"], registry=self.registry
        )
        self.escalations = Counter("ladder_escalations", "Escalations to a higher rung", registry=self.registry)
        self.cache = Counter("ladder_route_cache", "Route cache lookups", ["result"], registry=self.registry)
        self.tier_errors = Counter("ladder_tier_errors", "Tier failures", ["tier"], registry=self.registry)
        self.tier_starting = Counter(
            "ladder_tier_starting",
            "Rungs skipped because their tier was still starting",
            ["tier"],
            registry=self.registry,
        )
        self.tokens = Counter("ladder_tokens", "Tokens of final answers", ["kind"], registry=self.registry)
        self.cost = Counter("ladder_cost_usd", "Estimated cost over every attempt", registry=self.registry)
        self.decision = Histogram(
            "ladder_decision_seconds",
            "Routing decision latency (cache + policy)",
            buckets=(1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 0.1, 0.3, 1.0),
            registry=self.registry,
        )
        self.latency = Histogram("ladder_request_seconds", "End-to-end request latency", registry=self.registry)
