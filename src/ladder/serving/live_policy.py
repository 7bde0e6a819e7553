"""The running app's policy, swapped without a restart (``ladder policy push | show | rollback``).

A push reaches one ingress replica over HTTP; it validates the policy exactly as at start-up
(format, checksum, rungs = the configured tiers, verifiers present where its IDK step reads
them), swaps it in for the next request (requests in flight finish on the policy they started
with: nothing fails), and publishes it to Redis — the live version under ``ladder:policy:live``,
the files under ``ladder:policy:blob:<version>`` — so every other replica, and any replica Serve
starts later, picks it up on its next request (checked at most once per ``poll_s``). Cache keys
carry the policy version, so decisions of the old policy are never served for the new one.
``live`` may also read ``config``: the policy of the app's configuration. Every value is signed
with the server secret; an unsigned or tampered one is ignored (logged once) and the replica keeps
what it has, as it does through a Redis outage. The keys carry no TTL, and the embedded Redis
evicts only keys with one (routes), so the live policy is never evicted. Rollback goes one step back (twice: forth again).
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import time
from dataclasses import dataclass

from ladder.errors import PolicyFileError
from ladder.protocols import Policy
from ladder.serving.redis_client import PollEvery
from ladder.serving.signing import Signer

log = logging.getLogger("ladder.policy")
KEY_LIVE = "ladder:policy:live"
KEY_PREVIOUS = "ladder:policy:previous"
CONFIGURED = "config"


def _blob_key(version: str) -> str:
    return f"ladder:policy:blob:{version}"


@dataclass(frozen=True)
class PolicyFiles:
    doc: bytes  # the policy JSON
    tensors: bytes  # its safetensors file

    def encode(self) -> str:
        return json.dumps({"doc": self.doc.decode(), "tensors_b64": base64.b64encode(self.tensors).decode()})

    @staticmethod
    def decode(raw: bytes | str) -> PolicyFiles:
        """Raises ``ValueError`` for anything but {"doc": str, "tensors_b64": base64 str}."""
        try:
            data = json.loads(raw)
            doc, tensors = data["doc"], data["tensors_b64"]
        except (UnicodeDecodeError, KeyError, TypeError) as exc:  # (JSONDecodeError is a ValueError)
            raise ValueError(f"not a pushed policy: {exc}") from None
        if not isinstance(doc, str) or not isinstance(tensors, str):
            raise ValueError("not a pushed policy: doc and tensors_b64 must be strings")
        return PolicyFiles(doc.encode(), base64.b64decode(tensors, validate=True))


class LivePolicy:
    def __init__(
        self,
        configured: Policy,
        tier_names: list[str],
        verified: list[str],
        redis_url: str | None,
        signer: Signer,
        poll_s: float = 1.0,
    ) -> None:
        self.configured = configured
        self.policy: Policy = configured
        self.tier_names, self.verified = tier_names, verified
        self._poll = PollEvery(poll_s)
        self.signer = signer  # every value this writes to Redis is signed; unsigned ones are ignored
        self.swapped_at: float | None = None
        self._files: dict[str, PolicyFiles] = {}  # versions this replica has loaded (rollback without Redis)
        self._previous: str | None = None
        # bumped by every push and rollback on this replica: a refresh that read Redis before one
        # of them finished must not apply what it read (it would swap the new policy straight back)
        self._generation = 0
        self.client = None
        if redis_url:
            import redis.asyncio as aioredis

            self.client = aioredis.Redis.from_url(redis_url, socket_timeout=0.5, socket_connect_timeout=0.5)

    # -- validation and swapping -----------------------------------------------------------
    def validate(self, files: PolicyFiles) -> Policy:
        """The checks a policy gets at start-up; raises ``PolicyFileError`` (the old one keeps serving)."""
        from ladder.policies.store import load_policy_bytes

        policy = load_policy_bytes(files.doc, files.tensors, self.tier_names)
        if missing := [r for r in policy.verifier_rungs() if r not in self.verified]:
            raise PolicyFileError(
                f"the policy's IDK step reads verifier signals of {missing}, but those tiers "
                "run no verifier (set verifier: python_examples on them)"
            )
        return policy

    def _swap(self, policy: Policy) -> None:
        if policy.version != self.policy.version:
            log.info("policy swapped: %s -> %s", self.policy.version, policy.version)
            self._previous = self.policy.version
            self.policy, self.swapped_at = policy, time.time()

    def _by_version(self, version: str, files: PolicyFiles | None) -> Policy:
        if version in (CONFIGURED, self.configured.version):
            return self.configured
        if files is None:
            raise PolicyFileError(f"policy {version} is not known here or in Redis")
        return self.validate(files)

    async def push(self, files: PolicyFiles) -> dict:
        policy = self.validate(files)
        self._files[policy.version] = files
        previous = self.policy.version
        self._generation += 1
        published = await self._publish(policy.version, files, previous)
        self._swap(policy)
        return {**self.info(), "previous": previous, "published": published}

    async def rollback(self) -> dict:
        target = await self._get(KEY_PREVIOUS) or self._previous
        if target is None:
            raise PolicyFileError("no previous policy to roll back to")
        files = self._files.get(target) or await self._files_from_redis(target)
        policy = self._by_version(target, files)
        current = self.policy.version
        version = CONFIGURED if policy is self.configured else policy.version
        self._generation += 1
        published = await self._publish(version, files, current)
        self._swap(policy)
        return {**self.info(), "previous": current, "published": published}

    # -- Redis -----------------------------------------------------------------------------
    async def _get(self, key: str) -> str | None:
        if self.client is None:
            return None
        try:
            raw = await asyncio.wait_for(self.client.get(key), 0.5)
        except Exception as exc:  # an outage: every replica keeps what it has
            log.warning("redis unavailable for the live policy: %s", exc)
            return None
        return self.signer.open(key, raw) if raw is not None else None  # unsigned: as if absent

    async def _files_from_redis(self, version: str) -> PolicyFiles | None:
        raw = await self._get(_blob_key(version))
        return PolicyFiles.decode(raw) if raw else None

    async def _publish(self, version: str, files: PolicyFiles | None, previous: str) -> bool:
        if self.client is None:
            return False
        try:
            pipe = self.client.pipeline(transaction=True)
            if files is not None:
                pipe.set(_blob_key(version), self.signer.sign(_blob_key(version), files.encode()))
            pipe.set(
                KEY_PREVIOUS,
                self.signer.sign(KEY_PREVIOUS, CONFIGURED if previous == self.configured.version else previous),
            )
            pipe.set(KEY_LIVE, self.signer.sign(KEY_LIVE, version))
            await asyncio.wait_for(pipe.execute(), 2.0)
            return True
        except Exception as exc:
            log.warning("policy %s swapped on this replica only: redis unavailable (%s)", version, exc)
            return False

    def maybe_refresh(self) -> None:
        """Look for a policy pushed through another replica, at most once per ``poll_s``, off
        the request's path."""
        if self.client is not None:
            self._poll.maybe(self.refresh)

    async def refresh(self) -> None:
        generation = self._generation
        live = await self._get(KEY_LIVE)
        if live is None or generation != self._generation:
            return
        current = CONFIGURED if self.policy is self.configured else self.policy.version
        if live == current or live == self.policy.version:
            return
        try:
            files = self._files.get(live) or await self._files_from_redis(live)
            policy = self._by_version(live, files)
            if files is not None:
                self._files[live] = files
        except PolicyFileError as exc:
            log.error("live policy %s refused on this replica, keeping %s: %s", live, self.policy.version, exc)
            return
        if generation == self._generation:
            self._swap(policy)

    # -- what `ladder policy show` prints ----------------------------------------------------
    def info(self) -> dict:
        meta = getattr(self.policy, "meta", {}) or {}
        point = meta.get("operating_point", {})
        rungs = list(getattr(self.policy, "rungs", self.tier_names))
        return {
            "version": self.policy.version,
            "configured": self.policy is self.configured,
            "target": meta.get("target"),
            "quality": point.get("quality"),
            "quality_ci": point.get("quality_ci"),
            "answer_mix": dict(zip(rungs, point.get("answer_mix", []))),
            "reach_ci": dict(zip(rungs, point.get("reach_ci", []))),
            "prefix": meta.get("prefix"),
            "previous": self._previous,
            "swapped_at": self.swapped_at,
        }
