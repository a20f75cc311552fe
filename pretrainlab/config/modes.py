"""Transfer modes: how much of a pretrained model a task's training uses and updates.

A mode is parsed once, when the spec loads, into a `Mode`. It is also the `str` the user wrote
(in canonical form), so cache keys, MLflow tags and result rows hold exactly the text they
always held, while code reads `mode.name`, `mode.layer`, `mode.k` instead of splitting strings.
"""

from __future__ import annotations

from typing import Any

from pydantic import GetCoreSchemaHandler
from pydantic_core import core_schema

from pretrainlab.config.errors import SpecError

MODES = "scratch | frozen | frozen:layer=N | finetune | partial:k | partial:k:frozen"
NAMES = ("scratch", "frozen", "finetune", "partial")


class ModeError(SpecError):
    """A transfer mode that does not parse; the message lists the valid ones."""


class Mode(str):
    """`scratch`, `frozen`, `frozen:layer=N`, `finetune`, `partial:k` or `partial:k:frozen`."""

    name: str  # scratch | frozen | finetune | partial: also the key of its lr grid
    layer: int | None  # frozen:layer=N
    k: int | None  # partial:k
    freeze_loaded: bool  # partial:k:frozen

    def __new__(
        cls, name: str, layer: int | None = None, k: int | None = None, freeze_loaded: bool = False
    ) -> Mode:
        if name not in NAMES or (layer is not None and name != "frozen"):
            raise ModeError(f"unknown transfer mode {name!r}; choose from {MODES}")
        if (name == "partial") != (k is not None) or (freeze_loaded and name != "partial"):
            raise ModeError(f"transfer mode {name!r}: partial needs k; choose from {MODES}")
        text = name
        if layer is not None:
            text += f":layer={layer}"
        if k is not None:
            text += f":{k}" + (":frozen" if freeze_loaded else "")
        self = super().__new__(cls, text)
        self.name, self.layer, self.k, self.freeze_loaded = name, layer, k, freeze_loaded
        return self

    def __repr__(self) -> str:
        return f"Mode({str(self)!r})"

    def __reduce__(self) -> tuple[Any, ...]:  # pickles (Prefect, multiprocessing) as its text
        return parse_mode, (str(self),)

    @property
    def layered(self) -> bool:
        """Picks or loads some of the encoder's layers: meaningless for a one-layer model."""
        return self.name == "partial" or self.layer is not None

    @classmethod
    def __get_pydantic_core_schema__(
        cls, source: Any, handler: GetCoreSchemaHandler
    ) -> core_schema.CoreSchema:
        """In a spec: written and dumped as its text, parsed on load."""
        return core_schema.no_info_after_validator_function(
            parse_mode,
            core_schema.str_schema(),
            serialization=core_schema.plain_serializer_function_ser_schema(str),
        )


def parse_mode(text: str) -> Mode:
    """`frozen:layer=2` -> Mode("frozen", layer=2); a ModeError listing the valid modes else."""
    if isinstance(text, Mode):
        return text
    parts = text.split(":")
    try:
        if parts in (["scratch"], ["finetune"], ["frozen"]):
            return Mode(parts[0])
        if len(parts) == 2 and parts[0] == "frozen" and parts[1].startswith("layer="):
            return Mode("frozen", layer=int(parts[1].removeprefix("layer=")))
        if parts[0] == "partial" and len(parts) in (2, 3) and parts[2:] in ([], ["frozen"]):
            return Mode("partial", k=int(parts[1]), freeze_loaded=len(parts) == 3)
    except ValueError:
        pass
    raise ModeError(f"unknown transfer mode {text!r}; choose from {MODES}")
