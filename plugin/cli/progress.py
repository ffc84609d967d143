"""Progress bars on stderr, so that stdout keeps only each command's one-line result."""

from __future__ import annotations

import sys

from tqdm import tqdm


class StageBars:
    """One tqdm bar per stage, fed by ``(stage, done, total[, loss])`` callbacks.

    A bar closes when its stage is done, and every bar on leaving the ``with`` block
    (generation may stop at EOS before its budget, a stage may fail).
    """

    def __init__(self, unit: str = "step", *, leave: bool = True) -> None:
        self.unit = unit
        self.leave = leave
        self.bars: dict[str, tqdm] = {}

    def __call__(self, stage: str, done: int, total: int, loss: float | None = None) -> None:
        bar = self.bars.get(stage)
        if bar is None:
            bar = self.bars[stage] = tqdm(total=total, desc=stage, unit=self.unit, leave=self.leave, file=sys.stderr)
        bar.update(done - bar.n)
        if loss is not None:
            bar.set_postfix(loss=f"{loss:.4f}")
        if done >= total:
            bar.close()

    def __enter__(self) -> StageBars:
        return self

    def __exit__(self, *exc_info: object) -> None:
        for bar in self.bars.values():
            bar.close()
