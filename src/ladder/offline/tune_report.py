"""The page a person looks at after tuning (``ladder tune``): the quality-cost frontier of the
thresholds tried, the chosen point with its interval, the rung mix, and a per-category breakdown
(the outcomes' ``group``), as a PNG and a Markdown table."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ladder.offline.plots import new_axes, save
from ladder.outcomes import Outcomes
from ladder.policies.calibrate import OperatingPoint, simulate


def write_report(
    out_dir: Path,
    title: str,
    rungs: tuple[str, ...],
    part: Outcomes,
    route: np.ndarray,
    accept: np.ndarray | None,
    costs: np.ndarray,
    point: OperatingPoint,
    frontier: list[OperatingPoint],
    target: str,
) -> tuple[Path, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    n = len(part)
    fig, ax = new_axes()
    ax.plot(
        [p.cost_per_1k for p in frontier],
        [p.quality for p in frontier],
        "-",
        marker=".",
        color="C0",
        label="Pareto front of the thresholds tried",
    )
    for j, rung in enumerate(rungs):
        ax.scatter([costs[:, j].mean() * 1000], [part.quality[:, j].mean()], marker="s", color="grey", zorder=4)
        ax.annotate(
            f"always-{rung}",
            (costs[:, j].mean() * 1000, part.quality[:, j].mean()),
            textcoords="offset points",
            xytext=(4, -10),
            fontsize=7,
        )
    q_err = [[point.quality - point.quality_ci[0]], [point.quality_ci[1] - point.quality]]
    c_err = [[point.cost_per_1k - point.cost_ci[0]], [point.cost_ci[1] - point.cost_per_1k]]
    ax.errorbar(
        [point.cost_per_1k],
        [point.quality],
        yerr=q_err,
        xerr=c_err,
        fmt="*",
        color="C3",
        markersize=12,
        capsize=4,
        zorder=5,
        label=f"chosen for {target} (95% intervals)",
    )
    png = save(fig, ax, "USD per 1,000 queries", f"{title} (n={n})", out_dir / "tune.png")

    sim = simulate(route, point.thresholds, part.quality, costs, accept, point.accept_thresholds)
    lines = [
        f"# {title}",
        "",
        f"Target `{target}` on {n} rows. Chosen thresholds: router {[round(float(t), 4) for t in point.thresholds]}"
        + (f", IDK {[round(float(t), 4) for t in point.accept_thresholds]}" if point.accept_thresholds else "")
        + ".",
        "",
        "| | value | 95% interval |",
        "|---|---|---|",
        f"| quality | {point.quality:.3f} | [{point.quality_ci[0]:.3f}, {point.quality_ci[1]:.3f}] |",
        f"| USD per 1k | {point.cost_per_1k:.4f} | [{point.cost_ci[0]:.4f}, {point.cost_ci[1]:.4f}] |",
    ]
    for j, rung in enumerate(rungs):
        lo, hi = point.reach_ci[j] if point.reach_ci else (float("nan"), float("nan"))
        lines.append(f"| reaches {rung} | {point.reach[j]:.2f} | [{lo:.2f}, {hi:.2f}] |")
    lines += [
        "",
        "| category | rows | quality | always-" + rungs[-1] + " | answered by " + " / ".join(rungs) + " |",
        "|---|---|---|---|---|",
    ]
    groups = np.array(part.groups if part.groups is not None else ("all",) * n)
    for g in sorted(set(groups.tolist())):
        m = groups == g
        mix = np.bincount(sim.answered_by[m], minlength=len(rungs)) / m.sum()
        lines.append(
            f"| {g or '-'} | {int(m.sum())} | {sim.quality[m].mean():.3f} | {part.quality[m, -1].mean():.3f} | "
            + " / ".join(f"{x:.0%}" for x in mix)
            + " |"
        )
    lines += ["", f"![frontier]({png.name})", ""]
    md = out_dir / "tune.md"
    md.write_text("\n".join(lines))
    return png, md
