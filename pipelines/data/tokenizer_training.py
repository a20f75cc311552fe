"""Tokenizers trained on the corpus's own train split: WordPiece (BERT), byte-level BPE (GPT),
word-level (word2vec, ELMo).

Every special token a later stage needs is reserved here, at fixed low ids (the order of
`KINDS[kind].specials`): adding one later would change the vocabulary under a trained model.
Training is not reproducible bit for bit, so a tokenizer's identity is the content of its
`tokenizer.json`: `tokenizer_id = sha256(tokenizer.json)[:16]`, recorded next to the file and
checked on every load, so a corrupt or edited file is never trusted. A word-level tokenizer
that segments Chinese into words (`segment: jieba`) runs a Python segmenter that tokenizer.json
cannot hold: the meta records it (`segmenter`), the id hashes it with the file (`content_id`),
and every load attaches it again (`segmentation.attach`).

Vocabulary size: `vocab_size` is an upper bound. A corpus too small to supply it yields a
smaller vocabulary; that is not an error (a tiny demo corpus should still run) but it is
reported by `vocab_stats` (`vocab_size_requested` vs `vocab_size_actual`, `vocab_short`) and
logged as a warning. Only a word-level vocabulary with no word reaching `min_count` is an
error: every token would be `<unk>`.
"""

from __future__ import annotations

import itertools
import json
import logging
import re
import shutil
import string
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow.compute as pc
import pyarrow.parquet as pq
from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
from tokenizers.processors import ByteLevel as ByteLevelProcessor
from tokenizers.processors import TemplateProcessing

from pipelines.data import segmentation
from pipelines.data.sentences import CJK_CHARS
from pretrainlab.config import (
    KIND_OF_TOKENIZER,
    TOKENIZER_OF_FAMILY,
    BPESpec,
    PretrainlabError,
    WordLevelSpec,
    WordPieceSpec,
)
from storage.atomic import write_bytes, write_json
from storage.hashing import SHORT, sha256_bytes

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerFast

log = logging.getLogger(__name__)

TOKENIZER_FILE = "tokenizer.json"
META_FILE = "tokenizer_meta.json"
TOKENIZER_SUBDIR = "tokenizer"  # every saved model ships the tokenizer it was trained with
TRAIN_BATCH_ROWS = 1024  # Parquet rows read at a time: bounded memory on any corpus size
SHORT_VOCAB = 0.9  # a vocabulary under 90% of the requested size is flagged in the stats
_ID_SHAPE = re.compile(rf"[0-9a-f]{{{SHORT}}}")


class TokenizerError(PretrainlabError, ValueError):
    """A tokenizer that cannot be trained or trusted; the message names the file and the fix."""


class TokenizerMismatchError(TokenizerError):
    """An artifact handed a tokenizer other than the one it was built with."""


@dataclass(frozen=True)
class KindInfo:
    """The special tokens of one tokenizer kind and their roles in transformers."""

    specials: tuple[str, ...]  # reserved in this order: ids 0, 1, 2, ...
    roles: dict[str, str]  # PreTrainedTokenizerFast keyword -> token
    unk: str | None  # None: the kind cannot produce an unknown token
    model_inputs: tuple[str, ...] = ("input_ids", "attention_mask")


KINDS: dict[str, KindInfo] = {
    "wordpiece": KindInfo(
        specials=("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"),
        roles={
            "pad_token": "[PAD]",
            "unk_token": "[UNK]",
            "cls_token": "[CLS]",
            "sep_token": "[SEP]",
            "mask_token": "[MASK]",
        },
        unk="[UNK]",
        model_inputs=("input_ids", "token_type_ids", "attention_mask"),  # segments A/B
    ),
    # GPT-1 style inputs: <|endoftext|> starts/ends a text, <|delim|> separates a pair.
    "bpe": KindInfo(
        specials=("<|endoftext|>", "<|pad|>", "<|delim|>"),
        roles={
            "bos_token": "<|endoftext|>",
            "eos_token": "<|endoftext|>",
            "pad_token": "<|pad|>",
            "sep_token": "<|delim|>",
        },
        unk=None,
    ),
    "wordlevel": KindInfo(
        specials=("<pad>", "<unk>", "<s>", "</s>"),
        roles={"pad_token": "<pad>", "unk_token": "<unk>", "bos_token": "<s>", "eos_token": "</s>"},
        unk="<unk>",
    ),
}

# Tokenizer section or model family -> tokenizer kind (word2vec and ELMo share `word`).
FAMILY_KIND = {
    **KIND_OF_TOKENIZER,
    **{family: KIND_OF_TOKENIZER[name] for family, name in TOKENIZER_OF_FAMILY.items()},
}
_MODEL_KIND = {"WordPiece": "wordpiece", "BPE": "bpe", "WordLevel": "wordlevel"}

TokenizerSpec = WordPieceSpec | BPESpec | WordLevelSpec


def resolve_kind(family_or_kind: str) -> str:
    """`bert`/`gpt`/`word`/`word2vec`/`elmo` or a kind name -> the tokenizer kind."""
    kind = FAMILY_KIND.get(family_or_kind, family_or_kind)
    if kind not in KINDS:
        known = sorted({*FAMILY_KIND, *KINDS})
        raise TokenizerError(
            f"unknown tokenizer kind or model family {family_or_kind!r}; known: {', '.join(known)}"
        )
    return kind


# --------------------------------------------------------------------------- training input


def corpus_parts(corpus_dir: str | Path) -> list[Path]:
    """The corpus part files in name order; a directory without any is an error."""
    parts = sorted(Path(corpus_dir).glob("part-*.parquet"))
    if not parts:
        raise TokenizerError(
            f"{corpus_dir}: no part-*.parquet files: not a corpus directory (run the ingest stage)"
        )
    return parts


def iter_train_texts(corpus_dir: str | Path) -> Iterator[str]:
    """Stream the `text` of the train split, part by part, a record batch at a time."""
    n_texts = 0
    for path in corpus_parts(corpus_dir):
        handle = pq.ParquetFile(path)
        missing = {"text", "split"} - set(handle.schema_arrow.names)
        if missing:
            raise TokenizerError(
                f"{path}: missing column(s) {sorted(missing)} (has {handle.schema_arrow.names}); "
                "corpus parts need `text` and `split`: re-run the ingest stage"
            )
        for batch in handle.iter_batches(batch_size=TRAIN_BATCH_ROWS, columns=["text", "split"]):
            texts = pc.filter(batch.column("text"), pc.equal(batch.column("split"), "train"))
            for text in texts.to_pylist():
                if text:
                    n_texts += 1
                    yield text
    if n_texts == 0:
        raise TokenizerError(
            f"{corpus_dir}: the train split is empty, nothing to train a tokenizer on "
            "(add text to the corpus or lower corpus.valid_fraction)"
        )


# --------------------------------------------------------------------------- training


def _ascii_alphabet(lowercase: bool) -> list[str]:
    """Printable ASCII is always in the vocabulary (as in BERT's), seen in training or not."""
    chars = {c.lower() if lowercase else c for c in string.printable if not c.isspace()}
    return sorted(chars)


def _wordpiece(spec: WordPieceSpec) -> tuple[Tokenizer, trainers.Trainer]:
    # handle_chinese_chars puts spaces around each CJK ideograph: one token per character.
    # strip_accents follows lowercase, as in BERT's uncased models (café -> cafe).
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(
        clean_text=True, handle_chinese_chars=True, lowercase=spec.lowercase
    )
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece(prefix="##")
    trainer = trainers.WordPieceTrainer(
        vocab_size=spec.vocab_size,
        min_frequency=spec.min_frequency,
        special_tokens=list(KINDS["wordpiece"].specials),
        continuing_subword_prefix="##",
        initial_alphabet=_ascii_alphabet(spec.lowercase),
        show_progress=False,
    )
    return tok, trainer


def _bpe(spec: BPESpec) -> tuple[Tokenizer, trainers.Trainer]:
    # add_prefix_space: the first word of a sentence gets the same token as mid-text, so
    # sentence-by-sentence ids concatenate to what encoding the whole document gives.
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = ByteLevelProcessor(trim_offsets=True)
    trainer = trainers.BpeTrainer(
        vocab_size=spec.vocab_size,
        min_frequency=spec.min_frequency,
        special_tokens=list(KINDS["bpe"].specials),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    return tok, trainer


def _wordlevel(spec: WordLevelSpec) -> tuple[Tokenizer, trainers.Trainer]:
    # BertPreTokenizer splits on whitespace and punctuation but keeps a run of CJK characters
    # as one "word"; the Split before it isolates each CJK character first. With a segmenter,
    # BertPreTokenizer alone is saved and the segmenter cuts the runs into words before it.
    tok = Tokenizer(models.WordLevel(unk_token="<unk>"))
    steps = [normalizers.NFC(), *([normalizers.Lowercase()] if spec.lowercase else [])]
    tok.normalizer = normalizers.Sequence(steps)
    tok.pre_tokenizer = (
        pre_tokenizers.BertPreTokenizer()
        if spec.segment != "none"
        else pre_tokenizers.Sequence(
            [
                pre_tokenizers.Split(Regex(f"[{CJK_CHARS}]"), behavior="isolated"),
                pre_tokenizers.BertPreTokenizer(),
            ]
        )
    )
    trainer = trainers.WordLevelTrainer(
        vocab_size=spec.vocab_size,
        min_frequency=spec.min_count,
        special_tokens=list(KINDS["wordlevel"].specials),
        show_progress=False,
    )
    return tok, trainer


_BUILDERS = {"wordpiece": _wordpiece, "bpe": _bpe, "wordlevel": _wordlevel}


def spec_segmenter(spec: TokenizerSpec) -> str | None:
    """The identity of the word segmenter `spec` asks for (None: no segmentation); pass it to
    `tokenizer_id` and `save_tokenizer` with the tokenizer `train_tokenizer` returns."""
    return segmentation.identity(getattr(spec, "segment", "none"))


def train_tokenizer(spec: TokenizerSpec, texts: Iterable[str]) -> Tokenizer:
    """Train the tokenizer `spec` asks for on `texts` (streamed: memory holds counts, not text).

    Returns it as tokenizer.json holds it: a word segmenter (`spec_segmenter`) cuts the
    training text but is detached again; `load_raw_tokenizer` attaches it after saving.
    Raises TokenizerError for an unknown kind, no texts at all, or a word-level vocabulary
    with no word reaching `min_count`. A vocabulary smaller than asked is only reported (see
    the module docstring and `vocab_stats`).
    """
    kind = resolve_kind(getattr(spec, "kind", repr(spec)))
    stream = iter(texts)
    first = next(stream, None)  # iter_train_texts raises here, naming the corpus
    if first is None:
        raise TokenizerError("no training texts: the train split is empty")
    tok, trainer = _BUILDERS[kind](spec)
    saved_pre_tokenizer = tok.pre_tokenizer
    segmentation.attach(tok, spec_segmenter(spec), f"the {kind} tokenizer being trained")
    tok.train_from_iterator(itertools.chain([first], stream), trainer=trainer)
    tok.pre_tokenizer = saved_pre_tokenizer  # a Python segmenter cannot be serialized
    if kind == "wordpiece":
        tok.post_processor = TemplateProcessing(
            single="[CLS] $A [SEP]",
            pair="[CLS] $A [SEP] $B:1 [SEP]:1",
            special_tokens=[(t, tok.token_to_id(t)) for t in ("[CLS]", "[SEP]")],
        )
    if kind == "wordlevel" and tok.get_vocab_size() <= len(KINDS[kind].specials):
        raise TokenizerError(
            f"word-level vocabulary is empty: no word occurs at least min_count={spec.min_count} "
            "times in the train split (lower tokenizers.word.min_count or add text)"
        )
    stats = vocab_stats(spec, tok)
    if stats["vocab_short"]:
        log.warning(
            "%s tokenizer: the corpus supplied %d tokens of the %d asked for",
            kind,
            stats["vocab_size_actual"],
            stats["vocab_size_requested"],
        )
    return tok


def vocab_stats(spec: TokenizerSpec, tok: Tokenizer) -> dict[str, Any]:
    """Requested vs trained vocabulary size; `vocab_short` when the corpus could not supply it."""
    actual = tok.get_vocab_size(with_added_tokens=True)
    return {
        "kind": spec.kind,
        "vocab_size_requested": spec.vocab_size,
        "vocab_size_actual": actual,
        "vocab_short": actual < SHORT_VOCAB * spec.vocab_size,
    }


# --------------------------------------------------------------------------- saving & loading


def tokenizer_kind(tok: Tokenizer) -> str:
    name = type(tok.model).__name__
    if name not in _MODEL_KIND:
        raise TokenizerError(
            f"unsupported tokenizer model {name}; supported: {sorted(_MODEL_KIND)}"
        )
    return _MODEL_KIND[name]


def tokenizer_json(tok: Tokenizer) -> bytes:
    """The exact bytes saved as tokenizer.json (its hash is the tokenizer's id)."""
    return tok.to_str(pretty=True).encode("utf-8")


def content_id(data: bytes, segmenter: str | None = None) -> str:
    """The id of tokenizer.json's bytes, cut after `segmenter` (None: none): the same file
    behind another segmenter, or another version of it, is another tokenizer."""
    if segmenter is not None:
        data = data + b"\0segmenter=" + segmenter.encode("utf-8")
    return sha256_bytes(data)[:SHORT]


def tokenizer_id(tok: Tokenizer, segmenter: str | None = None) -> str:
    """The id `save_tokenizer` will return, known before writing (to name the directory)."""
    return content_id(tokenizer_json(tok), segmenter)


def save_tokenizer(tok: Tokenizer, directory: str | Path, segmenter: str | None = None) -> str:
    """Write tokenizer.json and its meta file (kind, specials, segmenter, id) atomically;
    return the id. `segmenter` is `spec_segmenter(spec)` of the spec it was trained from.

    The meta file is written last: a directory without it is incomplete and not loaded.
    """
    directory = Path(directory)
    kind = tokenizer_kind(tok)
    data = tokenizer_json(tok)
    tid = content_id(data, segmenter)
    write_bytes(directory / TOKENIZER_FILE, data)
    info = KINDS[kind]
    write_json(
        directory / META_FILE,
        {
            "tokenizer_id": tid,
            "kind": kind,
            "vocab_size": tok.get_vocab_size(with_added_tokens=True),
            "special_tokens": info.roles,
            "special_ids": {t: tok.token_to_id(t) for t in info.specials},
            "unk_token": info.unk,
            "segmenter": segmenter,
        },
    )
    return tid


def tokenizer_fingerprint(directory: str | Path) -> str:
    """The hash of a tokenizer directory's tokenizer.json (with the segmenter its meta names):
    what it is, whatever id it claims."""
    path = Path(directory) / TOKENIZER_FILE
    if not path.is_file():
        raise TokenizerError(f"{path}: no tokenizer.json here (train the tokenizer first)")
    try:
        segmenter = json.loads((Path(directory) / META_FILE).read_text("utf-8"))["segmenter"]
    except (OSError, ValueError, KeyError, TypeError):
        segmenter = None
    return content_id(path.read_bytes(), segmenter)


def _read_verified(directory: Path) -> tuple[bytes, dict[str, Any]]:
    """tokenizer.json's bytes and the meta, once the bytes hash to the recorded id (and to the
    directory name when that is an id). Anything else is corrupt and never trusted."""
    meta_path = directory / META_FILE
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        recorded = meta["tokenizer_id"]
        resolve_kind(meta["kind"])
        segmenter = meta.get("segmenter")  # absent in tokenizers saved before segmentation
        if segmenter is not None and not isinstance(segmenter, str):
            raise TypeError(f"segmenter {segmenter!r} is not a string")
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise TokenizerError(
            f"{meta_path}: missing or unreadable ({error}); the tokenizer in {directory} is "
            f"incomplete and not trusted: delete {directory} and re-run to retrain it"
        ) from None
    path = directory / TOKENIZER_FILE
    try:
        data = path.read_bytes()
    except OSError as error:
        raise TokenizerError(
            f"{path}: unreadable ({error}); delete {directory} and re-run to retrain it"
        ) from None
    actual = content_id(data, segmenter)
    claimed = {recorded} | ({directory.name} if _ID_SHAPE.fullmatch(directory.name) else set())
    if claimed != {actual}:
        raise TokenizerError(
            f"{path}: content hash {actual} does not match its id "
            f"{' / '.join(sorted(claimed))}: the file is corrupt or was edited and is not "
            f"trusted; delete {directory} and re-run to retrain it"
        )
    return data, meta


def read_meta(directory: str | Path) -> dict[str, Any]:
    """The meta (id, kind, specials) of a saved tokenizer whose file matches its id."""
    return _read_verified(Path(directory))[1]


def load_raw_tokenizer(directory: str | Path) -> tuple[Tokenizer, dict[str, Any]]:
    """The verified `tokenizers.Tokenizer` (fast batch encoding), its segmenter attached, and its
    meta; the object is built from exactly the bytes that were verified."""
    tok, meta = _load_saved(directory)
    return segmentation.attach(tok, meta.get("segmenter"), str(directory)), meta


def _load_saved(directory: str | Path) -> tuple[Tokenizer, dict[str, Any]]:
    """The verified tokenizer as tokenizer.json holds it (no segmenter) and its meta."""
    data, meta = _read_verified(Path(directory))
    try:
        tok = Tokenizer.from_str(data.decode("utf-8"))
    except Exception as error:  # the Rust parser raises plain Exception
        raise TokenizerError(
            f"{Path(directory) / TOKENIZER_FILE}: not a valid tokenizer ({error}); "
            f"delete {directory} and re-run to retrain it"
        ) from None
    return tok, meta


def load_tokenizer(directory: str | Path) -> PreTrainedTokenizerFast:
    """The verified tokenizer as transformers uses it, with its special tokens set.

    Wraps the trained object: `BertTokenizerFast(vocab_file=...)` silently breaks on a
    freshly trained vocabulary (see STACK.md). transformers is imported here, not at the top:
    it costs ~0.8 s, and encoding workers only need the raw tokenizer.
    """
    from transformers import PreTrainedTokenizerFast

    tok, meta = _load_saved(directory)
    wrapped = PreTrainedTokenizerFast(  # deep-copies `tok`: a Python segmenter cannot be copied
        tokenizer_object=tok,
        model_input_names=list(KINDS[meta["kind"]].model_inputs),
        **meta["special_tokens"],
    )
    segmentation.attach(wrapped.backend_tokenizer, meta.get("segmenter"), str(directory))
    return wrapped


def check_same_tokenizer(expected_id: str, actual_id: str, what: str) -> None:
    """Fail loudly when an artifact meets a tokenizer other than the one it was built with.

    `what` names the artifacts, e.g. "model models/bert/ab12 with tokens tokens/cd34".
    """
    if expected_id != actual_id:
        raise TokenizerMismatchError(
            f"tokenizer mismatch for {what}: it was built with tokenizer {expected_id} but was "
            f"given tokenizer {actual_id}; use the tokenizer stored with it "
            f"(tokenizers/{expected_id}) or rebuild it from tokenizer {actual_id}"
        )


def ship_tokenizer(tokenizer_dir: str | Path, model_dir: str | Path) -> Path:
    """Copy a verified tokenizer next to a model's weights (`<model_dir>/tokenizer/`)."""
    tokenizer_dir, target = Path(tokenizer_dir), Path(model_dir) / TOKENIZER_SUBDIR
    _read_verified(tokenizer_dir)  # a corrupt tokenizer is never shipped
    target.mkdir(parents=True, exist_ok=True)
    for name in (TOKENIZER_FILE, META_FILE):
        shutil.copy2(tokenizer_dir / name, target / name)
    return target
