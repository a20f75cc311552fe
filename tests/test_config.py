"""The experiment spec: defaults, strictness, error messages, overrides, shipped configs."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from pretrainlab.config import PretrainlabError, SpecError, load_spec, spec_from_dict

ROOT = Path(__file__).resolve().parents[1]
MINIMAL = {"corpus": {"sources": [{"path": "corpus.txt"}]}}


def test_minimal_spec_fills_every_default() -> None:
    spec = spec_from_dict(MINIMAL)
    assert spec.experiment == "pretrainlab"
    assert spec.tokenizers.bert.kind == "wordpiece"
    assert spec.pretrain.bert.mask_replace_prob == 0.8
    assert spec.pretrain.families == ["word2vec", "elmo", "gpt", "bert"]


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        ({"corpus": {"sources": [{"path": "x", "extra": 1}]}}, "corpus.sources[0].extra"),
        ({"corpus": {"sources": []}}, "corpus.sources"),
        ({"corpus": {"sources": [{"path": "x", "dataset": "y"}]}}, "exactly one of"),
        ({**MINIMAL, "tokenizers": {"gpt": {"vocab_size": 10}}}, "tokenizers.gpt.vocab_size"),
        ({**MINIMAL, "pretrain": {"bert": {"mask_replace_prob": 0.9,
                                           "random_replace_prob": 0.2}}}, "pretrain.bert"),
        ({**MINIMAL, "pretrain": {"families": ["gpt", "xlnet"]}}, "pretrain.families[1]"),
        ({**MINIMAL, "pretrain": {"gpt": {"loop": {"batch_size": 10, "grad_accum": 3}}}},
         "not divisible"),
        ({**MINIMAL, "experiment": "has space"}, "experiment"),
    ],
)
def test_bad_fields_name_their_yaml_path(data: dict, expected: str) -> None:
    with pytest.raises(SpecError) as caught:
        spec_from_dict(data, "my.yaml")
    assert caught.value.args[0].startswith("my.yaml:")
    assert expected in str(caught.value)
    assert isinstance(caught.value, PretrainlabError)


def test_load_spec_errors_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match="not found"):
        load_spec(tmp_path / "absent.yaml")
    broken = tmp_path / "broken.yaml"
    broken.write_text("corpus: [unclosed\n")
    with pytest.raises(SpecError, match=r"broken\.yaml: not valid YAML"):
        load_spec(broken)
    listing = tmp_path / "list.yaml"
    listing.write_text("- a\n- b\n")
    with pytest.raises(SpecError, match="must be a YAML mapping"):
        load_spec(listing)


def test_overrides_parse_values_as_yaml(tmp_path: Path) -> None:
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(MINIMAL))
    spec = load_spec(path, ["corpus.valid_fraction=0.25", "pretrain.families=[gpt]",
                            "pretrain.gpt.loop.max_steps=7"])
    assert spec.corpus.valid_fraction == 0.25
    assert spec.pretrain.families == ["gpt"]
    assert spec.pretrain.gpt.loop.max_steps == 7
    with pytest.raises(SpecError, match="KEY=VALUE"):
        load_spec(path, ["nonsense"])


def test_tracking_uri_precedence(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    spec = spec_from_dict({**MINIMAL, "store": str(tmp_path)})
    assert spec.tracking_uri() == f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    assert spec.tracking_uri() == "http://127.0.0.1:5000"
    explicit = spec_from_dict({**MINIMAL, "tracking": {"uri": "sqlite:////x.db"}})
    assert explicit.tracking_uri() == "sqlite:////x.db"


@pytest.mark.parametrize("name", ["demo.yaml", "showcase.yaml", "full.yaml"])
def test_shipped_configs_validate(name: str) -> None:
    load_spec(ROOT / "configs" / name)


def test_prefect_yaml_default_parameters_equal_the_demo_spec() -> None:
    deployments = yaml.safe_load((ROOT / "prefect.yaml").read_text())["deployments"]
    demo = yaml.safe_load((ROOT / "configs" / "demo.yaml").read_text())
    for deployment in deployments:
        assert deployment["parameters"]["spec"] == demo, deployment["name"]


def test_full_example_is_generated_from_the_spec() -> None:
    from pretrainlab.config import example_spec_yaml

    assert (ROOT / "configs" / "full.yaml").read_text() == example_spec_yaml(), (
        "regenerate: pretrainlab check --example > configs/full.yaml"
    )
