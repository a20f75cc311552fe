"""Non-neural reference lines every family must be read against.

TF-IDF + logistic regression for text tasks (DATA.md: it beat every demo-scale neural model from
500 labels up) and the per-word most frequent tag for tagging. Each returns
{"dev": {"accuracy", "macro_f1"}, "test": {...}} computed by scikit-learn.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Sequence

import scipy.sparse as sp
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import accuracy_score, f1_score

from pipelines.data.task_data import Example, TaskData, TaskDataError

Scores = dict[str, dict[str, float]]
TOKEN_PATTERN = r"(?u)\b\w+\b"  # keeps one-letter words ("a", "I") and any script's words
MAX_ITER = 2000
COSINE_SCALE = 10.0  # one dense column among thousands: give it weight at the same C


def _scores(task: TaskData, gold: Sequence[str], predicted: Sequence[str]) -> dict:
    """Accuracy and macro F1 over every label of the task: one train never has (unseen) is
    never predicted, so its items count wrong and its class adds an F1 of 0."""
    labels = list(task.labels + task.unseen)
    return {
        "accuracy": float(accuracy_score(gold, predicted)),
        "macro_f1": float(
            f1_score(gold, predicted, labels=labels, average="macro", zero_division=0)
        ),
    }


def _vectorizer() -> TfidfVectorizer:
    return TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True, token_pattern=TOKEN_PATTERN)


def _target(text: str, span: tuple[int, int]) -> str:
    return text[span[0] : span[1]].lower()


class _Features:
    """Sparse features per kind: a text; a pair as [a; b; a*b; cos(a, b)] (shared words light
    up a*b, the overlap as a whole is the cosine); word-in-context adds the target word."""

    def __init__(self, kind: str, train: Sequence[Example]) -> None:
        self.kind = kind
        self.text = _vectorizer()
        self.text.fit([e.text_a for e in train] + [e.text_b for e in train if e.text_b])
        self.word = TfidfVectorizer(token_pattern=r"\S+", lowercase=True)
        if kind == "wic":
            self.word.fit([_target(e.text_a, e.span_a) for e in train])

    def __call__(self, examples: Sequence[Example]) -> sp.csr_matrix:
        a = self.text.transform([e.text_a for e in examples])
        if self.kind == "classify":
            return a
        b = self.text.transform([e.text_b for e in examples])
        shared = a.multiply(b).tocsr()
        cosine = sp.csr_matrix(shared.sum(axis=1) * COSINE_SCALE)  # rows are L2-normalised
        blocks = [a, b, shared, cosine]
        if self.kind == "wic":
            blocks.append(self.word.transform([_target(e.text_a, e.span_a) for e in examples]))
        return sp.hstack(blocks).tocsr()


def tfidf_logreg(task: TaskData, train: Sequence[Example]) -> Scores:
    """TF-IDF word 1-2 grams + logistic regression, fit on `train`; dev and test scores."""
    if task.kind == "tag":
        raise TaskDataError(f"task {task.name!r} is a tag task: use most_frequent_tag")
    if len({e.label for e in train}) < 2:
        raise TaskDataError(f"task {task.name!r}: the training examples hold a single label")
    features = _Features(task.kind, train)
    model = LogisticRegression(max_iter=MAX_ITER, C=10.0 if task.kind != "classify" else 1.0)
    model.fit(features(train), [e.label for e in train])
    return {
        split: _scores(task, [e.label for e in data], list(model.predict(features(data))))
        for split, data in (("dev", task.dev), ("test", task.test))
    }


def _most_frequent(counts: Counter[str]) -> str:
    return max(counts, key=lambda tag: (counts[tag], tag))


def most_frequent_tag(task: TaskData, train: Sequence[Example]) -> Scores:
    """Each word's most frequent train tag (exact form, then lowercased), else the global one."""
    if task.kind != "tag":
        raise TaskDataError(f"task {task.name!r} is a {task.kind} task: use tfidf_logreg")
    exact: dict[str, Counter[str]] = defaultdict(Counter)
    lower: dict[str, Counter[str]] = defaultdict(Counter)
    overall: Counter[str] = Counter()
    for example in train:
        for word, tag in zip(example.words, example.tags, strict=True):
            exact[word][tag] += 1
            lower[word.lower()][tag] += 1
            overall[tag] += 1
    best = {word: _most_frequent(c) for word, c in exact.items()}
    best_lower = {word: _most_frequent(c) for word, c in lower.items()}
    fallback = _most_frequent(overall)

    def predict(word: str) -> str:
        return best.get(word) or best_lower.get(word.lower()) or fallback

    out = {}
    for split, data in (("dev", task.dev), ("test", task.test)):
        gold = [tag for example in data for tag in example.tags]
        predicted = [predict(word) for example in data for word in example.words]
        out[split] = _scores(task, gold, predicted)
    return out


def baseline(task: TaskData, train: Sequence[Example]) -> Scores:
    """The reference line for any task kind: most frequent tag, or TF-IDF + logistic regression."""
    return most_frequent_tag(task, train) if task.kind == "tag" else tfidf_logreg(task, train)
