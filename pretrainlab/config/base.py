"""What every spec section shares: strictness, and the "exactly one of two fields" rule."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class Strict(BaseModel):
    """Base for every spec section: unknown keys are errors, not silently ignored."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    def _exactly_one(self, first: str, second: str) -> None:
        """A source names a file or a demo dataset, never both, never neither."""
        if (getattr(self, first) is None) == (getattr(self, second) is None):
            raise ValueError(f"give exactly one of `{first}` or `{second}`")
