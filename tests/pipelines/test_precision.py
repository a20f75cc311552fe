"""CPU bf16 autocast: when `compute.cpu_autocast` turns it on, and that it reaches the loop's
forward passes (loss parity with fp32 is tested per family in test_training.py and
test_bert.py, on their corpora)."""

from __future__ import annotations

import pytest
import torch

from pipelines.training.precision import autocast, cpu_autocast_active, cpu_has_bf16
from pipelines.training.pretraining import cpu_autocast
from pretrainlab.config import spec_from_dict

CPU, CUDA = torch.device("cpu"), torch.device("cuda")


def test_on_and_off_force_it_and_auto_follows_the_cpu():
    assert cpu_autocast_active("on", CPU) is True
    assert cpu_autocast_active("off", CPU) is False
    assert cpu_autocast_active("auto", CPU) is cpu_has_bf16()


def test_cuda_never_uses_the_cpu_setting_and_always_autocasts():
    assert cpu_autocast_active("on", CUDA) is False
    with autocast(CPU, cpu_bf16=True):
        assert torch.is_autocast_enabled("cpu")
        assert torch.get_autocast_dtype("cpu") == torch.bfloat16
    with autocast(CPU, cpu_bf16=False):
        assert not torch.is_autocast_enabled("cpu")


def test_cpuinfo_flags_agree_with_torchs_probe():
    """This machine's CPU (AVX-512 BF16) is detected by both ways of asking."""
    from pathlib import Path

    cpuinfo = Path("/proc/cpuinfo")
    if not cpuinfo.exists():
        pytest.skip("no /proc/cpuinfo")
    flags = set(cpuinfo.read_text().split())
    assert cpu_has_bf16() == bool({"avx512_bf16", "amx_bf16"} & flags)


@pytest.mark.parametrize("setting", ["on", "off"])
def test_the_spec_setting_reaches_torch_families_not_word2vec(setting):
    spec = spec_from_dict(
        {
            "corpus": {"sources": [{"dataset": "lee-news"}]},
            "compute": {"cpu_autocast": setting},
            "pretrain": {"gpt": {"loop": {"device": "cpu"}}},
        }
    )
    assert cpu_autocast(spec, "gpt") is (setting == "on")
    assert cpu_autocast(spec, "elmo") is (setting == "on")
    assert cpu_autocast(spec, "word2vec") is False


def test_auto_leaves_elmo_in_fp32_and_follows_the_cpu_for_transformers():
    spec = spec_from_dict({"corpus": {"sources": [{"dataset": "lee-news"}]}})
    assert spec.compute.cpu_autocast == "auto"
    assert cpu_autocast(spec, "elmo") is False  # no oneDNN bf16 LSTM: slower, not faster
    for family in ("gpt", "bert"):
        expected = cpu_has_bf16() and not torch.cuda.is_available()
        assert cpu_autocast(spec, family) is expected


def test_a_bad_setting_is_refused():
    from pretrainlab.config import SpecError

    with pytest.raises(SpecError, match="cpu_autocast"):
        spec_from_dict(
            {"corpus": {"sources": [{"dataset": "lee-news"}]}, "compute": {"cpu_autocast": "yes"}}
        )
