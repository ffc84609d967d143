"""A stand-in for the node's queue: records each step it is handed instead of running it."""

from __future__ import annotations


class RecordingDispatcher:
    """Records ``(step, id)`` for each step; while ``up`` is False it refuses them as a broker that is away does."""

    def __init__(self, *, up: bool = True) -> None:
        self.up = up
        self.steps: list[tuple[str, object]] = []

    def _hand_over(self, step: str, ident: object) -> None:
        if not self.up:
            raise ConnectionRefusedError("the broker is away")
        self.steps.append((step, ident))

    def generate(self, job_id: str) -> None:
        self._hand_over("generate", job_id)

    def deliver(self, delivery_id: int) -> None:
        self._hand_over("deliver", delivery_id)

    def retrieve(self, job_id: str) -> None:
        self._hand_over("retrieve", job_id)
