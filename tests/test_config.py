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


# ------------------------------------------------------------------ families and modes


def _family_lists(path: Path) -> list[int]:
    """Lines of `path` that spell out every family: a tuple, list or set of the four names, a
    Literal of them, or a dict keyed by them that `per_family` does not check."""
    import ast

    from pretrainlab.config import FAMILY_NAMES

    def names(nodes: list[ast.expr | None]) -> set[str]:
        return {n.value for n in nodes if isinstance(n, ast.Constant) and n.value in FAMILY_NAMES}

    tree = ast.parse(path.read_text(encoding="utf-8"))
    checked = {
        id(arg)
        for node in ast.walk(tree)
        if isinstance(node, ast.Call) and getattr(node.func, "id", "") == "per_family"
        for arg in node.args
    }
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Tuple | ast.List | ast.Set):
            spelled = names(node.elts)
        elif isinstance(node, ast.Dict) and id(node) not in checked:
            spelled = names(node.keys)
        else:
            continue
        if spelled == set(FAMILY_NAMES):
            found.append(node.lineno)
    return found


def test_the_family_registry_is_the_only_list_of_families(tmp_path: Path) -> None:
    sample = tmp_path / "sample.py"
    sample.write_text(
        'A = ("word2vec", "elmo", "gpt", "bert")\n'
        'B = {"bert": 1, "gpt": 2, "elmo": 3, "word2vec": 4}\n'
        'C = per_family({"bert": 1, "gpt": 2, "elmo": 3, "word2vec": 4}, "C")\n'
        'D = ("elmo", "gpt", "bert")\n'
    )
    assert _family_lists(sample) == [1, 2], "the scan must see a list, and a dict not checked"
    registry = ROOT / "pretrainlab" / "config" / "families.py"
    offenders = [
        f"{path.relative_to(ROOT)}:{line}"
        for package in ("pipelines", "tasks", "flows", "pretrainlab", "storage")
        for path in sorted((ROOT / package).rglob("*.py"))
        if path != registry
        for line in _family_lists(path)
    ]
    assert offenders == [], f"read pretrainlab.config.families instead: {offenders}"


def test_per_family_tables_must_cover_the_registry() -> None:
    from pretrainlab.config import per_family

    with pytest.raises(TypeError, match=r"missing \['bert'\], unknown \['xlnet'\]"):
        per_family({"word2vec": 1, "elmo": 2, "gpt": 3, "xlnet": 4}, "table")


def test_modes_are_parsed_at_load_and_a_misspelt_one_lists_the_valid_ones() -> None:
    from pretrainlab.config import Mode

    modes = ["frozen:layer=2", "partial:1:frozen"]
    spec = spec_from_dict({**MINIMAL, "transfer": {"modes": modes}})
    frozen, partial = spec.transfer.modes
    assert (frozen.name, frozen.layer, partial.k, partial.freeze_loaded) == ("frozen", 2, 1, True)
    assert frozen == "frozen:layer=2" and isinstance(frozen, Mode)  # keys and rows keep the text
    assert spec.transfer.model_dump(mode="json")["modes"] == ["frozen:layer=2", "partial:1:frozen"]
    with pytest.raises(SpecError) as caught:
        spec_from_dict({**MINIMAL, "transfer": {"modes": ["finetune", "partal:1"]}}, "my.yaml")
    message = str(caught.value)
    assert "transfer.modes[1]" in message and "'partal:1'" in message
    assert "scratch | frozen | frozen:layer=N | finetune | partial:k | partial:k:frozen" in message
    with pytest.raises(SpecError, match=r"lrs\.partial"):
        spec_from_dict({**MINIMAL, "transfer": {"modes": ["partial:1"], "lrs": {"frozen": [1]}}})


@pytest.mark.parametrize(
    ("transfer", "families", "expected"),
    [
        ({"adapt": {"families": ["word2vec"]}}, None, "'word2vec' has no language model"),
        ({"adapt": {"families": ["xlnet"]}}, None, "'xlnet' has no language model"),
        ({"adapt": {"families": ["bert"]}}, ["gpt"], "'bert' is neither in pretrain.families"),
        ({"checkpoints": [{"name": "gpt", "path": "x"}]}, None, "taken by a built-in family"),
    ],
)
def test_adaptation_and_checkpoint_names_are_checked_once(
    transfer: dict, families: list[str] | None, expected: str
) -> None:
    pretrain = {"families": families} if families else {}
    with pytest.raises(SpecError, match=expected):
        spec_from_dict({**MINIMAL, "transfer": transfer, "pretrain": pretrain})
    ok = {"adapt": {"families": ["mine"]}, "checkpoints": [{"name": "mine", "path": "x"}]}
    assert spec_from_dict({**MINIMAL, "transfer": ok}).transfer.adapt is not None


def test_a_task_may_run_its_own_modes_each_with_a_grid() -> None:
    """A probing task (WiC) can run only frozen modes while the sweep fine-tunes elsewhere; its
    modes parse at load like the sweep's and need a rate grid too."""
    data = {
        "corpus": {"sources": [{"path": "corpus.txt"}]},
        "transfer": {
            "modes": ["scratch", "finetune"],
            "tasks": [{"name": "wic", "kind": "wic", "train": "w.jsonl",
                       "modes": ["frozen", "frozen:layer=0"]}],
        },
    }
    spec = spec_from_dict(data)
    assert [m.layer for m in spec.transfer.tasks[0].modes] == [None, 0]
    data["transfer"]["tasks"][0]["modes"] = ["frozn"]
    with pytest.raises(SpecError, match=r"tasks\[0\]\.modes\[0\].*unknown transfer mode 'frozn'"):
        spec_from_dict(data)
    data["transfer"]["tasks"][0]["modes"] = ["frozen"]
    data["transfer"]["lrs"] = {"scratch": [1e-3], "finetune": [1e-3]}
    with pytest.raises(SpecError, match=r"tasks\[wic\]\.modes: frozen draws .* lrs\.frozen"):
        spec_from_dict(data)


MASK100 = {"name": "bert-mask100", "family": "bert",
           "set": {"mask_replace_prob": 1.0, "random_replace_prob": 0.0}}


@pytest.mark.parametrize(
    ("variant", "families", "expected"),
    [
        ({**MASK100, "set": {"mask_replace_prb": 1.0}}, None,
         r"variants\[0\] \(bert-mask100\): set\.mask_replace_prb: Extra inputs"),
        ({**MASK100, "set": {"loop": {"max_stepz": 9}}}, None, r"set\.loop\.max_stepz"),
        ({**MASK100, "set": {"mask_replace_prob": 1.0}}, None, "must be <= 1"),
        ({**MASK100, "name": "bert"}, None, "taken by a built-in family"),
        ({**MASK100, "name": "bert mask"}, None, r"variants\[0\]\.name"),
        (MASK100, ["gpt"], "'bert' is not in pretrain.families"),
    ],
)
def test_a_variant_is_checked_at_load(variant: dict, families: list | None, expected: str,
                                      tmp_path: Path) -> None:
    """A misspelt override fails when the spec is read (`pretrainlab check`), naming it."""
    pretrain = {"variants": [variant], **({"families": families} if families else {})}
    path = tmp_path / "ablation.yaml"
    path.write_text(yaml.safe_dump({**MINIMAL, "pretrain": pretrain}))
    with pytest.raises(SpecError, match=expected):
        load_spec(path)


def test_a_variant_trains_its_family_with_its_overrides() -> None:
    data = {**MINIMAL, "pretrain": {"bert": {"n_layer": 3}, "variants": [
        MASK100, {"name": "bert-long", "family": "bert", "set": {"loop": {"max_steps": 7}}}]}}
    pretrain = spec_from_dict(data).pretrain
    assert pretrain.models()[-2:] == [("bert-mask100", "bert"), ("bert-long", "bert")]
    mask100 = pretrain.resolved("bert-mask100").bert
    assert (mask100.mask_replace_prob, mask100.random_replace_prob) == (1.0, 0.0)
    assert mask100.n_layer == 3  # the experiment's own section, not the defaults, underneath
    long = pretrain.resolved("bert-long").bert.loop
    assert long.max_steps == 7 and long.batch_size == pretrain.bert.loop.batch_size
    assert pretrain.resolved("bert") == pretrain and pretrain.bert.mask_replace_prob == 0.8
    with pytest.raises(SpecError, match=r"also a transfer\.checkpoints name"):
        spec_from_dict({**data, "transfer": {"checkpoints": [{"name": "bert-long", "path": "x"}]}})
    twice = {**MINIMAL, "pretrain": {"variants": [MASK100, MASK100]}}
    with pytest.raises(SpecError, match="used twice"):
        spec_from_dict(twice)
