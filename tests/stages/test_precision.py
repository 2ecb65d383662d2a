"""Similarity logits stay fp32 under mixed precision (the original computed them in fp32 under fp16 AMP)."""

from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from salsa_lib.core.model import DualEncoder
from salsa_lib.errors import ConfigError
from salsa_lib.stages import precision
from salsa_lib.stages.correspondences import ensemble_logits


def _unit(*shape, seed=0):
    return F.normalize(torch.randn(*shape, generator=torch.Generator().manual_seed(seed)), dim=-1)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_student_logits_are_fp32_under_cpu_autocast(dtype):
    audio, captions = _unit(8, 64), _unit(8, 64, seed=1)
    model = SimpleNamespace(tau=torch.tensor(0.05))
    reference = DualEncoder.logits(model, audio, captions)
    with torch.autocast("cpu", dtype=dtype):
        logits = DualEncoder.logits(model, audio, captions)
        low = DualEncoder.logits(model, audio.to(dtype), captions.to(dtype))  # embeddings already in bf16
    assert logits.dtype == torch.float32 and torch.equal(logits, reference)
    assert low.dtype == torch.float32
    # what fp32 buys: at |S| ~ 20 bf16 would round to steps of 0.125
    assert (reference - reference.to(dtype).float()).abs().max() > 1e-3


def test_teacher_logits_are_fp32_under_cpu_autocast():
    audio, captions = _unit(3, 8, 64), _unit(3, 8, 64, seed=1)
    reference = ensemble_logits(audio, captions, 0.05)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = ensemble_logits(audio, captions, 0.05)
    assert logits.dtype == torch.float32 and torch.equal(logits, reference)


# --------------------------------------------------------------------------- precision = auto


def test_auto_picks_bf16_only_where_the_cpu_computes_it_natively(monkeypatch):
    monkeypatch.setattr(precision.torch.cuda, "is_available", lambda: False)
    assert precision.resolve("auto", "auto", native_bf16=True) == "bf16-mixed"
    assert precision.resolve("auto", "cpu", native_bf16=False) == "32-true"
    assert precision.resolve("auto", "auto", native_bf16=False) == "32-true"


def test_the_capability_answer_can_be_given_in_the_environment(monkeypatch):
    monkeypatch.setattr(precision.torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: True)  # this CPU would say yes
    monkeypatch.setenv(precision.NATIVE_BF16_ENV, "0")
    assert precision.resolve("auto", "cpu") == "32-true"
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: False)
    monkeypatch.setenv(precision.NATIVE_BF16_ENV, "1")
    assert precision.resolve("auto", "cpu") == "bf16-mixed"
    monkeypatch.delenv(precision.NATIVE_BF16_ENV)
    assert precision.resolve("auto", "cpu") == "32-true"  # unset: the CPU answers
    monkeypatch.setenv(precision.NATIVE_BF16_ENV, "yes")
    with pytest.raises(ConfigError, match="SALSA_CPU_BF16='yes'"):
        precision.resolve("auto", "cpu")


def test_auto_picks_the_papers_fp16_amp_on_a_gpu(monkeypatch):
    assert precision.resolve("auto", "gpu", native_bf16=False) == "16-mixed"
    monkeypatch.setattr(precision.torch.cuda, "is_available", lambda: True)
    assert precision.resolve("auto", "auto", native_bf16=False) == "16-mixed"
    assert precision.resolve("auto", "cpu", native_bf16=True) == "bf16-mixed"  # a GPU, but the run asks for the CPU


def test_an_explicit_precision_is_kept_whatever_the_hardware():
    assert precision.resolve("32-true", "cpu", native_bf16=True) == "32-true"
    assert precision.resolve("bf16-mixed", "cpu", native_bf16=False) == "bf16-mixed"


@pytest.mark.parametrize("flags, native", [
    ("fpu sse avx2 fma avx512f avx512_bf16 amx_tile", True),  # Sapphire Rapids
    ("fpu sse avx2 fma avx512f avx512bw avx512vl", False),  # Skylake-SP: AVX-512 without BF16
    ("fpu sse avx2 fma sha_ni", False),  # Zen 3: AVX2 only
])
def test_the_capability_check_reads_the_cpu_flags(tmp_path, flags, native):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(f"processor\t: 0\nflags\t\t: {flags}\n\nprocessor\t: 1\nflags\t\t: {flags}\n")
    assert precision.cpu_has_native_bf16(cpuinfo) is native


def test_arm_features_and_a_missing_cpuinfo(tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nFeatures\t: fp asimd sve bf16 i8mm\n")
    assert precision.cpu_has_native_bf16(cpuinfo)
    assert not precision.cpu_has_native_bf16(tmp_path / "absent")


def test_the_stage_configs_default_to_auto_and_refuse_unknown_precisions():
    from salsa_lib.config import Stage1Config, Stage2Config
    from salsa_lib.errors import ConfigError
    from salsa_lib.profiles import PROFILES

    assert Stage1Config().precision == Stage2Config().precision == "auto"
    assert PROFILES["clotho-dryrun"].stage1.precision == "auto"  # the dry run follows the machine too
    with pytest.raises(ConfigError, match="precision='bf16'"):
        Stage1Config(precision="bf16")


def test_announce_resolves_every_time_and_prints_once(monkeypatch, capsys):
    """Only the printing is remembered: a changed answer (another test's, an env var) is never stale."""
    monkeypatch.setattr(precision.torch.cuda, "is_available", lambda: False)
    monkeypatch.delenv(precision.NATIVE_BF16_ENV, raising=False)  # the CPU answers here, not the environment
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: True)
    assert precision.announce("auto", "cpu") == "bf16-mixed"
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: False)
    assert [precision.announce("auto", "cpu") for _ in range(2)] == ["32-true", "32-true"]
    assert capsys.readouterr().out.count("auto -> 32-true") <= 1


def test_cpu_description_names_the_model_and_the_vector_extensions(tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nmodel name\t: AMD EPYC 7B13\nflags\t\t: fpu sse avx2 fma\n")
    assert precision.cpu_description(cpuinfo) == "AMD EPYC 7B13 (avx2)"
    cpuinfo.write_text("model name\t: Some CPU\nflags\t: avx2 avx512f avx512_bf16 amx_bf16\n")
    assert precision.cpu_description(cpuinfo) == "Some CPU (avx2, avx512f, avx512_bf16, amx_bf16)"
