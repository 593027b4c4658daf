"""Export a trained model to ONNX with one named input per model input and a dynamic batch axis,
and check the export against ONNX Runtime."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from hepray.models.common import PositionalInputs


def export_onnx(model: nn.Module, input_shapes: dict[str, tuple[int, ...]], path: str | Path) -> Path:
    names = list(input_shapes)
    example = tuple(torch.zeros(2, *shape) for shape in input_shapes.values())
    torch.onnx.export(
        PositionalInputs(model.eval(), names),
        example,
        str(path),
        dynamo=False,
        input_names=names,
        output_names=["output"],
        dynamic_axes={name: {0: "batch"} for name in [*names, "output"]},
    )
    return Path(path)


def onnx_max_difference(
    model: nn.Module, input_shapes: dict[str, tuple[int, ...]], path: str | Path, events: int = 16, seed: int = 0
) -> float:
    """Largest |PyTorch - ONNX Runtime| output difference on a batch of random non-negative inputs."""
    import onnxruntime

    generator = torch.Generator().manual_seed(seed)
    inputs = {name: torch.rand(events, *shape, generator=generator) for name, shape in input_shapes.items()}
    with torch.no_grad():
        expected = model.eval()(inputs).numpy()
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(None, {name: value.numpy() for name, value in inputs.items()})[0]
    return float(abs(got - expected).max())
