"""`python -m pretrainlab.cli ...`: the same as the `pretrainlab` console script."""

from pretrainlab.cli.main import app

app()
