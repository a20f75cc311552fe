"""A user's own Hugging Face checkpoint as one more model in the comparison.

A checkpoint is a local directory as `save_pretrained` writes it: config.json, the weights
(safetensors) and the tokenizer files (tokenizer.json + tokenizer_config.json). Its
`config.model_type` picks the code paths it runs through (`bert` -> our BERT encoder,
`gpt2` -> our GPT encoder); the name the user gives it is only what rows and registry show.

It is imported once into the store in exactly the layout our own pretrained models have
(weights saved from our model class + `tokenizer/` with a verified tokenizer.json and meta),
so scratch, frozen, finetune, partial:k, probes, polysemy and domain adaptation treat it like
any model we trained. Heads the checkpoint lacks (a bare `BertModel` has no MLM/NSP head) are
freshly initialised; they only matter for domain adaptation, never for transfer.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from transformers import AutoTokenizer, GPT2LMHeadModel
from transformers.utils import logging as hf_logging

from pipelines.data.tokenizer_training import META_FILE, TOKENIZER_FILE, TOKENIZER_SUBDIR
from pipelines.models.bert import BertForMaskedPositionsPreTraining
from pipelines.models.saved import load_pretrained
from pretrainlab.config import PretrainlabError
from storage.atomic import write_bytes, write_json
from storage.hashing import SHORT, sha256_bytes, sha256_file, stable_hash

# config.model_type -> the architecture (our family code path) that reads it
ARCHITECTURES = {"bert": "bert", "gpt2": "gpt"}
# architecture -> the tokenizer kind our loaders give it (decides the model input names)
TOKENIZER_KINDS = {"bert": "wordpiece", "gpt": "bpe"}
ROLES = ("pad_token", "unk_token", "cls_token", "sep_token", "mask_token", "bos_token", "eos_token")
REQUIRED_ROLES = {"bert": ("cls_token", "sep_token"), "gpt": ("eos_token",)}
TOKENIZER_FILES = (TOKENIZER_FILE, "tokenizer_config.json", "special_tokens_map.json", "vocab.txt")


class CheckpointError(PretrainlabError, ValueError):
    """A checkpoint directory that cannot join the comparison; the message names it and the fix."""


@dataclass(frozen=True)
class CheckpointInfo:
    path: Path
    model_type: str
    architecture: str  # bert | gpt: the code paths it runs through
    content_hash: str  # over every file's relative path and bytes


def _config(path: Path) -> dict[str, Any]:
    config_file = path / "config.json"
    if not path.is_dir():
        raise CheckpointError(
            f"checkpoint {path}: no such directory; give transfer.checkpoints[].path as a "
            "directory written by save_pretrained"
        )
    try:
        config = json.loads(config_file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CheckpointError(
            f"checkpoint {path}: no config.json; point at a directory written by "
            "model.save_pretrained (config.json + model.safetensors + tokenizer files)"
        ) from None
    except (OSError, ValueError) as error:
        raise CheckpointError(f"{config_file}: not readable JSON ({error})") from None
    if not isinstance(config, dict):
        raise CheckpointError(f"{config_file}: expected a JSON object")
    return config


def content_hash(path: Path) -> str:
    """The checkpoint's identity: every file's relative path and sha256 (not mtimes)."""
    files = sorted(p for p in path.rglob("*") if p.is_file())
    return stable_hash([[str(p.relative_to(path)), sha256_file(p)] for p in files])


def inspect_checkpoint(path: str | Path) -> CheckpointInfo:
    """What the directory holds and which of our code paths reads it; a clear error otherwise."""
    path = Path(path).expanduser().resolve()
    model_type = _config(path).get("model_type")
    if model_type not in ARCHITECTURES:
        supported = ", ".join(f"{k} (as {v})" for k, v in ARCHITECTURES.items())
        raise CheckpointError(
            f"checkpoint {path}: config.json has model_type {model_type!r}, which this lab "
            f"cannot run; supported model types: {supported}"
        )
    if not any((path / name).is_file() for name in TOKENIZER_FILES):
        raise CheckpointError(
            f"checkpoint {path}: no tokenizer files (expected {TOKENIZER_FILE} and "
            "tokenizer_config.json); save the tokenizer next to the weights with "
            "tokenizer.save_pretrained(<the same directory>)"
        )
    return CheckpointInfo(path, model_type, ARCHITECTURES[model_type], content_hash(path))


def _load_hf_tokenizer(path: Path) -> Any:
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    except (OSError, ValueError, TypeError, KeyError) as error:
        raise CheckpointError(
            f"checkpoint {path}: cannot load its tokenizer ({str(error).splitlines()[0]}); "
            "save it with tokenizer.save_pretrained into the checkpoint directory"
        ) from None
    if not getattr(tokenizer, "is_fast", False):
        raise CheckpointError(
            f"checkpoint {path}: its tokenizer is not a fast (tokenizers) one; save a "
            "tokenizer.json (PreTrainedTokenizerFast.save_pretrained writes it)"
        )
    return tokenizer


def _roles(tokenizer: Any, architecture: str, path: Path) -> dict[str, str]:
    """The special tokens by role; GPT-2 tokenizers lack pad and a pair delimiter, so the
    end-of-text token stands in for both (attention masks hide padding anyway)."""
    roles = {r: getattr(tokenizer, r) for r in ROLES if getattr(tokenizer, r, None) is not None}
    missing = [r for r in REQUIRED_ROLES[architecture] if r not in roles]
    if missing:
        raise CheckpointError(
            f"checkpoint {path}: its tokenizer has no {', '.join(missing)}, which a "
            f"{architecture} model needs to read task inputs; set it in tokenizer_config.json"
        )
    if architecture == "gpt":
        roles.setdefault("pad_token", roles["eos_token"])
        roles.setdefault("sep_token", roles["eos_token"])
        roles.setdefault("bos_token", roles["eos_token"])
    else:
        roles.setdefault("pad_token", roles["sep_token"])
    return roles


def _save_tokenizer(tokenizer: Any, architecture: str, roles: dict[str, str], out: Path) -> None:
    """tokenizer.json + meta in the layout `tokenizer_training.load_tokenizer` verifies."""
    backend = tokenizer.backend_tokenizer
    data = backend.to_str(pretty=True).encode("utf-8")
    write_bytes(out / TOKENIZER_FILE, data)
    write_json(
        out / META_FILE,
        {
            "tokenizer_id": sha256_bytes(data)[:SHORT],
            "kind": TOKENIZER_KINDS[architecture],
            "vocab_size": backend.get_vocab_size(with_added_tokens=True),
            "special_tokens": roles,
            "special_ids": {token: backend.token_to_id(token) for token in roles.values()},
            "unk_token": roles.get("unk_token"),
            "imported_from": "huggingface",
        },
    )


def _load_model(info: CheckpointInfo) -> Any:
    """The weights in our model class for the architecture (heads it lacks start fresh)."""
    classes = {"bert": BertForMaskedPositionsPreTraining, "gpt": GPT2LMHeadModel}
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # a bare encoder's missing LM head is expected, not news
    try:
        return classes[info.architecture].from_pretrained(info.path, local_files_only=True)
    except (OSError, ValueError, RuntimeError) as error:
        first = str(error).strip().splitlines()[0] if str(error).strip() else repr(error)
        raise CheckpointError(
            f"checkpoint {info.path}: cannot load the {info.model_type} weights ({first}); "
            "the directory needs config.json and model.safetensors from save_pretrained"
        ) from None
    finally:
        hf_logging.set_verbosity(verbosity)


def import_checkpoint(info: CheckpointInfo, out_dir: str | Path) -> dict[str, Any]:
    """Write the checkpoint into `out_dir` in our model layout; return what was imported.

    Write into a temporary directory (storage.atomic.atomic_dir): this is not atomic alone.
    """
    out_dir = Path(out_dir)
    tokenizer = _load_hf_tokenizer(info.path)
    roles = _roles(tokenizer, info.architecture, info.path)
    model = _load_model(info)
    vocab = model.config.vocab_size
    if len(tokenizer) != vocab:
        raise CheckpointError(
            f"checkpoint {info.path}: the tokenizer has {len(tokenizer)} tokens but the model "
            f"has {vocab} token embeddings; save the tokenizer the model was trained with "
            "(or resize the embeddings with model.resize_token_embeddings and save again)"
        )
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    _save_tokenizer(tokenizer, info.architecture, roles, out_dir / TOKENIZER_SUBDIR)
    load_pretrained(info.architecture, out_dir)  # proves the imported copy loads our way
    n_params = sum(p.numel() for p in model.parameters())
    return {
        "architecture": info.architecture,
        "model_type": info.model_type,
        "source_path": str(info.path),
        "content_hash": info.content_hash,
        "n_params": n_params,
        "vocab_size": vocab,
        "special_tokens": roles,
    }
