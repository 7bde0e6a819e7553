"""Per-key rate limits and budgets, shared by every ingress replica through Redis.

One Lua script admits a request (all checks, then all debits, atomically, on Redis's clock so
replicas' clocks do not matter) and one settles it when it ends:
- requests/min and tokens/min are token buckets (capacity = the per-minute limit, refilled
  continuously); a request takes 1 request and its *estimated* tokens (prompt estimate +
  max_tokens, as OpenAI counts); settling gives back what it did not use (or takes what the
  prompt estimate missed);
- concurrency is a counter of requests in flight (each entry expires after ``INFLIGHT_TTL_S``, so
  a replica that dies mid-request does not hold a slot forever);
- a budget is spent + reserved USD per period (periods start at multiples of ``period_s``).
  A request reserves its worst case (every rung, prompt bytes as tokens, max_tokens out) and is
  admitted only if the reservation fits what is left; settling replaces it with the actual cost.
  So spend never exceeds the budget, however many requests run at once; the price is that the
  last worst case of a budget is refused (a small share at sane budgets).
Refusals carry the seconds until a retry can succeed. The scripts name their keys from the key
id instead of declaring them, so they need one Redis (not a Redis Cluster), as the rest of Ladder. Redis unreachable: ``Quotas`` says so and
the gateway serves unmetered or refuses, as ``server.limits_when_redis_down`` says.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from ladder.errors import LadderError
from ladder.serving.redis_client import LoopRedis

log = logging.getLogger("ladder.quotas")

INFLIGHT_TTL_S = 900  # a request in flight longer than this no longer counts against concurrency

# KEYS: none (derived from the key id so one script touches only its key's entries)
# ARGV: id, rpm, tpm, concurrent, budget_usd, period_s, est_tokens, est_usd, request_token
# Returns: {ok, reason, retry_after_ms, rpm_left, tpm_left, rpm_reset_ms, tpm_reset_ms, spent, reserved,
#           period_index, period_elapsed_ms}
_ADMIT = """
redis.replicate_commands()
local id = ARGV[1]
local rpm, tpm, conc = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local budget, period = tonumber(ARGV[5]), tonumber(ARGV[6])
local est_tokens, est_usd, token = tonumber(ARGV[7]), tonumber(ARGV[8]), ARGV[9]
local t = redis.call('TIME')
local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)

local function bucket(name, cap, need)
  -- level after refill (cap per 60 s), and ms until `need` would be there
  local k = 'ladder:quota:' .. id .. ':' .. name
  local v = redis.call('HMGET', k, 'level', 'ts')
  local level, ts = tonumber(v[1]) or cap, tonumber(v[2]) or now_ms
  level = math.min(cap, level + (now_ms - ts) * cap / 60000)
  local wait = 0
  if level < need then wait = math.ceil((need - level) * 60000 / cap) end
  return k, level, wait
end

local rk, rlevel, rwait, tk, tlevel, twait
if rpm > 0 then
  rk, rlevel, rwait = bucket('rpm', rpm, 1)
  if rwait > 0 then return {0, 'requests', rwait, 0, 0, rwait, 0, '0', '0', 0, 0} end
end
if tpm > 0 then
  if est_tokens > tpm then return {0, 'tokens_exceed_limit', 0, 0, 0, 0, 0, '0', '0', 0, 0} end
  tk, tlevel, twait = bucket('tpm', tpm, est_tokens)
  if twait > 0 then return {0, 'tokens', twait, 0, math.floor(tlevel), 0, twait, '0', '0', 0, 0} end
end
local ck = 'ladder:quota:' .. id .. ':inflight'
if conc > 0 then
  redis.call('ZREMRANGEBYSCORE', ck, '-inf', now_ms - %(ttl)d * 1000)
  if redis.call('ZCARD', ck) >= conc then return {0, 'concurrent', 1000, 0, 0, 0, 0, '0', '0', 0, 0} end
end
local spent, reserved, index, elapsed = 0, 0, 0, 0
local bk
if budget > 0 then
  index = math.floor(now_ms / (period * 1000))
  elapsed = now_ms - index * period * 1000
  bk = 'ladder:quota:' .. id .. ':budget:' .. index
  local v = redis.call('HMGET', bk, 'spent', 'reserved')
  spent, reserved = tonumber(v[1]) or 0, tonumber(v[2]) or 0
  if spent + est_usd > budget then
    return {0, 'budget', period * 1000 - elapsed, 0, 0, 0, 0, tostring(spent), tostring(reserved), index, elapsed}
  end
  if spent + reserved + est_usd > budget then
    -- what is left is held by requests in flight (each reserved its worst case): not exhausted;
    -- retry once they settle
    return {0, 'budget_in_flight', 1000, 0, 0, 0, 0, tostring(spent), tostring(reserved), index, elapsed}
  end
end
-- every check passed: debit everything
local rleft, tleft = 0, 0
if rpm > 0 then
  rleft = rlevel - 1
  redis.call('HSET', rk, 'level', tostring(rleft), 'ts', now_ms)
  redis.call('PEXPIRE', rk, 120000)
end
if tpm > 0 then
  tleft = tlevel - est_tokens
  redis.call('HSET', tk, 'level', tostring(tleft), 'ts', now_ms)
  redis.call('PEXPIRE', tk, 120000)
end
if conc > 0 then
  redis.call('ZADD', ck, now_ms, token)
  redis.call('EXPIRE', ck, %(ttl)d)
end
if budget > 0 then
  redis.call('HINCRBYFLOAT', bk, 'reserved', est_usd)
  redis.call('EXPIRE', bk, period * 2)
end
local rreset, treset = 0, 0
if rpm > 0 then rreset = math.ceil((rpm - rleft) * 60000 / rpm) end
if tpm > 0 then treset = math.ceil((tpm - tleft) * 60000 / tpm) end
return {1, 'ok', 0, math.floor(rleft), math.floor(tleft), rreset, treset, tostring(spent), tostring(reserved + est_usd),
        index, elapsed}
""" % {"ttl": INFLIGHT_TTL_S}

# ARGV: id, tpm, budget_usd, period_index, est_tokens, used_tokens, est_usd, cost_usd, request_token
_SETTLE = """
local id = ARGV[1]
local tpm, budget, index = tonumber(ARGV[2]), tonumber(ARGV[3]), ARGV[4]
local est_tokens, used, est_usd, cost = tonumber(ARGV[5]), tonumber(ARGV[6]), tonumber(ARGV[7]), tonumber(ARGV[8])
if tpm > 0 then  -- back what was not used, or take what the estimate missed
  local tk = 'ladder:quota:' .. id .. ':tpm'
  local level = tonumber(redis.call('HGET', tk, 'level'))
  if level then redis.call('HSET', tk, 'level', tostring(math.min(tpm, level + est_tokens - used))) end
end
redis.call('ZREM', 'ladder:quota:' .. id .. ':inflight', ARGV[9])
if budget > 0 then
  local bk = 'ladder:quota:' .. id .. ':budget:' .. index
  redis.call('HINCRBYFLOAT', bk, 'reserved', -est_usd)
  redis.call('HINCRBYFLOAT', bk, 'spent', cost)
end
return 1
"""

USAGE_KEEP_S = 40 * 86_400  # how long the usage history keeps an hour

# Usage history, per key and hour of Redis's clock (``ladder keys usage --since``): answered
# requests, tokens, spend and answers per tier; kept 40 days.
# ARGV: id, prompt_tokens, completion_tokens, cost_usd, tier, point
_BOOK = """
local t = redis.call('TIME')
local k = 'ladder:usage:' .. ARGV[1] .. ':' .. math.floor(tonumber(t[1]) / 3600)
redis.call('HINCRBY', k, 'requests', 1)
redis.call('HINCRBY', k, 'prompt_tokens', ARGV[2])
redis.call('HINCRBY', k, 'completion_tokens', ARGV[3])
redis.call('HINCRBYFLOAT', k, 'spend_usd', ARGV[4])
redis.call('HINCRBY', k, 'tier:' .. ARGV[5], 1)
redis.call('HSET', k, 'point', ARGV[6])
redis.call('EXPIRE', k, %(keep)d)
return 1
""" % {"keep": USAGE_KEEP_S}


@dataclass(frozen=True)
class Limits:
    """One key's limits (0 = none), as the scripts read them."""

    requests_per_min: int = 0
    tokens_per_min: int = 0
    concurrent: int = 0
    budget_usd: float = 0.0
    period_s: int = 86_400

    @property
    def any(self) -> bool:
        return bool(self.requests_per_min or self.tokens_per_min or self.concurrent or self.budget_usd)


@dataclass(frozen=True)
class Ticket:
    """An admitted request: what it reserved, to settle when it ends; what its headers say."""

    key_id: str
    token: str
    limits: Limits
    est_tokens: int
    est_usd: float
    period_index: int
    requests_left: int
    tokens_left: int
    requests_reset_ms: int
    tokens_reset_ms: int
    spent_usd: float  # in this period before this request (settled requests only)
    reserved_usd: float  # in flight, this request's reservation included
    period_elapsed_s: float

    @property
    def pace(self) -> float:
        """Remaining budget share / remaining period share (1.0 without a budget): below 1 a key
        spends faster than its budget lasts, and routing moves it to a cheaper point."""
        b = self.limits
        if not b.budget_usd:
            return 1.0
        # settled spend only: in-flight reservations are worst cases, which would pace too early
        left_budget = max(0.0, 1 - self.spent_usd / b.budget_usd)
        left_period = max(1e-6, 1 - self.period_elapsed_s / b.period_s)
        return left_budget / left_period


class QuotaRefused(LadderError):
    """A request over one of its key's limits: 429 with Retry-After (reason: requests, tokens,
    tokens_exceed_limit, concurrent, budget: exhausted for the period, budget_in_flight: what is
    left is reserved by requests in flight, so a retry in a second may pass)."""

    def __init__(self, key_id: str, reason: str, retry_after_s: float, limits: Limits, need_tokens: int = 0) -> None:
        self.key_id, self.reason, self.retry_after_s, self.limits = key_id, reason, retry_after_s, limits
        wait = f"; retry after {retry_after_s:.1f} s"
        super().__init__(
            {
                "requests": f"key {key_id}: over its {limits.requests_per_min} requests per minute{wait}",
                "tokens": f"key {key_id}: over its {limits.tokens_per_min} tokens per minute{wait}",
                "tokens_exceed_limit": (
                    f"key {key_id}: this request may take {need_tokens} tokens (prompt + max_tokens), more than "
                    f"its {limits.tokens_per_min} tokens per minute allow: lower max_tokens"
                ),
                "concurrent": f"key {key_id}: {limits.concurrent} requests already in flight{wait}",
                "budget": (
                    f"key {key_id}: its budget of USD {limits.budget_usd:g} per {limits.period_s} s cannot pay "
                    f"this request's worst case; the period resets in {retry_after_s:.0f} s"
                ),
                "budget_in_flight": (
                    f"key {key_id}: what is left of its budget is reserved by its requests in flight{wait}"
                ),
            }.get(reason, f"key {key_id}: {reason}")
        )


class QuotasUnavailable(LadderError):
    """Redis could not be asked (the gateway serves unmetered or refuses, as configured)."""


class Quotas:
    """The two scripts over one async Redis client; every call bounded by ``timeout_s``."""

    # Generous: limits matter most under load, when a loaded Redis (or this loaded machine) is
    # slow; a short timeout would fail open exactly then (seen in CI at 0.2 s). A Redis that is
    # down refuses connections at once, so failing open or closed stays immediate.
    def __init__(self, redis_url: str, timeout_s: float = 2.0) -> None:
        self.redis = LoopRedis(redis_url, timeout_s)
        self._scripts: dict[int, tuple] = {}  # per client: (admit, settle)
        self._last_warning = 0.0

    @property
    def client(self):  # noqa: ANN201 (redis.asyncio.Redis)
        return self.redis.get()

    def _script(self, which: int):  # noqa: ANN202
        client = self.client
        if id(client) not in self._scripts:
            self._scripts = {id(client): tuple(client.register_script(lua) for lua in (_ADMIT, _SETTLE, _BOOK))}
        return self._scripts[id(client)][which]

    def _warn(self, what: str, exc: Exception) -> None:
        if time.monotonic() - self._last_warning >= 60:  # once a minute, not once a request
            self._last_warning = time.monotonic()
            log.warning("quotas: Redis unavailable while %s (%s: %s)", what, type(exc).__name__, exc)

    async def admit(self, key_id: str, limits: Limits, est_tokens: int, est_usd: float, token: str) -> Ticket:
        args = [
            key_id,
            limits.requests_per_min,
            limits.tokens_per_min,
            limits.concurrent,
            repr(float(limits.budget_usd)),
            limits.period_s,
            est_tokens,
            repr(float(est_usd)),
            token,
        ]
        try:
            r = await self._script(0)(args=args)
        except Exception as exc:  # noqa: BLE001 — connection, timeout, script errors alike
            self._warn("admitting a request", exc)
            raise QuotasUnavailable(str(exc)) from exc
        ok, reason = int(r[0]), r[1].decode() if isinstance(r[1], bytes) else str(r[1])
        if not ok:
            raise QuotaRefused(key_id, reason, int(r[2]) / 1000, limits, est_tokens)
        return Ticket(
            key_id,
            token,
            limits,
            est_tokens,
            est_usd,
            int(r[9]),
            int(r[3]),
            int(r[4]),
            int(r[5]),
            int(r[6]),
            float(r[7]),
            float(r[8]),
            int(r[10]) / 1000,
        )

    async def settle(self, ticket: Ticket, used_tokens: int, cost_usd: float) -> None:
        """Return what the request did not use and book what it cost (best effort: an outage here
        leaves the reservation booked until its period ends — spend is overstated, never under)."""
        l = ticket.limits  # noqa: E741
        args = [
            ticket.key_id,
            l.tokens_per_min,
            repr(float(l.budget_usd)),
            ticket.period_index,
            ticket.est_tokens,
            used_tokens,
            repr(float(ticket.est_usd)),
            repr(float(cost_usd)),
            ticket.token,
        ]
        try:
            await self._script(1)(args=args)
        except Exception as exc:  # noqa: BLE001
            self._warn("settling a request", exc)

    async def book(
        self, key_id: str, prompt_tokens: int, completion_tokens: int, cost: float, tier: str, point: str
    ) -> None:
        """Add an answer to its key's hourly usage (best effort, like ``settle``)."""
        try:
            await self._script(2)(args=[key_id, prompt_tokens, completion_tokens, repr(float(cost)), tier, point])
        except Exception as exc:  # noqa: BLE001
            self._warn("booking usage", exc)

    async def usage_since(self, key_id: str, since_s: float) -> dict:
        """A key's answered requests, tokens, spend and answers per tier over the last ``since_s``
        seconds (whole hours of Redis's clock: the hour ``since_s`` ago falls in is counted whole),
        and the operating point of its latest answer."""
        now_h = int((await self.client.time())[0] // 3600)
        first = now_h - int(min(since_s, USAGE_KEEP_S) // 3600)
        pipe = self.client.pipeline(transaction=False)
        for hour in range(first, now_h + 1):
            pipe.hgetall(f"ladder:usage:{key_id}:{hour}")
        out: dict = {"requests": 0, "prompt_tokens": 0, "completion_tokens": 0, "spend_usd": 0.0, "tiers": {}}
        out["point"] = None
        for h in await pipe.execute():
            fields = {k.decode(): v.decode() for k, v in h.items()}
            for name in ("requests", "prompt_tokens", "completion_tokens"):
                out[name] += int(fields.get(name, 0))
            out["spend_usd"] += float(fields.get("spend_usd", 0))
            for f, v in fields.items():
                if f.startswith("tier:"):
                    out["tiers"][f[5:]] = out["tiers"].get(f[5:], 0) + int(v)
            out["point"] = fields.get("point", out["point"])
        return out

    async def usage(self, key_id: str, period_s: int) -> dict:
        """This period's spent and reserved USD for a key (``ladder usage``, tests)."""
        now_s = (await self.client.time())[0]
        index = int(now_s // period_s)
        v = await self.client.hmget(f"ladder:quota:{key_id}:budget:{index}", "spent", "reserved")
        return {"spent_usd": float(v[0] or 0), "reserved_usd": float(v[1] or 0), "period_index": index}

    async def close(self) -> None:
        await self.client.aclose()
