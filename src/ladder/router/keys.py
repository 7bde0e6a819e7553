"""Cache keys for routing decisions.

A key is a hash of the canonical conversation plus the routing-relevant request parameters and
the policy version, so a new policy never reads an old policy's decisions. No prompt text is
stored: only a blake2b digest. Knows nothing about where the key is stored.
"""

from __future__ import annotations

import hashlib
import json
import re
import unicodedata

from ladder.types import Query

KEY_SCHEMA = 1
_SPACE = re.compile(r"\s+")


def canonical_text(text: str) -> str:
    """NFC, collapsed whitespace, stripped: trivially different prompts share a decision."""
    return _SPACE.sub(" ", unicodedata.normalize("NFC", text)).strip()


def route_key(query: Query, policy_version: str) -> str:
    canonical = json.dumps(
        {
            "m": [[m.role, canonical_text(m.content)] for m in query.messages],
            # max_tokens changes what a rung can do within budget, so it is routing-relevant.
            "max_tokens": query.sampling.max_tokens,
        },
        ensure_ascii=False,
        separators=(",", ":"),
        sort_keys=True,
    )
    digest = hashlib.blake2b(canonical.encode("utf-8"), digest_size=16).hexdigest()
    return f"ladder:route:v{KEY_SCHEMA}:{policy_version}:{digest}"
