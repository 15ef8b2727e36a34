"""Numeric precision of training: the Keras dtype policy ``train.mixed_precision`` asks for, and
what ``auto`` picks for the hardware and the backbone."""

from __future__ import annotations

import sys
from pathlib import Path


def cpu_supports_bf16() -> bool:
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


# Backbones built on depthwise convolutions: on CPU their bfloat16 training is slower than float32
# (oneDNN has no fast bfloat16 depthwise backward pass; measured 0.6x for mobilenet and efficientnet
# with AVX512_BF16, docs/PERFORMANCE.md), so 'auto' keeps them in float32 there.
_DEPTHWISE_BACKBONES = ("mobilenet", "efficientnet")


def resolve_precision(requested: str, backbone: str | None = None) -> str:
    """Map train.mixed_precision to a Keras policy name; 'auto' picks what the hardware does well
    (for ``backbone``, when given: depthwise-convolution backbones stay float32 on CPU)."""
    import tensorflow as tf

    has_gpu = bool(tf.config.list_physical_devices("GPU"))
    if requested == "auto":
        if has_gpu:
            return "mixed_float16"
        if cpu_supports_bf16():
            if backbone in _DEPTHWISE_BACKBONES:
                print(f"mixed precision: {backbone} trains slower in bfloat16 than float32 on CPU; using float32",
                      file=sys.stderr)
                return "float32"
            return "mixed_bfloat16"
        print("mixed precision: this CPU has no bfloat16 support; using float32", file=sys.stderr)
        return "float32"
    if requested == "bfloat16":
        if not has_gpu and not cpu_supports_bf16():
            print("mixed precision: bfloat16 requested but this CPU lacks AVX512_BF16/AMX; it will be slow",
                  file=sys.stderr)
        return "mixed_bfloat16"
    if requested == "float16":
        return "mixed_float16"
    return "float32"
