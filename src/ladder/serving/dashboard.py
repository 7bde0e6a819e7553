"""The live dashboard and the tuning page: server-rendered HTML with inline SVG charts — no build
step, no JavaScript, no asset fetched from anywhere — behind the admin credential.

One source: every figure is computed by ``figures()`` from the samples of the ingress replica's
Prometheus registry, the same samples ``/metrics`` writes; the page carries each figure's exact
value in a ``data-value`` attribute, so a test can hold the page to ``/metrics``. The history is
snapshots of those figures (every ``every_s`` seconds while requests come or someone looks), kept
in the replica's memory: its size is bounded by time, not by traffic. With several ingress
replicas the figures are summed over them through Redis (``replica_samples``); the history charts
stay this replica's.
"""

from __future__ import annotations

import hashlib
import hmac
import html
import math
import time
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from ladder.serving.replica_samples import Scope
from ladder.types import CascadeResult, Query

COOKIE = "ladder_admin"


def session_token(admin_key: bytes) -> str:
    """The dashboard cookie for an admin key: an HMAC of it (the key itself never sits in a cookie)."""
    return hmac.new(admin_key, b"ladder-dashboard-session", hashlib.sha256).hexdigest()


# -- figures ---------------------------------------------------------------------------------
def samples(registry: Any) -> dict[str, float]:  # noqa: ANN401 (prometheus CollectorRegistry)
    """Every sample of the registry as ``name{k="v",…}`` (labels sorted) → value: what /metrics says."""
    out: dict[str, float] = {}
    for metric in registry.collect():
        for s in metric.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(s.labels.items()))
            out[f"{s.name}{{{labels}}}" if labels else s.name] = float(s.value)
    return out


def _by_label(values: dict[str, float], name: str, label: str) -> dict[str, float]:
    """``name{label="x",…}`` → {x: value}, summed over any other labels."""
    out: dict[str, float] = {}
    prefix = name + "{"
    for key, v in values.items():
        if key.startswith(prefix):
            labels = dict(part.split("=", 1) for part in key[len(prefix) : -1].split(","))
            x = labels.get(label, "").strip('"')
            out[x] = out.get(x, 0.0) + v
    return out


def quantile(buckets: dict[float, float], q: float) -> float | None:
    """Prometheus's ``histogram_quantile`` on cumulative buckets {upper bound: count}: linear
    inside the bucket the rank falls in; None without observations."""
    bounds = sorted(buckets)
    total = buckets[bounds[-1]] if bounds else 0.0
    if total <= 0:
        return None
    rank, lower, below = q * total, 0.0, 0.0
    for b in bounds:
        if buckets[b] >= rank:
            if math.isinf(b):
                return lower  # (Prometheus returns the largest finite bound)
            return lower + (b - lower) * ((rank - below) / (buckets[b] - below) if buckets[b] > below else 1.0)
        lower, below = b, buckets[b]
    return lower


def latency_quantiles(values: dict[str, float], tier: str) -> tuple[float | None, float | None]:
    prefix = "ladder_answer_seconds_bucket{"
    buckets: dict[float, float] = {}
    for key, v in values.items():
        if key.startswith(prefix) and f'tier="{tier}"' in key:
            le = key.split('le="', 1)[1].split('"', 1)[0]
            buckets[float(le)] = v
    return quantile(buckets, 0.5), quantile(buckets, 0.95)


def figures(values: dict[str, float], tiers: list[str]) -> dict[str, float | None]:
    """The dashboard's numbers, from registry samples (``samples``) or from parsed /metrics text."""
    status = _by_label(values, "ladder_requests_total", "status")
    answered = _by_label(values, "ladder_answered_total", "tier")
    cache = _by_label(values, "ladder_route_cache_total", "result")
    ok = status.get("200", 0.0)
    cost, largest = values.get("ladder_cost_usd_total", 0.0), values.get("ladder_cost_largest_usd_total", 0.0)
    lookups = sum(cache.values())
    out: dict[str, float | None] = {
        "requests": sum(status.values()),
        "answered": ok,
        "errors": sum(v for s, v in status.items() if s.startswith("5")),
        "refused": sum(v for s, v in status.items() if s.startswith("4")),
        "shed": status.get("503", 0.0),
        "escalations": values.get("ladder_escalations_total", 0.0),
        "escalation_rate": values.get("ladder_escalations_total", 0.0) / ok if ok else None,
        "cost_usd": cost,
        "cost_per_1k": 1000 * cost / ok if ok else None,
        "largest_per_1k": 1000 * largest / ok if ok else None,
        "saved": 1 - cost / largest if largest > 0 else None,
        "cache_hit_rate": cache.get("hit", 0.0) / lookups if lookups else None,
    }
    for tier in tiers:
        out[f"answered:{tier}"] = answered.get(tier, 0.0)
        out[f"share:{tier}"] = answered.get(tier, 0.0) / ok if ok else None
        out[f"p50:{tier}"], out[f"p95:{tier}"] = latency_quantiles(values, tier)
    return out


# -- what the page remembers ------------------------------------------------------------------
@dataclass(frozen=True)
class Escalation:
    at: float
    request_id: str
    tried: tuple[str, ...]  # each rung tried and what decided it, in order
    answered: str
    prompt: str | None  # only when the shadow log keeps prompts


def _why(result: CascadeResult) -> tuple[str, ...]:
    out = []
    for a in result.attempts:
        if a.unavailable:
            why = "starting"
        elif a.error:
            why = "error"
        elif a.accepted:
            why = "accepted"
        elif a.non_answer:
            why = f"non-answer: {a.non_answer}"
        elif a.decided_at is not None:
            why = f"prefix gate at {a.decided_at} tokens"
        else:
            why = "IDK step"
        out.append(f"{a.tier} ({why})")
    return tuple(out)


@dataclass
class Board:
    """History of the figures and the recent escalations, in the ingress replica."""

    every_s: float = 5.0
    keep: int = 720  # an hour at 5 s
    history: deque = field(init=False)
    escalations: deque = field(default_factory=lambda: deque(maxlen=50))

    def __post_init__(self) -> None:
        self.history = deque(maxlen=self.keep)

    def record(self, result: CascadeResult, request_id: str, query: Query, prompts: bool) -> None:
        if result.escalations:
            users = [m.content for m in query.messages if m.role == "user"]
            self.escalations.appendleft(
                Escalation(
                    time.time(),
                    request_id,
                    _why(result),
                    result.answer.tier,
                    (users[-1] if users else query.text)[:300] if prompts else None,
                )
            )

    def due(self, now: float) -> bool:
        return not self.history or now - self.history[-1][0] >= self.every_s

    def offer(self, fig: dict, now: float | None = None) -> None:
        """Keep ``fig`` (figures already computed) as a snapshot when one is due."""
        now = time.time() if now is None else now
        if self.due(now):
            self.history.append((now, fig))

    def tick(self, registry: Any, tiers: list[str]) -> None:  # noqa: ANN401
        """A snapshot from the registry when one is due (figures computed only then)."""
        if self.due(time.time()):
            self.offer(figures(samples(registry), tiers))


# -- rendering --------------------------------------------------------------------------------
def _fmt(v: float | None, kind: str = "n") -> str:
    if v is None:
        return "–"
    if kind == "%":
        return f"{100 * v:.1f}%"
    if kind == "s":
        return f"{v:.2f} s"
    if kind == "$":
        return f"${v:.5f}"
    return f"{v:,.0f}" if float(v).is_integer() else f"{v:.4g}"


def _cell(name: str, v: float | None, kind: str = "n") -> str:
    raw = "" if v is None else repr(float(v))
    return f'<td data-figure="{html.escape(name)}" data-value="{raw}">{_fmt(v, kind)}</td>'


_STYLE = """body{font-family:system-ui,sans-serif;margin:1.5rem;color:#1d2430}h1{font-size:1.3rem}
table{border-collapse:collapse;margin:.5rem 0 1rem}td,th{border:1px solid #d0d5dd;padding:.25rem .6rem;text-align:right}
th{background:#f2f4f7}td.l,th.l{text-align:left}.grid{display:flex;flex-wrap:wrap;gap:1.5rem}
nav a{margin-right:1rem}.muted{color:#667085;font-size:.85rem}.warn{color:#b42318}svg{background:#fcfcfd;border:1px solid #e4e7ec}"""
_COLORS = ("#2e90fa", "#12b76a", "#f79009", "#9e77ed", "#f04438", "#667085")


def _page(title: str, body: str, refresh: int | None = None) -> str:
    meta = f'<meta http-equiv="refresh" content="{refresh}">' if refresh else ""
    return (
        f'<!doctype html><html lang="en"><head><meta charset="utf-8">{meta}<title>{html.escape(title)}</title>'
        f"<style>{_STYLE}</style></head><body><nav><a href='/dashboard'>Dashboard</a>"
        f"<a href='/dashboard/tune'>Tuning</a></nav>{body}</body></html>"
    )


def login_page(error: str | None = None) -> str:
    msg = f'<p style="color:#b42318">{html.escape(error)}</p>' if error else ""
    return _page(
        "Ladder — sign in",
        f"<h1>Ladder dashboard</h1>{msg}<form method='post' action='/dashboard/login'>"
        "<label>Admin key <input type='password' name='key' autocomplete='off' autofocus></label> "
        "<button type='submit'>Sign in</button></form>"
        "<p class='muted'>The admin key of this app (<code>&lt;cache_dir&gt;/admin.key</code> when none is configured).</p>",
    )


def _chart(title: str, series: dict[str, list[tuple[float, float]]], unit: str, w: int = 460, h: int = 160) -> str:
    """A line chart as inline SVG (one polyline per series)."""
    pts = [p for s in series.values() for p in s]
    if len(pts) < 2:
        return f"<div><b>{html.escape(title)}</b><p class='muted'>not enough history yet</p></div>"
    t0, t1 = min(p[0] for p in pts), max(p[0] for p in pts)
    top = max(max(p[1] for p in pts), 1e-9)
    sx = lambda t: 40 + (w - 50) * (t - t0) / max(t1 - t0, 1e-9)  # noqa: E731
    sy = lambda v: h - 20 - (h - 30) * v / top  # noqa: E731
    lines, legend = [], []
    for (name, s), color in zip(series.items(), _COLORS):
        if s:
            path = " ".join(f"{sx(t):.1f},{sy(v):.1f}" for t, v in s)
            lines.append(f'<polyline fill="none" stroke="{color}" stroke-width="2" points="{path}"/>')
            legend.append(f'<tspan fill="{color}">■ {html.escape(name)} </tspan>')
    axis = (
        f'<text x="2" y="14" font-size="11">{top:.3g} {html.escape(unit)}</text>'
        f'<text x="2" y="{h - 22}" font-size="11">0</text>'
        f'<text x="40" y="{h - 4}" font-size="11">{(t1 - t0) / 60:.1f} min</text>'
        f'<text x="{w - 300}" y="{h - 4}" font-size="11">{"".join(legend)}</text>'
    )
    return (
        f"<div><b>{html.escape(title)}</b><br><svg width='{w}' height='{h}' role='img' "
        f"aria-label='{html.escape(title)}'>{''.join(lines)}{axis}</svg></div>"
    )


def _rates(history: Iterable[tuple[float, dict]], key: str, per: str | None = None) -> list[tuple[float, float]]:
    """The change of ``key`` per second between snapshots (or per change of ``per``)."""
    h = list(history)
    out = []
    for (ta, a), (tb, b) in zip(h, h[1:]):
        dv = (b.get(key) or 0.0) - (a.get(key) or 0.0)
        if per is None:
            out.append((tb, dv / max(tb - ta, 1e-9)))
        else:
            d = (b.get(per) or 0.0) - (a.get(per) or 0.0)
            out.append((tb, dv / d if d > 0 else 0.0))
    return out


def _scope_note(scope: Scope | None) -> str:
    if scope is None or (scope.replicas == 1 and scope.partial is None):
        return "<p class='muted'>Figures of this ingress replica (the app runs one).</p>"
    if scope.partial:
        return f"<p id='partial' class='warn'><b>Partial:</b> {html.escape(scope.partial)}.</p>"
    return (
        f"<p class='muted' id='replicas' data-value='{scope.replicas}'>Figures summed over {scope.replicas} "
        f"ingress replicas (their latest snapshots, the oldest {scope.oldest_s:.0f} s old); the charts "
        "show this replica's history.</p>"
    )


def dashboard_page(
    board: Board, fig: dict[str, float | None], tiers: list[str], info: dict, scope: Scope | None = None
) -> str:
    hist = list(board.history)
    rate = {"requests/s": _rates(hist, "requests"), "errors/s": _rates(hist, "errors")}
    mix = {t: _rates(hist, f"answered:{t}", per="answered") for t in tiers}
    esc = {"escalations per answer": _rates(hist, "escalations", per="answered")}
    head = (
        "<table><tr><th class=l>figure</th><th>value</th></tr>"
        + "".join(
            f"<tr><td class=l>{label}</td>{_cell(name, fig[name], kind)}</tr>"
            for name, label, kind in (
                ("requests", "requests", "n"),
                ("answered", "answered (200)", "n"),
                ("refused", "refused (4xx: auth, limits, bad input)", "n"),
                ("errors", "failed (5xx)", "n"),
                ("shed", "shed or unavailable (503)", "n"),
                ("escalations", "escalations", "n"),
                ("escalation_rate", "escalations per answer", "n"),
                ("cost_per_1k", "cost per 1K answers (USD)", "n"),
                ("largest_per_1k", "always-largest, same tokens (USD per 1K)", "n"),
                ("saved", "saved vs always-largest", "%"),
                ("cache_hit_rate", "route cache hit rate", "%"),
            )
        )
        + "</table>"
    )
    per_tier = (
        "<table><tr><th class=l>tier</th><th>answered</th><th>share</th><th>p50</th><th>p95</th></tr>"
        + "".join(
            f"<tr><td class=l>{html.escape(t)}</td>{_cell(f'answered:{t}', fig[f'answered:{t}'])}"
            f"{_cell(f'share:{t}', fig[f'share:{t}'], '%')}{_cell(f'p50:{t}', fig[f'p50:{t}'], 's')}"
            f"{_cell(f'p95:{t}', fig[f'p95:{t}'], 's')}</tr>"
            for t in tiers
        )
        + "</table>"
    )
    recent = "".join(
        f"<tr><td class=l>{time.strftime('%H:%M:%S', time.localtime(e.at))}</td><td class=l><code>"
        f"{html.escape(e.request_id)}</code></td><td class=l>{html.escape(' → '.join(e.tried))}</td>"
        f"<td class=l>{html.escape(e.answered)}</td><td class=l>{html.escape(e.prompt or '')}</td></tr>"
        for e in board.escalations
    )
    point = ""
    if info.get("quality") is not None:
        ci = info.get("quality_ci") or (None, None)
        shares = ", ".join(f"{html.escape(t)} {m:.0%}" for t, m in (info.get("answer_mix") or {}).items())
        band = f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci[0] is not None else ""
        point = f" Calibrated point: quality {info['quality']:.3f}{band}; answers {shares}."
    policy = (
        f"<p>Policy <code id='policy-version'>{html.escape(str(info.get('version')))}</code>, target "
        f"<code>{html.escape(str(info.get('target')))}</code>"
        f"{' (configured)' if info.get('configured') else ' (pushed)'}.{point}</p>"
    )
    return _page(
        "Ladder — dashboard",
        f"<h1>Ladder dashboard</h1>{policy}{_scope_note(scope)}<div class=grid><div>{head}</div><div>{per_tier}"
        "<p class='muted'>Latency quantiles from the ladder_answer_seconds buckets (as Prometheus's "
        "histogram_quantile). “Always-largest” prices each answer's own tokens at the largest tier.</p>"
        f"</div></div><div class=grid>{_chart('Request rate', rate, '/s')}"
        f"{_chart('Answer mix by tier', mix, 'share')}{_chart('Escalation rate', esc, 'per answer')}</div>"
        "<h2 style='font-size:1.1rem'>Recent escalations</h2><table><tr><th class=l>time</th>"
        "<th class=l>request id</th><th class=l>rungs tried (what decided)</th><th class=l>answered</th>"
        f"<th class=l>prompt (shadow.prompts only)</th></tr>{recent}</table>",
        refresh=5,
    )


def tune_page(points: list[Any], current: Any, rungs: list[str], info: dict, message: str | None) -> str:  # noqa: ANN401
    """The frontier (quality vs cost with 95% intervals), the current point marked, a form to push another."""
    if not points:
        body = "<h1>Tuning</h1><p>The live policy has no calibrated frontier (a fixed policy, or never calibrated).</p>"
        return _page("Ladder — tuning", body)
    w, h = 560, 300
    x1 = max(p.cost_ci[1] if p.cost_ci else p.cost_per_1k for p in points) or 1.0
    y1 = max(p.quality_ci[1] if p.quality_ci else p.quality for p in points) or 1.0
    sx = lambda c: 50 + (w - 70) * c / x1  # noqa: E731
    sy = lambda q: h - 30 - (h - 50) * q / y1  # noqa: E731
    marks = []
    for i, p in enumerate(points):
        if p.quality_ci:
            marks.append(
                f'<line x1="{sx(p.cost_per_1k):.1f}" x2="{sx(p.cost_per_1k):.1f}" y1="{sy(p.quality_ci[0]):.1f}" '
                f'y2="{sy(p.quality_ci[1]):.1f}" stroke="#98a2b3"/>'
            )
        marks.append(
            f'<circle cx="{sx(p.cost_per_1k):.1f}" cy="{sy(p.quality):.1f}" r="3.5" fill="#2e90fa">'
            f"<title>point {i}: quality {p.quality:.3f}, USD {p.cost_per_1k:.3f} per 1K</title></circle>"
        )
    if current is not None:  # (calibration's own point need not be a row of the table: drawn apart)
        marks.append(
            f'<circle cx="{sx(current.cost_per_1k):.1f}" cy="{sy(current.quality):.1f}" r="7" fill="#f04438">'
            f"<title>serving: quality {current.quality:.3f}, USD {current.cost_per_1k:.3f} per 1K</title></circle>"
        )
    axes = (
        f'<text x="{w // 2 - 60}" y="{h - 6}" font-size="12">cost (USD per 1K queries)</text>'
        f'<text x="4" y="16" font-size="12">quality {y1:.2f}</text><text x="4" y="{h - 32}" font-size="12">0</text>'
        f'<text x="{w - 60}" y="{h - 18}" font-size="12">{x1:.2f}</text>'
    )
    chart = f"<svg width='{w}' height='{h}' role='img' aria-label='frontier'>{''.join(marks)}{axes}</svg>"

    def ci(pair: tuple[float, float] | None) -> str:
        return f" [{pair[0]:.3f}, {pair[1]:.3f}]" if pair else ""

    def row(p: Any, first: str, second: str, attrs: str = "") -> str:  # noqa: ANN401 (FrontierPoint)
        return (
            f"<tr{attrs}><td>{first}</td><td>{second}</td><td>{p.quality:.3f}{ci(p.quality_ci)}</td>"
            f"<td>{p.cost_per_1k:.3f}{ci(p.cost_ci)}</td>"
            + "".join(f"<td>{m:.2f}</td>" for m in p.answer_mix)
            + "</tr>"
        )

    serving = "" if current is None else row(current, "", "serving", " id=current style=background:#fef3f2")
    rows = serving + "".join(
        row(p, f"<input type='radio' name='point' value='{i}' id='point-{i}'>", str(i)) for i, p in enumerate(points)
    )
    msg = f"<p id='message'><b>{html.escape(message)}</b></p>" if message else ""
    return _page(
        "Ladder — tuning",
        f"<h1>Tuning</h1>{msg}<p>Live policy <code id='policy-version'>{html.escape(str(info.get('version')))}"
        f"</code>, target <code>{html.escape(str(info.get('target')))}</code>. The frontier is the policy's "
        "calibrated Pareto table (validation estimates with 95% bootstrap intervals); the red point is the "
        f"one serving.</p>{chart}<form method='post' action='/dashboard/tune'>"
        f"<input type='hidden' name='version' value='{html.escape(str(info.get('version')))}'>"
        "<table><tr><th></th><th>point</th><th>quality [95%]</th><th>USD per 1K [95%]</th>"
        + "".join(f"<th>answered at {html.escape(r)}</th>" for r in rungs)
        + f"</tr>{rows}</table><button type='submit' name='action' value='push' id='push'>Push the chosen point</button> "
        "<button type='submit' name='action' value='rollback' id='rollback'>Roll back</button></form>"
        "<p class='muted'>A push goes through the same validation as <code>ladder policy push</code>; another "
        "point keeps no prefix gates (they were calibrated for the policy's own point).</p>",
    )
