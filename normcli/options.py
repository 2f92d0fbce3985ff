"""Option values that several layers share, free of numpy so that the CLI's --help stays quick."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Output:
    """-o and how it is written."""

    target: str
    dtype: str | None = None
    ext: str | None = None
    clip: bool = False
    force: bool = False

    @property
    def to_stdout(self) -> bool:
        return self.target == "-"
