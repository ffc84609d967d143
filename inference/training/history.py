"""Loss history of a training stage: kept as JSON (for resume) and drawn as a PNG curve."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
from matplotlib import pyplot as plt  # noqa: E402


def load_history(path: Path) -> list[dict[str, float]]:
    return json.loads(path.read_text()) if path.exists() else []


def save_history(history: list[dict[str, float]], path: Path) -> None:
    path.write_text(json.dumps(history) + "\n")


def plot_history(history: list[dict[str, float]], path: Path, title: str) -> None:
    """One line per logged quantity against the step, log-scaled: losses span decades."""
    if not history:
        return
    figure, axis = plt.subplots(figsize=(7, 4), dpi=100)
    keys = [k for k in history[0] if k != "step"]
    steps = [row["step"] for row in history]
    for key in keys:
        axis.plot(steps, [row[key] for row in history], label=key)
    axis.set_yscale("log")
    axis.set_xlabel("step")
    axis.set_title(title)
    axis.grid(alpha=0.3)
    axis.legend()
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)
