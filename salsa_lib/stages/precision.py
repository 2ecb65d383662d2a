"""Training precision chosen by the hardware: ``precision = "auto"`` resolves here, once per process.

The paper trains in fp16 AMP on a GPU. On a CPU, bf16 autocast only pays where the CPU computes
bf16 natively (AVX-512 BF16 or AMX on x86, the BF16 extension on Arm); elsewhere PyTorch emulates
it and a bf16 matmul runs ~100 times slower than fp32, so those CPUs train in fp32.
"""

from __future__ import annotations

import functools
import multiprocessing
import os
import platform
from pathlib import Path

import torch

from salsa_lib.errors import ConfigError

AUTO = "auto"
GPU_PRECISION = "16-mixed"  # the paper's fp16 AMP
CPU_BF16_PRECISION = "bf16-mixed"
CPU_FP32_PRECISION = "32-true"
# /proc/cpuinfo flags of a CPU with native bf16 arithmetic: x86 (AVX-512 BF16, AMX) and Arm (BF16)
NATIVE_BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16", "bf16"})
CPUINFO = Path("/proc/cpuinfo")
# "0" or "1": answer the capability question instead of the CPU (to time on one machine what a CPU
# without native bf16 would run, e.g. the test suite); unset: ask the CPU
NATIVE_BF16_ENV = "SALSA_CPU_BF16"


def cpu_flags(cpuinfo: Path = CPUINFO) -> frozenset[str]:
    """The CPU's feature flags (x86 ``flags``, Arm ``Features``); empty where the file does not exist."""
    try:
        text = cpuinfo.read_text()
    except OSError:
        return frozenset()
    flags: set[str] = set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip().lower() in ("flags", "features"):
            flags.update(value.split())
    return frozenset(flags)


VECTOR_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16")  # what decides fp32 and bf16 speed on x86


def cpu_description(cpuinfo: Path = CPUINFO) -> str:
    """The CPU's model name and its vector extensions, e.g. 'AMD EPYC (avx2, avx512f, avx512_bf16)':
    the CPU kind a timing must be read with."""
    try:
        names = [line.partition(":")[2].strip() for line in cpuinfo.read_text().splitlines()
                 if line.lower().startswith("model name")]
    except OSError:
        names = []
    extensions = [flag for flag in VECTOR_FLAGS if flag in cpu_flags(cpuinfo)]
    return f"{names[0] if names else platform.processor() or platform.machine()} ({', '.join(extensions) or 'no AVX2'})"


def cpu_has_native_bf16(cpuinfo: Path = CPUINFO) -> bool:
    """Whether this CPU computes bf16 natively (Apple silicon, without /proc/cpuinfo, is taken as not)."""
    return bool(cpu_flags(cpuinfo) & NATIVE_BF16_FLAGS)


def cpu_record() -> dict:
    """What a benchmark file stores so its timings are read with the CPU kind they were measured on."""
    return {"cpu": cpu_description(), "cpu_native_bf16": cpu_has_native_bf16()}


def uses_gpu(accelerator: str) -> bool:
    """Lightning's rule for ``accelerator``: gpu, or auto on a machine with CUDA."""
    return accelerator == "gpu" or (accelerator == "auto" and torch.cuda.is_available())


def resolve(precision: str, accelerator: str, native_bf16: bool | None = None) -> str:
    """The Lightning precision to train with: ``precision`` itself unless it is ``auto``.

    ``native_bf16``: the CPU's answer, injected by tests; None asks this machine.
    """
    if precision != AUTO:
        return precision
    if uses_gpu(accelerator):
        return GPU_PRECISION
    if native_bf16 is None:
        told = os.environ.get(NATIVE_BF16_ENV, "")
        if told not in ("", "0", "1"):
            raise ConfigError(f"{NATIVE_BF16_ENV}={told!r}: set it to 0 or 1, or unset it")
        native_bf16 = told == "1" if told else cpu_has_native_bf16()
    return CPU_BF16_PRECISION if native_bf16 else CPU_FP32_PRECISION


def as_trained(identity: dict) -> dict:
    """A run's identity with ``precision`` as it trains here (``auto`` resolved by ``resolve``).

    "auto" names a rule, not a precision: recorded as such, a member trained in bf16 on one machine
    would be reused, or resumed from its last checkpoint, in fp32 on another. Recording what ``auto``
    became makes a change of resolved precision a change of the run, which retrains it.
    """
    return {**identity, "precision": resolve(identity["precision"], identity.get("accelerator", "auto"))}


def reason(resolved: str) -> str:
    """Why ``auto`` chose ``resolved``, in words for the log."""
    told = os.environ.get(NATIVE_BF16_ENV)
    if told and resolved != GPU_PRECISION:
        return f"{NATIVE_BF16_ENV}={told} answered for the CPU"
    return {GPU_PRECISION: "a GPU: the paper's fp16 AMP",
            CPU_BF16_PRECISION: f"this CPU ({platform.machine()}) computes bf16 natively",
            CPU_FP32_PRECISION: f"this CPU ({platform.machine()}) has no native bf16, where bf16 autocast "
                                "is ~100x slower than fp32"}.get(resolved, "set explicitly")


def announce(precision: str, accelerator: str) -> str:
    """``resolve`` for this machine, printed once per notebook process and outcome (the reader sees what
    ran; worker processes, which resolve the same, stay silent).

    Resolved at every call: only the printing is remembered, so a changed answer is never stale.
    """
    resolved = resolve(precision, accelerator)
    _print_once(precision, resolved)
    return resolved


@functools.cache
def _print_once(precision: str, resolved: str) -> None:
    if multiprocessing.parent_process() is not None:  # a worker of parallel_runs: its parent said it
        return
    origin = f"auto -> {resolved} ({reason(resolved)})" if precision == AUTO else f"{resolved} (set explicitly)"
    print(f"training precision: {origin}", flush=True)


def autocast_dtype(resolved: str) -> torch.dtype | None:
    """The autocast dtype of a resolved Lightning precision; None: full precision (no autocast)."""
    if resolved.startswith("bf16"):
        return torch.bfloat16
    if resolved.startswith("16"):
        return torch.float16
    return None
