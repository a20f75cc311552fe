"""Sentence splitting: English abbreviations, numbers and quotes; Chinese enders; lines."""

from __future__ import annotations

from pathlib import Path

import pytest
from gensim.test.utils import datapath

from pipelines.data.sentences import split_sentences


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "Mr. Smith paid $3.14 for coffee. Dr. Jones did not! Why? Nobody knows.",
            ["Mr. Smith paid $3.14 for coffee.", "Dr. Jones did not!", "Why?", "Nobody knows."],
        ),
        (
            "The U.S. economy grew, e.g. in Jan. 2020, i.e. before the crisis. It shrank later.",
            [
                "The U.S. economy grew, e.g. in Jan. 2020, i.e. before the crisis.",
                "It shrank later.",
            ],
        ),
        (
            "J. R. R. Tolkien wrote it. See Fig. 3 and No. 5 for details.",
            ["J. R. R. Tolkien wrote it.", "See Fig. 3 and No. 5 for details."],
        ),
        (
            "He bought apples, pears, etc. Then he left. Version 2.0.1 shipped.",
            ["He bought apples, pears, etc.", "Then he left.", "Version 2.0.1 shipped."],
        ),
    ],
)
def test_english_abbreviations_and_numbers(text: str, expected: list[str]) -> None:
    assert split_sentences(text) == expected


def test_closing_quotes_and_brackets_stay_with_their_sentence() -> None:
    text = '"Help!" she cried. "Stop it." He stopped. (This is bracketed.) Next one.'
    assert split_sentences(text) == [
        '"Help!" she cried.',
        '"Stop it."',
        "He stopped.",
        "(This is bracketed.)",
        "Next one.",
    ]
    assert split_sentences("“Really?” He smiled. ‘Yes.’ Fine.") == [
        "“Really?”",
        "He smiled.",
        "‘Yes.’",
        "Fine.",
    ]


def test_ellipsis_splits_only_before_a_new_sentence() -> None:
    assert split_sentences("Wait... what? Okay… Then we go.") == [
        "Wait... what?",
        "Okay…",
        "Then we go.",
    ]


def test_chinese_enders_without_whitespace() -> None:
    text = "我爱北京。你呢？我很好！他说：「走吧。」然后走了；最后一句"
    assert split_sentences(text) == [
        "我爱北京。",
        "你呢？",
        "我很好！",
        "他说：「走吧。」",
        "然后走了；",
        "最后一句",
    ]


def test_mixed_scripts_and_half_width_marks_after_cjk() -> None:
    text = "中文和English混合。Another sentence here. 再来一句!好的?结束"
    assert split_sentences(text) == [
        "中文和English混合。",
        "Another sentence here.",
        "再来一句!",
        "好的?",
        "结束",
    ]


def test_lines_and_paragraphs_split() -> None:
    text = "Line one without a stop\nLine two.\n\n   Para three. Yes.\r\nlast"
    assert split_sentences(text) == [
        "Line one without a stop",
        "Line two.",
        "Para three.",
        "Yes.",
        "last",
    ]
    assert split_sentences("") == []
    assert split_sentences(" \n\t\n ") == []


def test_no_character_is_lost_on_real_news_text() -> None:
    docs = Path(datapath("lee_background.cor")).read_text(encoding="utf-8").splitlines()[:100]
    total = 0
    for doc in docs:
        sentences = split_sentences(doc)
        assert "".join("".join(sentences).split()) == "".join(doc.split())
        assert all(s == s.strip() and s for s in sentences)
        total += len(sentences)
    assert 5 * len(docs) < total < 40 * len(docs)  # news articles: several sentences each
