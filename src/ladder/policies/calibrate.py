"""Choose routing thresholds on validation data to meet a target, with honest intervals.

A ladder policy has one threshold per rung boundary (router) and optionally one per rung for the
IDK step. ``simulate`` replays a candidate on outcomes; ``calibrate`` searches candidates and
returns the best one that meets the target with a one-sided 95% margin, plus 95% prediction
intervals for what a future batch of ``n_future`` queries will see (the variance of the
validation estimate and of the future batch both count). Pure numpy.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from ladder.errors import TargetUnreachable

Z_ONE_SIDED = 1.645
Z_TWO_SIDED = 1.96


@dataclass(frozen=True)
class Target:
    """At least one of: per-rung caps on the fraction of queries reaching a rung, a cost budget
    per 1,000 queries, a quality floor. With a floor, the cheapest point meeting it wins;
    otherwise the best-quality point within the caps/budget."""

    max_fraction: dict[int, float] = field(default_factory=dict)  # rung index -> cap
    max_cost_per_1k: float | None = None
    min_quality: float | None = None
    rung_names: tuple[str, ...] = ()  # for ``describe`` (else "rung<i>")

    def __post_init__(self) -> None:
        if not self.max_fraction and self.max_cost_per_1k is None and self.min_quality is None:
            raise ValueError("a calibration target needs a rung cap, a cost budget or a quality floor")
        for rung, cap in self.max_fraction.items():
            if not 0 <= cap <= 1:
                raise ValueError(f"max fraction for rung {rung} must be in [0, 1], got {cap}")

    def describe(self) -> str:
        name = lambda r: self.rung_names[r] if r < len(self.rung_names) else f"rung{r}"  # noqa: E731
        parts = [f"{name(r)}<={c:g}" for r, c in sorted(self.max_fraction.items())]
        if self.max_cost_per_1k is not None:
            parts.append(f"cost/1k<={self.max_cost_per_1k:g}")
        if self.min_quality is not None:
            parts.append(f"quality>={self.min_quality:g}")
        return ",".join(parts)


def parse_target(text: str, rungs: Sequence[str]) -> Target:
    """``large<=0.3``, ``large<=0.2,medium<=50%``, ``cost<=1.5`` (USD per 1K queries),
    ``quality>=0.8``: what ``ladder calibrate -t`` and a key plan's target say. ValueError names
    the bad part."""
    rungs = tuple(rungs)
    caps: dict[int, float] = {}
    cost = quality = None
    for part in filter(None, (p.strip() for p in text.split(","))):
        try:
            if ">=" in part:
                name, value = part.split(">=", 1)
                if name.strip() != "quality":
                    raise ValueError
                quality = float(value)
            else:
                name, value = part.split("<=", 1)
                name = name.strip()
                if name == "cost":
                    cost = float(value)
                elif name in rungs:
                    caps[rungs.index(name)] = float(value.rstrip("%")) / (100 if value.endswith("%") else 1)
                else:
                    raise KeyError(name)
        except KeyError as exc:
            raise ValueError(f"target names rung {exc.args[0]!r}; the rungs are {list(rungs)}") from None
        except ValueError:
            raise ValueError(f"bad target {part!r}; use RUNG<=FRACTION, cost<=USD_PER_1K or quality>=X") from None
    return Target(caps, cost, quality, rungs)


@dataclass(frozen=True)
class Simulation:
    answered_by: np.ndarray  # [n] rung that produced the final answer
    reached: np.ndarray  # [n, R] bool: rung was called
    quality: np.ndarray  # [n] quality of the final answer
    cost: np.ndarray  # [n] cost of every call made


def start_rungs(route_scores: np.ndarray, thresholds: tuple[float, ...]) -> np.ndarray:
    """[n] the first rung each query goes to: the cheapest rung b whose score reaches its threshold,
    else the top. The one copy of the rule: ``HybridRouterPolicy.route`` serves with it and every
    replay (``simulate``, ``simulate_prefix``) calibrates with it, so what is certified is served."""
    n, r = len(route_scores), len(thresholds) + 1
    start = np.full(n, r - 1)
    for b in reversed(range(r - 1)):
        start = np.where(route_scores[:, b] >= thresholds[b], b, start)
    return start


def simulate(
    route_scores: np.ndarray,  # [n, R-1] P(rung b is good enough)
    thresholds: tuple[float, ...],  # router, per boundary
    quality: np.ndarray,  # [n, R]
    rung_cost: np.ndarray,  # [n, R] cost of calling each rung for each query
    accept_scores: np.ndarray | None = None,  # [n, R-1] IDK P(accept answer of rung b)
    accept_thresholds: tuple[float, ...] | None = None,
) -> Simulation:
    n, r = quality.shape
    start = start_rungs(route_scores, thresholds)
    answered = start.copy()
    if accept_scores is not None and accept_thresholds is not None:
        done = np.zeros(n, bool)
        answered = np.full(n, r - 1)
        for b in range(r - 1):
            here = ~done & (start <= b)
            ok = here & (accept_scores[:, b] >= accept_thresholds[b])
            answered = np.where(ok, b, answered)
            done |= ok
    rungs = np.arange(r)
    reached = (rungs[None, :] >= start[:, None]) & (rungs[None, :] <= answered[:, None])
    return Simulation(answered, reached, quality[np.arange(n), answered], (rung_cost * reached).sum(axis=1))


@dataclass(frozen=True)
class OperatingPoint:
    thresholds: tuple[float, ...]
    accept_thresholds: tuple[float, ...] | None
    reach: tuple[float, ...]  # fraction of queries that call each rung
    answer_mix: tuple[float, ...]  # fraction answered by each rung
    quality: float
    cost_per_1k: float
    quality_ci: tuple[float, float] = (0.0, 0.0)
    reach_ci: tuple[tuple[float, float], ...] = ()
    cost_ci: tuple[float, float] = (0.0, 0.0)

    def as_dict(self) -> dict:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in self.__dict__.items()}


def _spread(values: np.ndarray, n_future: int) -> float:
    return float(values.std(ddof=1) * np.sqrt(1 / len(values) + 1 / n_future)) if len(values) > 1 else 0.0


def _point(sim: Simulation, th: tuple[float, ...], ath: tuple[float, ...] | None, n_future: int) -> OperatingPoint:
    r = sim.reached.shape[1]
    reach = sim.reached.mean(axis=0)
    mix = np.bincount(sim.answered_by, minlength=r) / len(sim.answered_by)
    q, c = float(sim.quality.mean()), float(sim.cost.mean() * 1000)
    qs, cs = _spread(sim.quality, n_future), _spread(sim.cost * 1000, n_future)
    reach_ci = tuple(
        (float(max(0, p - Z_TWO_SIDED * s)), float(min(1, p + Z_TWO_SIDED * s)))
        for p, s in ((p, _spread(sim.reached[:, j].astype(float), n_future)) for j, p in enumerate(reach))
    )
    return OperatingPoint(
        tuple(float(t) for t in th),
        None if ath is None else tuple(float(t) for t in ath),
        tuple(float(x) for x in reach),
        tuple(float(x) for x in mix),
        q,
        c,
        (q - Z_TWO_SIDED * qs, q + Z_TWO_SIDED * qs),
        reach_ci,
        (c - Z_TWO_SIDED * cs, c + Z_TWO_SIDED * cs),
    )


def _candidates(scores: np.ndarray, per_dim: int) -> list[float]:
    qs = np.quantile(scores, np.linspace(0, 1, per_dim))
    return sorted({-1.0, *qs.tolist(), 2.0})  # scores are probabilities: -1 = always, 2 = never


def sweep(
    route_scores: np.ndarray,
    quality: np.ndarray,
    rung_cost: np.ndarray,
    accept_scores: np.ndarray | None = None,
    n_future: int | None = None,
    per_dim: int | None = None,
) -> list[tuple[OperatingPoint, Simulation]]:
    """Every candidate threshold vector, replayed. Grids come from score quantiles."""
    n, r = quality.shape
    n_future = n_future or n
    dims = (r - 1) * (2 if accept_scores is not None else 1)
    per_dim = per_dim or {1: 201, 2: 41, 3: 13, 4: 9}.get(dims, 5)
    grids = [_candidates(route_scores[:, b], per_dim) for b in range(r - 1)]
    if accept_scores is not None:
        grids += [_candidates(accept_scores[:, b], per_dim) for b in range(r - 1)]
    out = []
    for combo in itertools.product(*grids):
        th, ath = combo[: r - 1], (combo[r - 1 :] if accept_scores is not None else None)
        sim = simulate(route_scores, th, quality, rung_cost, accept_scores, ath)
        out.append((_point(sim, th, ath, n_future), sim))
    return out


def pareto_front(costs: Sequence[float], quality: Sequence[float]) -> list[int]:
    """Indices of the points no other point beats on both cost (lower) and quality (higher),
    cheapest first: the one frontier rule of calibration and of the benchmarks' curves."""
    costs, quality = np.asarray(costs, float), np.asarray(quality, float)
    best, front = -np.inf, []
    for i in np.lexsort((-quality, costs)):
        if quality[i] > best + 1e-12:
            front.append(int(i))
            best = quality[i]
    return front


def pareto(points: list[OperatingPoint]) -> list[OperatingPoint]:
    """The operating points on the cost–quality frontier, cheapest first."""
    return [points[i] for i in pareto_front([p.cost_per_1k for p in points], [p.quality for p in points])]


def _meets(p: OperatingPoint, sim: Simulation, target: Target, n_future: int) -> bool:
    for rung, cap in target.max_fraction.items():
        upper = p.reach[rung] + Z_ONE_SIDED * _spread(sim.reached[:, rung].astype(float), n_future)
        if upper > cap:
            return False
    if target.max_cost_per_1k is not None:
        if p.cost_per_1k + Z_ONE_SIDED * _spread(sim.cost * 1000, n_future) > target.max_cost_per_1k:
            return False
    if target.min_quality is not None:
        if p.quality - Z_ONE_SIDED * _spread(sim.quality, n_future) < target.min_quality:
            return False
    return True


def calibrate(
    target: Target,
    route_scores: np.ndarray,
    quality: np.ndarray,
    rung_cost: np.ndarray,
    accept_scores: np.ndarray | None = None,
    n_future: int | None = None,
) -> tuple[OperatingPoint, list[OperatingPoint]]:
    """The chosen operating point and the Pareto table it was chosen from."""
    n_future = n_future or len(quality)
    for rung in target.max_fraction:
        if not 0 <= rung < quality.shape[1]:
            raise ValueError(f"target names rung {rung}, the ladder has {quality.shape[1]} rungs")
    runs = sweep(route_scores, quality, rung_cost, accept_scores, n_future)
    feasible = [p for p, sim in runs if _meets(p, sim, target, n_future)]
    if not feasible:
        best = max(p.quality for p, _ in runs)
        raise TargetUnreachable(
            f"no thresholds meet {target.describe()} on the validation data with a 95% margin "
            f"(best reachable quality {best:.3f}, cheapest cost/1k {min(p.cost_per_1k for p, _ in runs):.4g})"
        )
    if target.min_quality is not None:
        chosen = min(feasible, key=lambda p: (p.cost_per_1k, -p.quality))
    else:
        chosen = max(feasible, key=lambda p: (p.quality, -p.cost_per_1k))
    return chosen, pareto([p for p, _ in runs])
