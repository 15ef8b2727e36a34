"""train.mixed_precision=auto: what ``resolve_precision`` picks for the hardware and the backbone."""

from __future__ import annotations

import pytest

from tripletface import train as T


@pytest.fixture
def cpu_only(monkeypatch):
    import tensorflow as tf

    monkeypatch.setattr(tf.config, "list_physical_devices", lambda kind=None: [])


def test_auto_on_a_bf16_cpu_keeps_depthwise_backbones_in_float32(cpu_only, monkeypatch, capsys):
    monkeypatch.setattr(T, "cpu_supports_bf16", lambda: True)
    assert T.resolve_precision("auto", "resnet50") == "mixed_bfloat16"
    assert T.resolve_precision("auto", "small_cnn") == "mixed_bfloat16"
    assert T.resolve_precision("auto") == "mixed_bfloat16"
    for backbone in ("mobilenet", "efficientnet"):
        assert T.resolve_precision("auto", backbone) == "float32"
        assert f"{backbone} trains slower in bfloat16" in capsys.readouterr().err
    # an explicit request is obeyed
    assert T.resolve_precision("bfloat16", "mobilenet") == "mixed_bfloat16"


def test_auto_without_bf16_falls_back_to_float32_with_a_message(cpu_only, monkeypatch, capsys):
    monkeypatch.setattr(T, "cpu_supports_bf16", lambda: False)
    assert T.resolve_precision("auto", "resnet50") == "float32"
    assert "no bfloat16 support" in capsys.readouterr().err
