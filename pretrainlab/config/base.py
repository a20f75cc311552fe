"""What every spec section shares: strictness, and the "exactly one of two fields" rule."""

from __future__ import annotations

import codecs
from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict


class Strict(BaseModel):
    """Base for every spec section: unknown keys are errors, not silently ignored."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    def _exactly_one(self, first: str, second: str) -> None:
        """A source names a file or a demo dataset, never both, never neither."""
        if (getattr(self, first) is None) == (getattr(self, second) is None):
            raise ValueError(f"give exactly one of `{first}` or `{second}`")


def text_encoding(name: str) -> str:
    """A codec Python can decode with (`encoding:` of a source or a task), as written."""
    try:
        info = codecs.lookup(name)
    except LookupError:
        info = None
    if info is None or not getattr(info, "_is_text_encoding", True):
        raise ValueError(
            f"unknown text encoding {name!r}; use a codec name such as utf-8, gb18030 (GBK), "
            "big5, shift_jis, cp1252 or utf-16"
        )
    return name


Encoding = Annotated[str, AfterValidator(text_encoding)]
