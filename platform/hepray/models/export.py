"""Export a trained model to ONNX with one named input per model input and a dynamic batch axis."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from hepray.models.common import PositionalInputs


def export_onnx(model: nn.Module, input_shapes: dict[str, tuple[int, ...]], path: str | Path) -> Path:
    names = list(input_shapes)
    example = tuple(torch.zeros(2, *shape) for shape in input_shapes.values())
    torch.onnx.export(
        PositionalInputs(model.eval(), names), example, str(path), dynamo=False,
        input_names=names, output_names=["output"],
        dynamic_axes={name: {0: "batch"} for name in [*names, "output"]},
    )
    return Path(path)
