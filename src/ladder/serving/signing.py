"""What replicas adopt from Redis is signed with the server secret (HMAC-SHA256 over key and value).

Redis is shared state, not a trusted party: whoever can write to it (a neighbour on the network, a
leaked password) could otherwise plant a route that pins the cheapest tier or a policy of their
own. A value whose tag does not match is treated as absent and logged once per key.
"""

from __future__ import annotations

import hashlib
import hmac
import logging

log = logging.getLogger(__name__)
TAG_LEN = 64  # hex SHA-256


class Signer:
    def __init__(self, secret: bytes) -> None:
        if len(secret) < 16:
            raise ValueError("the server secret must be at least 16 bytes")
        self._secret = secret
        self._reported: set[str] = set()

    def _tag(self, key: str, value: str) -> str:
        return hmac.new(self._secret, key.encode() + b"\0" + value.encode(), hashlib.sha256).hexdigest()

    def sign(self, key: str, value: str) -> str:
        return self._tag(key, value) + ":" + value

    def open(self, key: str, raw: bytes | str) -> str | None:
        """The value if its tag is right for this key; else None (logged once per key)."""
        text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else raw
        tag, value = text[:TAG_LEN], text[TAG_LEN + 1 :]
        if len(text) > TAG_LEN and text[TAG_LEN] == ":" and hmac.compare_digest(tag, self._tag(key, value)):
            return value
        if key not in self._reported and len(self._reported) < 10_000:
            self._reported.add(key)
            log.warning("ignored a Redis entry without a valid signature: %s", key)
        return None
