"""Point-cloud model families (deepsets, particlenet, transformer) on the points contract
[B, max_points, 1 + F] (channel 0 the mask, padded rows after the real ones): permutation
invariance, padding ignored, single-point and empty events, ONNX export, a toy training run,
config and input checks. Tiny sizes, CPU, seconds."""

from __future__ import annotations

import collections
import math

import onnx
import pydantic
import pytest
import torch
from pydantic import TypeAdapter

from hepray.models import ModelConfig, build_model
from hepray.models.common import MaskedBatchNorm
from hepray.models.export import export_onnx, onnx_max_difference
from hepray.models.particlenet import nearest_neighbours
from hepray.models.transformer import pair_features

ADAPTER = TypeAdapter(ModelConfig)
N_FEATURES = 4  # eta, phi, pt, one more
SHAPES = {"cands": (10, 1 + N_FEATURES), "jet": (2,)}
COUNTS = [10, 7, 3, 1, 0, 5]  # real points per event: full, partial, single, empty

TINY = {
    "deepsets": {"name": "deepsets", "phi": [16, 16], "head": [16]},
    "deepsets_mean": {"name": "deepsets", "phi": [16, 16], "head": [16], "pool": "mean"},
    "particlenet": {"name": "particlenet", "k": 3, "blocks": [[8, 8], [16, 16]], "head": [16], "dropout": 0},
    "particlenet_k7": {"name": "particlenet", "blocks": [[8, 8, 8], [16, 16, 16]], "head": [16], "dropout": 0},
    "transformer": {
        "name": "transformer",
        "dim": 16,
        "heads": 2,
        "layers": 2,
        "class_layers": 1,
        "ffn": 32,
        "head": [16],
        "dropout": 0,
    },
    "transformer_pairs": {
        "name": "transformer",
        "dim": 16,
        "heads": 2,
        "layers": 2,
        "class_layers": 1,
        "ffn": 32,
        "head": [16],
        "dropout": 0,
        "pair_features": {"eta": 0, "phi": 1, "pt": 2},
        "pair_hidden": [8, 8],
    },
}
FAMILIES = sorted(TINY)


def make_points(counts: list[int], max_points: int, seed: int = 0, shift: float = 0.0) -> torch.Tensor:
    """[B, max_points, 1 + F]: `counts[b]` real points first, zero padding after. Features: eta,
    phi in [-pi, pi), pt > 0, one more; `shift` moves every feature's distribution."""
    generator = torch.Generator().manual_seed(seed)
    features = torch.randn(len(counts), max_points, N_FEATURES, generator=generator) + shift
    features[..., 1] = (torch.rand(len(counts), max_points, generator=generator) * 2 - 1) * math.pi
    features[..., 2] = features[..., 2].exp()
    real = (torch.arange(max_points) < torch.tensor(counts).unsqueeze(1)).float().unsqueeze(-1)
    return torch.cat([real, features * real], dim=-1)


def inputs_for(points: torch.Tensor, seed: int = 1) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return {"cands": points, "jet": torch.randn(points.shape[0], 2, generator=generator)}


def tiny_model(family: str, shapes: dict = SHAPES, n_outputs: int = 2, **overrides) -> torch.nn.Module:
    """A tiny model whose masked BatchNorms have seen a few batches (running stats not 0 / 1)."""
    torch.manual_seed(0)
    model = build_model(ADAPTER.validate_python({**TINY[family], **overrides}), shapes, n_outputs)
    with torch.no_grad():
        for seed in range(3):
            model(inputs_for(make_points(COUNTS, shapes["cands"][0], seed=10 + seed)))
    return model.eval()


def run(model: torch.nn.Module, points: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(inputs_for(points))


@pytest.mark.parametrize("family", FAMILIES)
def test_shuffling_the_points_changes_nothing(family):
    model = tiny_model(family)
    points = make_points(COUNTS, 10)
    # Shuffle every row, padding included (interleaved with the real points).
    order = torch.rand(points.shape[:2], generator=torch.Generator().manual_seed(5)).argsort(dim=1)
    shuffled = torch.gather(points, 1, order.unsqueeze(-1).expand_as(points))
    assert not torch.equal(shuffled, points)
    torch.testing.assert_close(run(model, shuffled), run(model, points), rtol=1e-5, atol=1e-5)


def pad_with_garbage(points: torch.Tensor, extra: int, seed: int = 3) -> torch.Tensor:
    """`extra` more padded rows, and random values in every padded row's features."""
    padded = torch.cat([points, torch.zeros(points.shape[0], extra, points.shape[2])], dim=1)
    garbage = torch.randn(padded.shape, generator=torch.Generator().manual_seed(seed)) * 100
    padding = padded[..., :1] == 0
    features = torch.where(padding, garbage[..., 1:], padded[..., 1:])
    return torch.cat([padded[..., :1], features], dim=-1)


@pytest.mark.parametrize("family", FAMILIES)
def test_padded_points_are_ignored(family):
    model = tiny_model(family)
    points = make_points(COUNTS, 10)
    want = run(model, points)
    torch.testing.assert_close(run(model, pad_with_garbage(points, 0)), want, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(run(model, pad_with_garbage(points, 7)), want, rtol=1e-5, atol=1e-5)
    # Training mode too: batch statistics count real points only (dropout is 0 in TINY).
    model.train()
    torch.testing.assert_close(run(model, pad_with_garbage(points, 7)), run(model, points), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("family", ["particlenet", "particlenet_k7"])
def test_particlenet_with_fewer_points_than_k(family):
    """max_points 4 < k + 1: fewer neighbour slots; padding up to 12 rows must not change it."""
    shapes = {"cands": (4, 1 + N_FEATURES), "jet": (2,)}
    model = tiny_model(family, shapes)
    points = make_points([4, 3, 2, 1, 0], 4)
    out = run(model, points)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(run(model, pad_with_garbage(points, 8)), out, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("family", FAMILIES)
def test_single_point_and_empty_events_are_finite(family):
    model = tiny_model(family)
    points = make_points([1, 0, 0, 2], 10)
    assert torch.isfinite(run(model, points)).all()
    model.train()
    out = model(inputs_for(points))
    assert torch.isfinite(out).all()
    out.pow(2).sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    # An all-empty batch, in training mode too (no real point for the batch statistics).
    assert torch.isfinite(model(inputs_for(make_points([0, 0], 10)))).all()


@pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::UserWarning", "ignore::torch.jit.TracerWarning")
@pytest.mark.parametrize("family", FAMILIES)
def test_onnx_export_matches_torch(family, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    model = tiny_model(family, n_outputs=3)
    path = export_onnx(model, SHAPES, tmp_path / "model.onnx")
    assert onnx_max_difference(model, SHAPES, path) < 1e-3  # the check `hepray run` makes
    # Proper points (single-point and empty events included), another batch size than exported.
    inputs = inputs_for(make_points(COUNTS, 10, seed=7))
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (got,) = session.run(None, {name: t.numpy() for name, t in inputs.items()})
    torch.testing.assert_close(torch.from_numpy(got), run(model, inputs["cands"]), rtol=1e-4, atol=1e-4)


@pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::UserWarning", "ignore::torch.jit.TracerWarning")
@pytest.mark.parametrize("family", FAMILIES)
def test_no_loop_over_events_or_points(family, tmp_path):
    """A loop over events or points would be unrolled by the export: the graph would grow."""
    graphs = []
    for max_points in (8, 16):
        shapes = {"cands": (max_points, 1 + N_FEATURES), "jet": (2,)}
        path = export_onnx(tiny_model(family, shapes), shapes, tmp_path / f"model{max_points}.onnx")
        graphs.append(collections.Counter(node.op_type for node in onnx.load(str(path)).graph.node))
    assert graphs[0] == graphs[1]


@pytest.mark.parametrize("family", FAMILIES)
def test_training_on_a_toy_problem_reduces_the_loss(family):
    """Class 1's point features are shifted from class 0's; multiplicities vary."""
    generator = torch.Generator().manual_seed(0)
    counts = torch.randint(1, 11, (64,), generator=generator).tolist()
    points = torch.cat([make_points(counts[:32], 10, seed=1), make_points(counts[32:], 10, seed=2, shift=1.0)])
    labels = torch.cat([torch.zeros(32, dtype=torch.long), torch.ones(32, dtype=torch.long)])
    inputs = inputs_for(points)
    model = tiny_model(family)
    loss_fn = torch.nn.CrossEntropyLoss()
    with torch.no_grad():
        before = loss_fn(model(inputs), labels).item()
    model.train()
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(30):
        optimizer.zero_grad()
        loss_fn(model(inputs), labels).backward()
        optimizer.step()
    model.eval()
    with torch.no_grad():
        after = loss_fn(model(inputs), labels).item()
    assert after < 0.7 * before, (before, after)


@pytest.mark.parametrize("family", FAMILIES)
def test_scalars_join_the_head(family):
    model = tiny_model(family)
    inputs = inputs_for(make_points(COUNTS, 10))
    with torch.no_grad():
        out = model(inputs)
        changed = model({**inputs, "jet": inputs["jet"] + 1.0})
    assert not torch.allclose(out, changed)
    no_scalars = tiny_model(family, {"cands": SHAPES["cands"]})
    assert run(no_scalars, make_points(COUNTS, 10)).shape == (len(COUNTS), 2)


def count(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_default_sizes():
    shapes = {"cands": (50, 1 + N_FEATURES)}
    sizes = {
        name: count(build_model(ADAPTER.validate_python({"name": name}), shapes, 2))
        for name in ("deepsets", "particlenet", "transformer")
    }
    assert sizes == {"deepsets": 56838, "particlenet": 26122, "transformer": 313162}
    # The paper's ParticleNet-Lite, on its 7 input features: 26k parameters.
    lite = build_model(ADAPTER.validate_python({"name": "particlenet"}), {"cands": (100, 8)}, 2)
    assert 25_500 < count(lite) < 27_000


def test_choosing_the_points_input():
    two = {"cands": (10, 5), "tracks": (6, 3), "jet": (2,)}

    def build(family, **overrides):
        return build_model(ADAPTER.validate_python({**TINY[family], **overrides}), two, 2)

    with pytest.raises(ValueError, match="cands.*tracks"):
        build("deepsets")
    model = build("particlenet", points="tracks").eval()
    with torch.no_grad():
        out = model({**inputs_for(make_points([10, 4], 10)), "tracks": make_points([6, 2], 6)[..., :3]})
    assert out.shape == (2, 2) and torch.isfinite(out).all()
    with pytest.raises(ValueError, match="unknown input 'trk'"):
        build("deepsets", points="trk")
    with pytest.raises(ValueError, match="expected points"):
        build_model(
            ADAPTER.validate_python({**TINY["transformer"], "points": "image"}),
            {"image": (1, 8, 8), "cands": (10, 5)},
            2,
        )
    with pytest.raises(ValueError, match="points input"):
        build_model(ADAPTER.validate_python(TINY["deepsets"]), {"image": (1, 8, 8), "jet": (2,)}, 2)


def test_feature_indices_are_checked():
    with pytest.raises(ValueError, match="coords"):
        tiny_model("particlenet", coords=[0, 4])
    with pytest.raises(ValueError, match="pair_features"):
        tiny_model("transformer_pairs", pair_features={"eta": 0, "phi": 1, "pt": 4})


BAD_VALUES = [
    ("deepsets", {"phi": []}),
    ("deepsets", {"phi": [8, 0]}),
    ("deepsets", {"pool": "max"}),
    ("particlenet", {"k": 0}),
    ("particlenet", {"blocks": [[8], []]}),
    ("particlenet", {"coords": [-1]}),
    ("particlenet", {"dropout": 1.0}),
    ("transformer", {"heads": 3}),  # does not divide dim 16
    ("transformer", {"class_layers": 0}),
    ("transformer", {"pair_features": {"eta": 0, "phi": 1}}),
    ("transformer", {"pair_hidden": [0]}),
    ("transformer", {"dimension": 16}),
]


@pytest.mark.parametrize("family,bad", BAD_VALUES)
def test_bad_value_is_a_validation_error(family, bad):
    with pytest.raises(pydantic.ValidationError):
        ADAPTER.validate_python({**TINY[family], **bad})


def test_nearest_neighbours_skip_padding_and_the_point_itself():
    coords = torch.tensor([[[0.0], [1.0], [3.0], [0.0], [0.0]]])  # 3 real points, 2 padded at 0
    mask = torch.tensor([[[1.0], [1.0], [1.0], [0.0], [0.0]]])
    index, valid = nearest_neighbours(coords, mask, k=3)
    assert index.shape == (1, 5, 3)
    valid = valid.squeeze(-1).bool()
    assert [sorted(index[0, i][valid[0, i]].tolist()) for i in range(3)] == [[1, 2], [0, 2], [0, 1]]
    assert not valid[0, 3:].any()


def test_pair_features():
    x = torch.tensor([[[0.0, 3.1, 10.0], [0.3, -3.1, 2.0], [0.0, 0.0, 0.0]]])  # eta, phi, pt; third padded
    mask = torch.tensor([[[1.0], [1.0], [0.0]]])
    pairs = pair_features(x, mask, 0, 1, 2)
    delta = math.hypot(0.3, 2 * math.pi - 6.2)  # phi wraps around
    torch.testing.assert_close(pairs[0, 0, 1], torch.tensor([math.log(delta), math.log(2.0 * delta)]))
    torch.testing.assert_close(pairs[0, 1, 0], pairs[0, 0, 1])
    assert (pairs[0, 2] == 0).all() and (pairs[0, :, 2] == 0).all()
    torch.testing.assert_close(pairs[0, 0, 0], torch.full((2,), math.log(1e-8)))


def test_masked_batchnorm_counts_real_entries_only():
    torch.manual_seed(0)
    x, mask = torch.randn(4, 6, 3), (torch.rand(4, 6, 1) > 0.4).float()
    norm, reference = MaskedBatchNorm(3), torch.nn.BatchNorm1d(3)
    out = norm(x, mask)
    real = mask.squeeze(-1).bool()
    torch.testing.assert_close(out[real], reference(x[real]))
    assert (out[~real] == 0).all()
    torch.testing.assert_close(norm.running_mean, reference.running_mean)
    torch.testing.assert_close(norm.running_var, reference.running_var)
