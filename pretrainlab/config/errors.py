"""The errors a user can cause and fix: the CLI prints their message, without a traceback."""

from __future__ import annotations


class PretrainlabError(Exception):
    """Base of every error a user can fix; the message names the file/field and the fix."""


class SpecError(PretrainlabError, ValueError):
    """A spec that cannot be used; the message names the file, the field and the fix."""
