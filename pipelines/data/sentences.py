"""Sentence splitting for any language, so BERT's next-sentence pairs are real neighbours.

Regex based (it runs over the whole corpus): one pass finds candidate boundaries, a small
check decides the ambiguous Latin full stops.

- Lines (newlines, paragraph breaks) always end a sentence.
- CJK enders 。！？； (and half-width ! ? right after a CJK character) end a sentence with no
  whitespace after them: CJK text has no spaces between sentences.
- Latin . ! ? (and the ellipsis) end a sentence only when whitespace follows and the next
  sentence does not start in lower case ("Wait... what?" stays whole). A full stop after
  an abbreviation (Mr. Dr. e.g. i.e. U.S.), an initial (J. R. R. Tolkien) or inside a number
  (3.14) is no boundary.
- Closing quotes and brackets after an ender stay with the sentence they close.
"""

from __future__ import annotations

import re

# CJK ideographs as BERT's `_is_chinese_char` defines them, plus the Japanese kana: scripts
# written without spaces between words. Shared with the tokenizers and the word counts.
CJK_CHARS = (
    "\u3040-\u30ff"  # Hiragana, Katakana
    "\u3400-\u4dbf"  # CJK Extension A
    "\u4e00-\u9fff"  # CJK Unified Ideographs
    "\uf900-\ufaff"  # CJK Compatibility Ideographs
    "\U00020000-\U0002a6df\U0002a700-\U0002ceaf"  # Extensions B-E
    "\U0002f800-\U0002fa1f"  # Compatibility Supplement
)
CJK_RE = re.compile(f"[{CJK_CHARS}]")

_CLOSERS = "\"'”’»)\\]}」』）》】〉〕"
_CJK_ENDERS = "。！？；"
_LATIN_ENDERS = ".!?…"
# One character class up front keeps the scan fast (~100 MB/s); the match is classified after.
_CANDIDATE = re.compile(f"[{_LATIN_ENDERS}{_CJK_ENDERS}]+[{_CLOSERS}]*\\s*")
_LAST_WORD = re.compile(r"(\S+)$")
_OPENERS = "\"'“‘«([{"
_INITIAL = re.compile(r"[^\W\d_]")  # one letter: J. R. R. Tolkien
_ACRONYM = re.compile(r"(?:[A-Z]\.)+[A-Z]")  # U.S, U.K (the final dot is the ender)
_LOOKBACK = 40  # chars before a full stop searched for its word

# A full stop after these never ends a sentence (lower-cased, final dot removed): titles,
# Latin and reference abbreviations, months. "etc." and "Inc." may end one, so they are not here.
ABBREVIATIONS = frozenset(
    [
        *("mr", "mrs", "ms", "mx", "dr", "prof", "sr", "jr", "st", "mt", "ft", "rev", "hon"),
        *("gen", "col", "capt", "cmdr", "lt", "sgt", "maj", "adm", "gov", "sen", "rep", "pres"),
        *("supt", "insp", "messrs", "mme", "mlle"),
        *("e.g", "i.e", "cf", "vs", "viz", "al", "approx", "ca", "est", "dept", "univ", "bros"),
        *("no", "nos", "vol", "vols", "fig", "figs", "pp", "ch", "sec", "art", "para", "ed"),
        *("eds", "trans", "jan", "feb", "mar", "apr", "jun", "jul", "aug", "sep", "sept", "oct"),
        *("nov", "dec"),
    ]
)


def split_sentences(text: str) -> list[str]:
    """Split `text` into stripped, non-empty sentences (any language)."""
    sentences: list[str] = []
    for line in text.splitlines():
        if line and not line.isspace():
            _split_line(line, sentences)
    return sentences


def _split_line(line: str, out: list[str]) -> None:
    start = 0
    for match in _CANDIDATE.finditer(line):
        if not _is_boundary(line, match.start(), match.end()):
            continue
        sentence = line[start : match.end()].strip()
        if sentence:
            out.append(sentence)
        start = match.end()
    rest = line[start:].strip()
    if rest:
        out.append(rest)


def _is_boundary(line: str, ender: int, end: int) -> bool:
    """CJK enders always end a sentence; a Latin one needs whitespace after it, a next
    sentence not starting in lower case, and (a lone full stop) no abbreviation before it."""
    first = line[ender]
    if first in _CJK_ENDERS or (first in "!?" and ender and CJK_RE.match(line, ender - 1)):
        return True
    if not line[end - 1].isspace() or end >= len(line) or line[end].islower():
        return False
    if first != "." or line[ender + 1] in _LATIN_ENDERS:
        return True  # ! ? and ellipses
    word = _LAST_WORD.search(line, max(0, ender - _LOOKBACK), ender)
    if word is None:
        return True
    token = word.group(1).lstrip(_OPENERS)
    if not token:
        return True
    if token.lower() in ABBREVIATIONS:
        return False
    return not (_INITIAL.fullmatch(token) or _ACRONYM.fullmatch(token))
