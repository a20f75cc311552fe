"""The `pretrainlab` command line (console script `pretrainlab = pretrainlab.cli:app`)."""

from pretrainlab.cli.main import app

__all__ = ["app"]
