"""Prometheus metrics of the serving app (exposed at ``/metrics`` by the ingress replica)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


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
        # What the same answers would have cost from the largest tier alone: its prices times the
        # answer's prompt and completion tokens (the large tier's own answer length is unknown;
        # the dashboard's "saved" is against this estimate, and says so).
        self.cost_largest = Counter(
            "ladder_cost_largest_usd",
            "The answers' tokens priced at the largest tier (the always-largest estimate)",
            registry=self.registry,
        )
        self.decision = Histogram(
            "ladder_decision_seconds",
            "Routing decision latency (cache + policy)",
            buckets=(1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 0.1, 0.3, 1.0),
            registry=self.registry,
        )
        self.latency = Histogram("ladder_request_seconds", "End-to-end request latency", registry=self.registry)
        self.tier_latency = Histogram(
            "ladder_answer_seconds",
            "End-to-end latency of answered requests, by the tier that answered",
            ["tier"],
            buckets=(0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 40.0, 80.0, 160.0, 320.0),
            registry=self.registry,
        )
        # per key plan (the plan's id, never the key)
        self.key_requests = Counter(
            "ladder_key_requests",
            "Answered requests per key and answering tier",
            ["key", "tier"],
            registry=self.registry,
        )
        self.key_tokens = Counter("ladder_key_tokens", "Tokens per key", ["key", "kind"], registry=self.registry)
        self.key_spend = Counter(
            "ladder_key_spend_usd", "Spend per key (every attempt)", ["key"], registry=self.registry
        )
        self.key_refused = Counter(
            "ladder_key_refused", "Requests refused by a key's limits", ["key", "reason"], registry=self.registry
        )
        self.key_point = Gauge(
            "ladder_key_point_cost_per_1k",
            "Calibrated USD per 1K queries of the operating point a key's last request used",
            ["key"],
            registry=self.registry,
        )
