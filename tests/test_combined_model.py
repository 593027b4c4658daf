"""The combined model: an image tower and a points tower (existing families' bodies) joined in one
head. Shapes, the towers are the families' own bodies, permutation invariance over the real points
with the image fixed, padding ignored, ONNX parity, config and input checks, and
jobs/jets_combined.yaml through `hepray run` at a tiny size. Tiny sizes, CPU."""

from __future__ import annotations

import json

import pydantic
import pytest
import torch
import yaml
from pydantic import TypeAdapter
from test_point_models import make_points, pad_with_garbage
from typer.testing import CliRunner

from hepray.cli import app
from hepray.models import ModelConfig, build_model
from hepray.models.cvn import CVN
from hepray.models.export import export_onnx, onnx_max_difference
from hepray.models.particlenet import ParticleNet
from hepray.spec import JobSpec, load_job

ADAPTER = TypeAdapter(ModelConfig)
SHAPES = {"jet": (1, 17, 17), "cands": (10, 5), "kin": (2,)}  # image, points (mask + 4 features), scalars
COUNTS = [10, 7, 3, 1, 0, 5]  # real points per event: full, partial, single, empty
TINY = {
    "name": "combined",
    "towers": {
        "jet": {"name": "cvn", "width": 0.0625, "tower_inception": 1, "merged_inception": 1, "batchnorm": True},
        "cands": {"name": "particlenet", "k": 3, "blocks": [[8, 8], [16, 16]]},
    },
    "head": [16],
    "dropout": 0,
}


def inputs_for(points: torch.Tensor, seed: int = 1) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    batch = points.shape[0]
    return {
        "jet": torch.rand(batch, *SHAPES["jet"], generator=generator),
        "cands": points,
        "kin": torch.randn(batch, 2, generator=generator),
    }


def tiny_model(shapes: dict = SHAPES, n_outputs: int = 1, **overrides) -> torch.nn.Module:
    """A tiny combined model whose BatchNorms have seen a few batches (running stats not 0 / 1)."""
    torch.manual_seed(0)
    model = build_model(ADAPTER.validate_python({**TINY, **overrides}), shapes, n_outputs)
    with torch.no_grad():
        for seed in range(3):
            model(inputs_for(make_points(COUNTS, 10, seed=10 + seed)))
    return model.eval()


def run(model: torch.nn.Module, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    with torch.no_grad():
        return model(inputs)


@pytest.mark.parametrize("n_outputs", [1, 3])
def test_output_shape_and_every_part_is_trained(n_outputs):
    model = tiny_model(n_outputs=n_outputs).train()
    out = model(inputs_for(make_points(COUNTS, 10)))
    assert out.shape == (len(COUNTS), n_outputs) and torch.isfinite(out).all()
    out.pow(2).mean().backward()
    unused = [name for name, p in model.named_parameters() if p.grad is None]
    assert not unused, f"parameters not reached by the loss: {unused}"


def test_towers_are_the_families_bodies_without_their_heads():
    model = tiny_model()
    inputs = inputs_for(make_points(COUNTS, 10))
    families = {"jet": CVN, "cands": ParticleNet}
    for name, tower in zip(model.names, model.towers):
        config = ADAPTER.validate_python(TINY["towers"][name])
        alone = families[name](config, {name: SHAPES[name]}, 1).eval()
        missing, unexpected = alone.load_state_dict(tower.state_dict(), strict=False)
        head = {"jet": ("dropout.", "out."), "cands": ("head.",)}[name]
        assert not unexpected and missing and all(key.startswith(head) for key in missing)
        torch.testing.assert_close(run(tower.embedding, inputs), run(alone.embedding, inputs))
    # The head reads both embeddings and the scalars: 16 merged CVN channels at width 1/16, 16, 2.
    assert model.head.net[0].in_features == model.towers[0].embedding(inputs).shape[1] + 16 + 2


def test_shuffling_the_points_with_the_image_fixed_changes_nothing():
    model = tiny_model()
    inputs = inputs_for(make_points(COUNTS, 10))
    points = inputs["cands"]
    order = torch.rand(points.shape[:2], generator=torch.Generator().manual_seed(5)).argsort(dim=1)
    shuffled = torch.gather(points, 1, order.unsqueeze(-1).expand_as(points))
    assert not torch.equal(shuffled, points)
    want = run(model, inputs)
    torch.testing.assert_close(run(model, {**inputs, "cands": shuffled}), want, rtol=1e-5, atol=1e-5)
    # ... while the image and the scalars do matter.
    assert not torch.allclose(run(model, {**inputs, "jet": inputs["jet"].flip(-1)}), want)
    assert not torch.allclose(run(model, {**inputs, "kin": inputs["kin"] + 1}), want)


def test_padded_points_are_ignored():
    model = tiny_model()
    inputs = inputs_for(make_points(COUNTS, 10))
    want = run(model, inputs)
    for extra in (0, 7):
        padded = {**inputs, "cands": pad_with_garbage(inputs["cands"], extra)}
        torch.testing.assert_close(run(model, padded), want, rtol=1e-5, atol=1e-5)
    model.train()  # batch statistics count real points only (dropout is 0)
    torch.testing.assert_close(
        run(model, {**inputs, "cands": pad_with_garbage(inputs["cands"], 7)}), run(model, inputs), rtol=1e-5, atol=1e-5
    )


@pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::UserWarning", "ignore::torch.jit.TracerWarning")
def test_onnx_export_matches_torch(tmp_path):
    ort = pytest.importorskip("onnxruntime")
    model = tiny_model(n_outputs=3)
    path = export_onnx(model, SHAPES, tmp_path / "model.onnx")
    assert onnx_max_difference(model, SHAPES, path) < 1e-3  # the check `hepray run` makes
    # Proper points (single-point and empty events included), another batch size than exported.
    inputs = inputs_for(make_points(COUNTS, 10, seed=7))
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (got,) = session.run(None, {name: t.numpy() for name, t in inputs.items()})
    torch.testing.assert_close(torch.from_numpy(got), run(model, inputs), rtol=1e-4, atol=1e-4)


def test_inputs_without_a_tower_get_the_default_one():
    shapes = {"cands": (10, 5), "jet": (1, 9, 9), "hcal": (1, 4, 4, 6)}
    config = ADAPTER.validate_python({**TINY, "towers": {"cands": TINY["towers"]["cands"]}})
    model = build_model(config, shapes, 1).eval()
    assert model.names == ["cands", "jet", "hcal"]
    assert [type(tower).__name__ for tower in model.towers] == ["ParticleNet", "ResNet", "ResNet"]
    inputs = {"cands": make_points([4, 0], 10), "jet": torch.rand(2, 1, 9, 9), "hcal": torch.rand(2, 1, 4, 4, 6)}
    assert run(model, inputs).shape == (2, 1)


def test_input_mismatches_are_clear_value_errors():
    with pytest.raises(ValueError, match=r"towers name \['cand'\], which are not inputs"):
        tiny_model(towers={"cand": TINY["towers"]["cands"]})
    with pytest.raises(ValueError, match="tower 'jet' is particlenet, which takes points"):
        tiny_model(towers={"jet": TINY["towers"]["cands"]})
    with pytest.raises(ValueError, match="tower 'cands' is cvn, which takes a 2-D image"):
        tiny_model(towers={"cands": TINY["towers"]["jet"]})
    with pytest.raises(ValueError, match="scalar inputs"):
        tiny_model(towers={"kin": TINY["towers"]["cands"]})
    with pytest.raises(ValueError, match="tower 'cands': particlenet: coords"):
        tiny_model(towers={"cands": {**TINY["towers"]["cands"], "coords": [0, 4]}})
    with pytest.raises(ValueError, match="at least one image or points input"):
        build_model(ADAPTER.validate_python(TINY | {"towers": {}}), {"kin": (2,)}, 1)


@pytest.mark.parametrize(
    "bad",
    [
        {"towers": {"jet": {"name": "film"}}},  # conditions on scalars: not a tower
        {"towers": {"jet": {"name": "combined"}}},
        {"towers": {"cands": {"name": "particlenet", "head": [64]}}},  # a tower has no head of its own
        {"towers": {"jet": {"name": "cvn", "dropout": 0.3}}},
        {"head": [0]},
        {"dropout": 1.0},
    ],
)
def test_bad_config_is_a_validation_error(bad):
    with pytest.raises(pydantic.ValidationError):
        ADAPTER.validate_python({**TINY, **bad})


def test_the_resolved_job_validates_again():
    """job.yaml and model.pt hold every default, the towers' head keys included."""
    job = load_job("jobs/jets_combined.yaml")
    assert JobSpec.model_validate(job.model_dump(mode="json", by_alias=True)) == job


@pytest.mark.slow
def test_jets_combined_job_runs_one_tiny_epoch(ray_session, tmp_path):
    data = tmp_path / "data"
    overrides = [
        f"data.generate.out={data}",
        "data.generate.events=300",
        f"data.files.qcd={data}/qcd_*.root",
        f"data.files.hbb={data}/hbb_*.root",
        "data.inputs.jet.size=17",
        "data.inputs.cands.max=24",
        "model.towers.jet.width=0.0625",
        "model.towers.cands={name: particlenet, k: 3, blocks: [[8, 8]]}",
        "model.head=[16]",
        "train.epochs=1",
        "evaluate.plots=false",
    ]
    out = tmp_path / "run"
    args = ["run", "jobs/jets_combined.yaml", "--out", str(out), *(a for o in overrides for a in ("--set", o))]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["events_read"] == 600 and metrics["test_events"] > 80
    assert 0.0 <= metrics["test_auc"] <= 1.0 and metrics["onnx_max_abs_difference"] < 1e-3
    job = yaml.safe_load((out / "job.yaml").read_text())
    assert list(job["model"]["towers"]) == ["jet", "cands"] and list(job["data"]["inputs"]) == ["jet", "cands"]
