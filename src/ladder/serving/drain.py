"""A replica's drain: whether it still takes chat requests, and how many it has in flight.

``ladder serve`` drains on SIGTERM by calling ``drain_start`` on EVERY ingress replica through
Serve's ``DeploymentHandle.broadcast`` and summing their ``drain_state`` until none is left — not
through ``POST /admin/drain``, which Serve's proxy hands to one replica (with
``server.ingress_replicas`` > 1, the one with the shorter queue: never the busy one that has
answers to finish). ``POST /admin/drain`` drains the replica that receives it, for a single-replica
app driven from outside.
"""

from __future__ import annotations

import logging

log = logging.getLogger("ladder.drain")


class Drain:
    def __init__(self) -> None:
        self.draining = False
        self.in_flight = 0

    def enter(self) -> None:
        self.in_flight += 1

    def leave(self) -> None:
        self.in_flight -= 1

    def start(self) -> dict[str, bool | int]:
        """Stop taking chat requests (503 ``draining``); answers in flight go on. No way back but
        a restart."""
        if not self.draining:
            log.info("draining: %d request(s) in flight", self.in_flight)
        self.draining = True
        return self.state()

    def state(self) -> dict[str, bool | int]:
        return {"draining": self.draining, "in_flight": self.in_flight}
