"""Model families: config validation, forward shapes, gradients, scalar handling, ONNX export."""

from __future__ import annotations

import io

import numpy as np
import pydantic
import pytest
import torch
from pydantic import TypeAdapter

from hepray.models import MODEL_FAMILIES, ModelConfig, build_model
from hepray.models.common import PositionalInputs

ADAPTER = TypeAdapter(ModelConfig)

# Tiny configs (as they would come out of YAML) so the whole file runs in seconds.
TINY = {
    "seed_cnn": {"name": "seed_cnn", "filters": 4, "blocks": 2, "dense": 8},
    "calo3d": {"name": "calo3d", "filters": 2, "dense": 16},
    "cvn": {"name": "cvn", "width": 0.125, "tower_inception": 1, "merged_inception": 1},
    "film": {"name": "film", "filters": 4, "blocks": 2, "dense": 8, "film_hidden": 8},
    "resnet": {"name": "resnet", "widths": [4, 8], "depth": 1},
    "deepsets": {"name": "deepsets", "phi": [8, 8], "head": [8]},
    "particlenet": {"name": "particlenet", "k": 3, "blocks": [[8, 8], [8, 16]], "head": [8]},
    "transformer": {
        "name": "transformer",
        "dim": 8,
        "heads": 2,
        "layers": 1,
        "class_layers": 1,
        "ffn": 16,
        "head": [8],
        "pair_features": {"eta": 0, "phi": 1, "pt": 2},
        "pair_hidden": [4],
    },
    "combined": {
        "name": "combined",
        "towers": {"image": {"name": "resnet", "widths": [4], "depth": 1}, "cands": {"name": "deepsets", "phi": [8]}},
        "head": [8],
    },
}

# (family, input shapes): odd sizes, with and without scalars where the family allows it.
CASES = [
    ("seed_cnn", {"image": (1, 47, 47)}),
    ("seed_cnn", {"image": (2, 13, 20), "scalars": (3,)}),
    ("calo3d", {"ecal": (1, 25, 25, 25), "hcal": (1, 5, 5, 60)}),
    ("calo3d", {"ecal": (2, 7, 9, 3), "energy": (1,), "hcal": (1, 5, 5, 60), "pos": (2,)}),
    ("cvn", {"xview": (1, 47, 47), "yview": (1, 47, 47)}),
    ("cvn", {"xview": (1, 47, 47), "yview": (2, 31, 40), "scalars": (4,)}),  # unequal views
    ("cvn", {"view": (3, 5, 7)}),
    ("film", {"cells": (4, 17, 17), "scalars": (6,)}),
    ("film", {"cells": (3, 5, 5, 7), "eta": (1,), "mu": (2,)}),  # 3-D cells, two scalar inputs
    ("resnet", {"image": (1, 47, 47)}),
    ("resnet", {"hcal": (1, 5, 5, 60), "scalars": (2,)}),
    # points [max_points, mask + features]; randn inputs make the mask channel real where > 0.5
    ("deepsets", {"cands": (12, 5)}),
    ("deepsets", {"cands": (9, 2), "jet": (3,)}),
    ("particlenet", {"cands": (12, 5)}),
    ("particlenet", {"cands": (9, 3), "jet": (3,)}),
    ("transformer", {"cands": (12, 5), "jet": (3,)}),
    ("combined", {"image": (1, 9, 9), "cands": (12, 5)}),
    ("combined", {"cands": (9, 3), "image": (2, 9, 11), "jet": (3,)}),
]


def make_inputs(shapes: dict[str, tuple[int, ...]], batch: int, seed: int = 0) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return {name: torch.randn(batch, *shape, generator=generator) for name, shape in shapes.items()}


def tiny_model(family: str, shapes: dict, n_outputs: int = 1, **overrides) -> torch.nn.Module:
    torch.manual_seed(0)
    config = ADAPTER.validate_python({**TINY[family], **overrides})
    return build_model(config, shapes, n_outputs)


def test_every_family_has_a_tiny_config_and_cases():
    assert set(TINY) == set(MODEL_FAMILIES)
    assert {family for family, _ in CASES} == set(MODEL_FAMILIES)


@pytest.mark.parametrize("n_outputs", [1, 3])
@pytest.mark.parametrize("family,shapes", CASES, ids=[f"{f}-{'-'.join(s)}" for f, s in CASES])
def test_forward_shape_finite_and_gradients(family, shapes, n_outputs):
    model = tiny_model(family, shapes, n_outputs)
    batch = 3
    out = model(make_inputs(shapes, batch))
    assert out.shape == (batch, n_outputs)
    assert torch.isfinite(out).all()

    out.pow(2).mean().backward()
    first = next(p for p in model.parameters() if p.dim() > 1)  # first conv's weights
    assert first.grad is not None and first.grad.abs().sum() > 0
    unused = [name for name, p in model.named_parameters() if p.grad is None]
    assert not unused, f"parameters not reached by the loss: {unused}"

    model.eval()
    with torch.no_grad():
        out = model(make_inputs(shapes, 2, seed=1))
    assert out.shape == (2, n_outputs) and torch.isfinite(out).all()


@pytest.mark.parametrize("family", sorted(MODEL_FAMILIES))
def test_defaults_build(family):
    """Every family builds with only `name` given (its defaults) on a typical input."""
    shapes = {
        "seed_cnn": {"image": (1, 47, 47)},
        "calo3d": {"ecal": (1, 25, 25, 25), "hcal": (1, 5, 5, 60)},
        "cvn": {"xview": (1, 64, 64), "yview": (1, 64, 64)},
        "film": {"cells": (4, 32, 32), "scalars": (6,)},
        "resnet": {"image": (1, 47, 47)},
        "deepsets": {"cands": (30, 5)},
        "particlenet": {"cands": (30, 5)},
        "transformer": {"cands": (30, 5)},
        "combined": {"image": (1, 33, 33), "cands": (30, 5)},  # default towers: resnet, particlenet
    }[family]
    model = build_model(ADAPTER.validate_python({"name": family}), {k: list(v) for k, v in shapes.items()}, 2)
    model.eval()
    with torch.no_grad():
        assert model(make_inputs(shapes, 2)).shape == (2, 2)


BAD_VALUES = [
    ("seed_cnn", {"filters": 0}),
    ("seed_cnn", {"head": "median"}),
    ("calo3d", {"filters": 0}),
    ("calo3d", {"pool": 0}),
    ("calo3d", {"dropout": 1.0}),
    ("cvn", {"width": 0}),
    ("cvn", {"tower_inception": -1}),
    ("film", {"filters": 0}),
    ("film", {"film_hidden": 0}),
    ("resnet", {"widths": [16, 0]}),
    ("resnet", {"widths": []}),
    ("resnet", {"depth": 0}),
]


@pytest.mark.parametrize("family,bad", BAD_VALUES)
def test_bad_value_is_a_validation_error(family, bad):
    with pytest.raises(pydantic.ValidationError):
        ADAPTER.validate_python({**TINY[family], **bad})


@pytest.mark.parametrize("family", sorted(MODEL_FAMILIES))
def test_unknown_key_is_a_validation_error(family):
    with pytest.raises(pydantic.ValidationError):
        ADAPTER.validate_python({**TINY[family], "filtres": 8})


def test_unknown_family_is_a_validation_error():
    with pytest.raises(pydantic.ValidationError):
        ADAPTER.validate_python({"name": "graphnet"})


def test_input_mismatches_are_clear_value_errors():
    with pytest.raises(ValueError, match="scalar"):
        tiny_model("film", {"cells": (4, 17, 17)})
    with pytest.raises(ValueError, match="2-D"):
        tiny_model("cvn", {"ecal": (1, 5, 5, 5)})
    with pytest.raises(ValueError, match="unknown input"):
        tiny_model("calo3d", {"ecal": (1, 9, 9, 9)}, inputs=["ecal", "hcal"])
    with pytest.raises(ValueError, match="3-D"):
        tiny_model("calo3d", {"ecal": (1, 9, 9, 9), "image": (1, 9, 9)}, inputs=["image"])


def test_calo3d_branch_selection():
    shapes = {"ecal": (1, 9, 9, 9), "hcal": (1, 5, 5, 60)}
    both = tiny_model("calo3d", shapes)
    only_ecal = tiny_model("calo3d", shapes, inputs=["ecal"])
    assert len(both.branches) == 2 and only_ecal.names == ["ecal"]
    assert only_ecal(make_inputs(shapes, 2)).shape == (2, 1)


def test_calo3d_profile_is_the_depth_sum_of_each_image():
    shapes = {"ecal": (1, 9, 9, 9), "hcal": (1, 5, 5, 60)}
    model = tiny_model("calo3d", shapes, profile=True)
    plain = tiny_model("calo3d", shapes)
    inputs = make_inputs(shapes, 2)
    hcal = model.branches[1]
    assert hcal.n_features == plain.branches[1].n_features + 60
    features = hcal(inputs["hcal"])
    torch.testing.assert_close(features[:, -60:], inputs["hcal"].sum(dim=(2, 3)).flatten(1))
    assert model(inputs).shape == (2, 1)


def test_calo3d_transverse_is_the_face_on_map_after_the_profile():
    shapes = {"ecal": (1, 9, 9, 9), "hcal": (1, 5, 5, 60)}
    model = tiny_model("calo3d", shapes, profile=True, transverse=True)
    plain = tiny_model("calo3d", shapes)
    inputs = make_inputs(shapes, 2)
    hcal = model.branches[1]
    assert hcal.n_features == plain.branches[1].n_features + 60 + 25
    features = hcal(inputs["hcal"])
    torch.testing.assert_close(features[:, -85:-25], inputs["hcal"].sum(dim=(2, 3)).flatten(1))
    torch.testing.assert_close(features[:, -25:], inputs["hcal"].sum(dim=4).flatten(1))
    assert model(inputs).shape == (2, 1)


def test_film_output_depends_on_scalars():
    shapes = {"cells": (4, 17, 17), "scalars": (6,)}
    model = tiny_model("film", shapes, 3).eval()
    inputs = make_inputs(shapes, 2)
    changed = {**inputs, "scalars": inputs["scalars"] + 1.0}
    with torch.no_grad():
        assert not torch.allclose(model(inputs), model(changed))
    # ... and through the FiLM blocks, not only the head: the conv features change too.
    with torch.no_grad():
        z, z2 = inputs["scalars"], changed["scalars"]
        block = model.blocks[0]
        assert not torch.allclose(block(inputs["cells"], z), block(inputs["cells"], z2))


@pytest.mark.parametrize("head", ["flatten", "max", "avg", "maxavg"])
@pytest.mark.parametrize("batchnorm", [True, False])
def test_seed_cnn_heads(head, batchnorm):
    shapes = {"image": (1, 15, 21), "scalars": (2,)}
    model = tiny_model("seed_cnn", shapes, 3, head=head, batchnorm=batchnorm)
    out = model(make_inputs(shapes, 2))
    assert out.shape == (2, 3) and torch.isfinite(out).all()
    has_bn = any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
    assert has_bn == batchnorm


ONNX_CASES = [
    ("seed_cnn", {"image": (1, 15, 21), "scalars": (2,)}),
    ("calo3d", {"ecal": (1, 9, 9, 9), "hcal": (1, 5, 5, 60), "scalars": (2,)}),
    ("cvn", {"xview": (1, 32, 24), "yview": (1, 32, 24)}),  # LocalResponseNorm included
    ("cvn", {"xview": (1, 47, 47), "yview": (2, 31, 40)}),  # unequal views: the align pooling
    ("film", {"cells": (4, 17, 17), "scalars": (6,)}),
    ("resnet", {"image": (1, 15, 21), "scalars": (2,)}),
]


@pytest.mark.filterwarnings(  # legacy exporter chatter; LRN's `numel() == 0` check is traced as a constant
    "ignore::DeprecationWarning", "ignore::UserWarning", "ignore::torch.jit.TracerWarning"
)
@pytest.mark.parametrize(
    "family,shapes", ONNX_CASES, ids=["seed_cnn", "calo3d", "cvn", "cvn-unequal-views", "film", "resnet"]
)
def test_onnx_export_matches_torch(family, shapes):
    ort = pytest.importorskip("onnxruntime")
    names = list(shapes)
    model = PositionalInputs(tiny_model(family, shapes, 3), names).eval()
    example = make_inputs(shapes, 2)
    buffer = io.BytesIO()
    torch.onnx.export(
        model,
        tuple(example[n] for n in names),
        buffer,
        dynamo=False,
        input_names=names,
        output_names=["output"],
        dynamic_axes={name: {0: "batch"} for name in [*names, "output"]},
    )
    session = ort.InferenceSession(buffer.getvalue(), providers=["CPUExecutionProvider"])
    inputs = make_inputs(shapes, 3, seed=1)  # a different batch size than exported with
    (got,) = session.run(None, {n: t.numpy() for n, t in inputs.items()})
    with torch.no_grad():
        want = model(*(inputs[n] for n in names)).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
