"""Drawing helpers shared by the results' figures (package-private): an Agg figure, the arm colours, axis labels
and titles, and saving (or removing a stale file when there is nothing to draw)."""

from __future__ import annotations

from pathlib import Path

import matplotlib
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

DPI = 120


def _figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height))
    FigureCanvasAgg(fig)
    return fig


def _colors(arms: list[str]) -> dict[str, tuple]:
    masked = [a for a in arms if a != "baseline"]
    cmap = matplotlib.colormaps["viridis"]
    out = {a: cmap(0.9 * i / max(1, len(masked) - 1)) for i, a in enumerate(masked)}
    out["baseline"] = (0.0, 0.0, 0.0, 1.0)
    return out


def _fid_label(trials: pd.DataFrame) -> str:
    backends = ", ".join(sorted(set(trials["fid_backend"].dropna()))) or "?"
    samples = ", ".join(str(n) for n in sorted(set(trials["fid_num_samples"])))
    return f"FID ({backends}, {samples} samples; lower is better)"


def _title(fig, spec: dict, trials: pd.DataFrame, what: str) -> None:
    name = spec.get("name") or (trials["sweep"].iloc[0] if len(trials) else "")
    fig.suptitle(f"{name}: {what}" if name else what)


def _seeds_text(counts) -> str:
    """``n=3`` or ``n=2-3`` for the numbers of seeds behind some means."""
    counts = sorted({int(c) for c in counts})
    if not counts:
        return "n=0"
    return f"n={counts[0]}" if len(counts) == 1 else f"n={counts[0]}-{counts[-1]}"


def _save(fig: Figure | None, path: Path) -> Path | None:
    """Write ``fig`` to ``path`` (None: nothing to draw, and no stale file left at ``path``)."""
    if fig is None:
        Path(path).unlink(missing_ok=True)
        return None
    fig.savefig(path, dpi=DPI)
    return path
