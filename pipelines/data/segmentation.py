"""Word segmentation in front of the word-level tokenizer: Chinese words instead of characters.

Chinese is written without spaces between words, so by default (`tokenizers.word.segment:
none`) the word-level tokenizer makes every CJK character a token of its own. `segment: jieba`
cuts each run of CJK characters into words with jieba (rjieba, its Rust port), which is how
Chinese word2vec is normally trained.

Why a pre-step: `tokenizer.json` can hold only the `tokenizers` library's own components, not a
Python segmenter. So `tokenizer.json` holds everything else, the tokenizer's meta names the
segmenter and its version (`identity`), the tokenizer id hashes that identity with the file, and
`attach` puts the segmenter back in front of the pre-tokenizer whenever a tokenizer is trained
or loaded. Every consumer (encoding, transfer inputs, word-in-context spans, saved models)
loads through `tokenizer_training.load_raw_tokenizer` / `load_tokenizer`, so all of them cut
text the same way, and a tokenizer is never used with another segmenter than it was built with.

What is cut: only runs of CJK characters; the text around them is passed on unchanged, so
English tokenizes exactly as without segmentation. The segmenter runs inside the pre-tokenizer,
so every word keeps its offsets into the original text (word-in-context spans stay exact), and on
pre-split input (a tagging task's CoNLL words) it cuts within each word, never across two.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable
from importlib import metadata

from tokenizers import NormalizedString, PreTokenizedString, Tokenizer, pre_tokenizers

from pipelines.data.sentences import CJK_CHARS
from pretrainlab.config import PretrainlabError

SEGMENTS = ("none", "jieba")  # the values of WordLevelSpec.segment
_PACKAGES = {"jieba": "rjieba"}  # segment -> the distribution that implements it
_CJK_RUN = re.compile(f"[{CJK_CHARS}]+")


class SegmentationError(PretrainlabError, ValueError):
    """A segmenter that is unknown, not installed, or not the one a tokenizer was built with."""


def identity(segment: str) -> str | None:
    """`segment` and the installed version that implements it (`jieba/rjieba==0.2.2`); None for
    `none`. Part of the tokenizer id: another version may cut differently."""
    if segment == "none":
        return None
    if segment not in _PACKAGES:
        raise SegmentationError(
            f"unknown word segmenter {segment!r}; tokenizers.word.segment is one of "
            f"{', '.join(SEGMENTS)}"
        )
    package = _PACKAGES[segment]
    try:
        version = metadata.version(package)
    except metadata.PackageNotFoundError:
        raise SegmentationError(
            f"segment: {segment} needs the {package} package, which is not installed: "
            f"pip install -c constraints.txt {package} (or set tokenizers.word.segment: none)"
        ) from None
    return f"{segment}/{package}=={version}"


@functools.cache
def _jieba_cut() -> Callable[[str], list[str]]:
    """A private jieba: `rjieba.add_word` on the shared default instance cannot change our cuts.
    Imported on first use (~0.4 s for the dictionary), never by a run that does not segment."""
    import rjieba

    return rjieba.Jieba().cut


_CUTTERS = {"jieba": _jieba_cut}  # segment -> a function returning its cut(text) -> words


class _CJKRunSplitter:
    """A `tokenizers` custom pre-tokenizer: each CJK run becomes the words `cut` finds in it."""

    def __init__(self, cut: Callable[[str], list[str]]) -> None:
        self.cut = cut

    def _split(self, _index: int, piece: NormalizedString) -> list[NormalizedString]:
        text = str(piece)
        out: list[NormalizedString] = []
        done = 0
        for run in _CJK_RUN.finditer(text):
            if run.start() > done:
                out.append(piece[done : run.start()])
            start = run.start()
            for word in self.cut(run.group()):
                out.append(piece[start : start + len(word)])  # a slice keeps original offsets
                start += len(word)
            done = run.end()
        if done == 0:
            return [piece]  # no CJK: the piece goes on untouched
        if done < len(text):
            out.append(piece[done:])
        return out

    def pre_tokenize(self, pretok: PreTokenizedString) -> None:
        pretok.split(self._split)


def attach(tok: Tokenizer, segmenter: str | None, where: str) -> Tokenizer:
    """Put the segmenter a tokenizer was built with (its `identity`, None for none) in front of
    its pre-tokenizer. The one call every trained or loaded tokenizer goes through.

    Refuses a segmenter that is not installed at the recorded version: the same text could be
    cut into other words than the vocabulary was built from. `where` names the tokenizer.
    """
    if segmenter is None:
        return tok
    segment = segmenter.split("/", 1)[0]
    installed = identity(segment) if segment in _CUTTERS else None
    if installed != segmenter:
        pin = segmenter.split("/", 1)[-1]
        raise SegmentationError(
            f"{where}: this tokenizer was built with the word segmenter {segmenter}, but "
            f"{installed or 'no such segmenter'} is installed; install {pin} (as "
            "constraints.txt pins it), or retrain the tokenizer and the models built on it"
        )
    splitter = pre_tokenizers.PreTokenizer.custom(_CJKRunSplitter(_CUTTERS[segment]()))
    tok.pre_tokenizer = pre_tokenizers.Sequence([splitter, tok.pre_tokenizer])
    return tok
