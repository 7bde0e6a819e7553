"""The cascade flow: cache key -> route -> dispatch -> accept or escalate. Pure Python."""

from ladder.router.cascade import run_cascade
from ladder.router.keys import route_key
from ladder.router.streaming import StreamStart, stream_cascade

__all__ = ["run_cascade", "route_key", "stream_cascade", "StreamStart"]
