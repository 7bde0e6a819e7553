"""Matplotlib set-up and finishing shared by every quality–cost plot (headless, PNG)."""

from __future__ import annotations

from pathlib import Path


def new_axes():  # noqa: ANN201 (matplotlib figure, axes)
    try:
        import matplotlib
    except ImportError:  # plotting is an extra: serving and training run without it
        from ladder.errors import LadderError

        raise LadderError("drawing this plot needs matplotlib: pip install 'ladder[plots]'") from None

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt.subplots(figsize=(7, 5))


def save(fig, ax, xlabel: str, title: str, path: Path, legend_size: int = 8) -> Path:  # noqa: ANN001
    import matplotlib.pyplot as plt

    ax.set_xlabel(xlabel)
    ax.set_ylabel("accuracy")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=legend_size, loc="lower right")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
