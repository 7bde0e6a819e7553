"""The cascade flow: cache key -> route -> dispatch -> accept or escalate. Pure Python."""

from ladder.router.cascade import run_cascade
from ladder.router.keys import route_key

__all__ = ["run_cascade", "route_key"]
