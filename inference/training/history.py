"""Loss history of a training stage: kept as JSON (for resume) and drawn as a PNG curve."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from pathlib import Path

import matplotlib
import numpy as np

matplotlib.use("Agg")
from matplotlib import pyplot as plt  # noqa: E402

log = logging.getLogger(__name__)


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


class StageLog:
    """One training stage's progress: a mean every 10 steps, saved with the state and drawn as a curve."""

    def __init__(self, work_dir: Path, stage: str, metric: str, title: str, steps: int, start: int,
                 progress: Callable[[int, int, float], None] | None) -> None:
        self.history_path, self.curve_path = work_dir / f"{stage}_history.json", work_dir / f"{stage}_loss.png"
        self.stage, self.metric, self.title, self.steps, self.progress = stage, metric, title, steps, progress
        self.history = [row for row in load_history(self.history_path) if row["step"] <= start]
        self.window: list[float] = []
        self.started = time.perf_counter()

    def record(self, done: int, value: float) -> None:
        self.window.append(value)
        if done % 10 == 0 or done == self.steps:
            self.history.append({"step": done, self.metric: float(np.mean(self.window))})
            self.window = []
            if self.progress is not None:
                self.progress(done, self.steps, self.history[-1][self.metric])

    def save(self, done: int) -> None:
        save_history(self.history, self.history_path)
        plot_history(self.history, self.curve_path, self.title)
        last = self.history[-1][self.metric] if self.history else float("nan")
        log.info("%s step %d/%d %s %.5f (%.0f s)", self.stage, done, self.steps, self.metric, last,
                 time.perf_counter() - self.started)
