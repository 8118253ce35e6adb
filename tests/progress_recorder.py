"""A progress callback for tests that keeps every report (imported by name, like worker_targets)."""

from __future__ import annotations

from nbkit.infra.progress import Progress


class Recorder:
    """A progress callback that keeps every report."""

    def __init__(self) -> None:
        self.reports: list[Progress] = []

    def __call__(self, progress: Progress) -> None:
        self.reports.append(progress)

    @property
    def fractions(self) -> list[float]:
        return [p.fraction for p in self.reports]

    @property
    def messages(self) -> list[str]:
        return [p.message for p in self.reports]
