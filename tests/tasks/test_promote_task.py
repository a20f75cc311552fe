"""tasks.promote: the pipeline's last step on a real tiny store, under Prefect's test harness."""

from __future__ import annotations

import pytest

from pretrainlab.config import spec_from_dict
from storage import versions
from tests.storage.lab_store import Lab, make_lab

pytestmark = pytest.mark.usefixtures("prefect_harness")


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Lab:
    lab = make_lab(tmp_path_factory.mktemp("promote"))
    v1 = lab.pretrain("bert", {}, {"valid_loss": 5.0})
    v2 = lab.pretrain("bert", {}, {"valid_loss": 4.0})
    lab.pretrain("gpt", {}, {"valid_loss": 6.0})  # never transferred: cannot be ranked
    lab.transfer(v1, "bert", "polarity", "finetune", [0.5, 0.6])
    lab.transfer(v2, "bert", "polarity", "finetune", [0.4, 0.5])
    return lab


def spec(lab: Lab, **promote):
    return spec_from_dict(
        {
            "experiment": "lab",
            "store": str(lab.store),
            "tracking": {"uri": lab.uri},
            "corpus": {"sources": [{"path": "unused.txt"}]},
            "pretrain": {"families": ["bert", "gpt"]},
            "promote": promote,
        }
    )


def test_publishes_always_and_promotes_only_when_enabled(lab: Lab) -> None:
    from tasks.promote import promote_versions

    off = promote_versions.fn(spec(lab))
    assert off["published_metrics"] == 2 + 2 and off["decisions"] == []
    assert "champion" not in lab.client.get_registered_model("lab-bert").aliases

    on = promote_versions.fn(spec(lab, enabled=True, margin=0.01))
    assert on["published_metrics"] == 0  # nothing changed since
    assert [d["name"] for d in on["decisions"]] == ["lab-bert"]
    assert on["decisions"][0]["best"] == 1 and on["decisions"][0]["applied"]
    assert "lab-gpt" in on["skipped"]
    assert str(lab.client.get_registered_model("lab-bert").aliases["champion"]) == "1"


def test_a_rule_that_matches_nothing_fails_the_step(lab: Lab) -> None:
    from tasks.promote import promote_versions

    with pytest.raises(versions.VersionError, match="sentiment"):
        promote_versions.fn(spec(lab, enabled=True, tasks=["sentiment"]))
