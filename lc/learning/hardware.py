"""What the machine offers: native bfloat16 on the CPU, the precision an ``auto`` setting means.

bfloat16 autocast pays off only where the CPU computes it natively (AVX-512 BF16 or AMX);
elsewhere it is emulated and slower than float32, so ``auto`` is detected, never assumed.
"""

from __future__ import annotations

import re
from functools import cache
from pathlib import Path

import torch

CPU_FLAGS = Path("/proc/cpuinfo")
NATIVE_BF16 = re.compile(r"\b(avx512_bf16|amx_bf16)\b")


@cache
def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bfloat16 natively (its flags list AVX-512 BF16 or AMX BF16)."""
    try:
        return NATIVE_BF16.search(CPU_FLAGS.read_text()) is not None
    except OSError:  # no /proc (macOS, Windows): fall back to float32
        return False


def uses_cuda(accelerator: str) -> bool:
    return accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available())


def resolve_precision(precision: str, accelerator: str) -> str:
    """A Lightning precision for ``precision`` (``auto``: bf16-mixed where the hardware has it)."""
    if precision != "auto":
        return precision
    if uses_cuda(accelerator):
        return "bf16-mixed" if torch.cuda.is_bf16_supported() else "16-mixed"
    return "bf16-mixed" if cpu_has_native_bf16() else "32-true"


INFERENCE_DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def inference_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of a prediction (None: float32). ``auto``: bfloat16 on a CUDA device that
    has it (else float16) and on a CPU that computes it natively, float32 elsewhere."""
    if precision != "auto":
        if precision not in INFERENCE_DTYPES:
            raise ValueError(f"precision must be auto, fp32, bf16 or fp16, got {precision!r}")
        return INFERENCE_DTYPES[precision]
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16 if cpu_has_native_bf16() else None


def precision_name(dtype: torch.dtype | None) -> str:
    return {value: key for key, value in INFERENCE_DTYPES.items()}[dtype]
