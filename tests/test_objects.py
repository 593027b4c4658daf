"""Several objects per event (data.objects) and a tree per class group (data.tree as a mapping):
every object once per split, objects of an event in one split, per-object values at their
object's row, per-event values repeated, truncation, per-object cuts, preflight errors, and
`hepray predict` writing one row per object."""

from __future__ import annotations

import awkward as ak
import numpy as np
import pytest
import torch
import uproot
import yaml
from test_errors import assert_one_error_line
from typer.testing import CliRunner

from hepray.app.predict import TREE, predict_files
from hepray.app.preflight import ObjectsCheck, check_job, inspect_file
from hepray.app.run import run_job
from hepray.cli import app
from hepray.data.root_source import SPLITS, DataError, EventReader, plan_reads
from hepray.evaluate.inference import load_model
from hepray.inputs import make_input
from hepray.spec import JobSpec, SpecError, validate_job
from rootfiles import towers, write_tree

OBJECT_ID = 10  # an electron's id is evt * OBJECT_ID + its index in the event


def electrons(n: int, first_id: int, seed: int, mean: float = 1.3) -> dict:
    """Tower events with 0..several electrons each, NanoAOD-style (`nElectron`, `Electron_pt`, ...),
    each electron's `Electron_id` unique; a per-event `nJet`/`Jet_pt` collection of other counts."""
    rng = np.random.default_rng(seed + 100)
    branches = towers(n, first_id, seed)
    counts = np.minimum(rng.poisson(mean, n), OBJECT_ID - 1)
    counts[:3] = [0, 3, 1]  # an event without electrons among the first ones
    index = np.arange(int(counts.sum())) - np.repeat(np.cumsum(counts) - counts, counts)
    event_eta = np.repeat(branches["cand_eta"], counts)
    electron = {
        "id": ak.unflatten((np.repeat(branches["evt"], counts) * OBJECT_ID + index).astype(np.float64), counts),
        "eta": ak.unflatten(event_eta + rng.normal(0, 0.02, len(event_eta)), counts),
        "phi": ak.unflatten(np.repeat(branches["cand_phi"], counts), counts),
        "q": ak.unflatten(rng.choice([-1.0, 1.0], int(counts.sum())), counts),
    }
    jets = rng.poisson(2.0, n) + (counts == 0)  # never the electrons' counts everywhere
    return {
        **branches,
        "Electron": ak.zip(electron),
        "Jet": ak.zip({"pt": ak.unflatten(rng.exponential(30, int(jets.sum())), jets)}),
    }


def objects_job(files: dict, objects: dict | None = None, **data) -> dict:
    """A binary job with an image centred on each electron and per-object and per-event observers."""
    return {
        "name": "objects",
        "data": {
            "files": files,
            "objects": objects or {"count": "nElectron"},
            "observers": ["evt", "x", "Electron_id", "Electron_q"],
            "inputs": {
                "image": {
                    "kind": "etaphi",
                    "size": 5,
                    "cell": 0.05,
                    "center": {"eta": "Electron_eta", "phi": "Electron_phi"},
                    "points": [{"eta": "tower_eta", "phi": "tower_phi", "value": "tower_e"}],
                }
            },
            **data,
        },
        "model": {"name": "seed_cnn", "filters": 4, "blocks": 1, "dense": 8},
        "task": {"kind": "binary"},
    }


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("electrons")
    sig, bkg = electrons(500, 0, seed=1), electrons(300, 5000, seed=2)
    write_tree(root / "sig.root", sig)
    write_tree(root / "bkg.root", bkg)
    return root, {"sig": sig, "bkg": bkg}


def job_over(files, objects=None, **data) -> JobSpec:
    root, _ = files
    return JobSpec.model_validate(
        objects_job({"bkg": str(root / "bkg.root"), "sig": str(root / "sig.root")}, objects, **data)
    )


def read_rows(job: JobSpec, split: str | None, columns=("entry", "object", "obs_evt", "obs_x", "obs_Electron_id")):
    """Every read task of the plan run in-process (what each Ray read task does), as numpy columns."""
    reader = EventReader(job.data, split)
    plan = plan_reads(job.data, reader.branches())
    blocks = [block for task in plan.tasks for block in reader.read(task)]
    return {name: np.concatenate([block[name].to_numpy() for block in blocks]) for name in columns}


def all_ids(branches: dict, first: int | None = None) -> np.ndarray:
    ids = branches["Electron"]["id"]
    return ak.to_numpy(ak.flatten(ids if first is None else ids[:, :first]))


def test_every_object_once_per_split_and_events_stay_whole(files):
    _, truth = files
    job = job_over(files, events_per_task=97)
    rows = {split: read_rows(job, split) for split in SPLITS}
    ids = np.concatenate([rows[split]["obs_Electron_id"] for split in SPLITS])
    expected = np.concatenate([all_ids(truth["sig"]), all_ids(truth["bkg"])])
    assert len(ids) == len(expected) and np.array_equal(np.sort(ids), np.sort(expected))
    events = [set(rows[split]["obs_evt"].astype(int)) for split in SPLITS]
    assert all(not (a & b) for k, a in enumerate(events) for b in events[k + 1 :])  # no event in two splits
    assert all(len(rows[split]["entry"]) > 20 for split in SPLITS)
    both = {**truth["sig"], "evt": np.concatenate([truth["sig"]["evt"], truth["bkg"]["evt"]])}
    counts = np.concatenate([ak.to_numpy(ak.num(truth[name]["Electron"]["id"])) for name in ("sig", "bkg")])
    no_electron = set(both["evt"][counts == 0].astype(int))
    assert no_electron and not (no_electron & set().union(*events))  # events without objects give no row


def test_per_object_values_on_their_rows_and_per_event_values_repeated(files):
    _, truth = files
    rows = read_rows(job_over(files), None)
    evt, ids = rows["obs_evt"].astype(np.int64), rows["obs_Electron_id"].astype(np.int64)
    assert np.array_equal(ids, evt * OBJECT_ID + rows["object"])  # the object's own id, at its index
    x = {int(e): v for name in ("sig", "bkg") for e, v in zip(truth[name]["evt"], truth[name]["x"])}
    assert np.allclose(rows["obs_x"], [x[int(e)] for e in evt])  # the event's x, on each of its objects
    assert np.array_equal(rows["entry"], np.where(evt >= 5000, evt - 5000, evt))


def test_image_is_centred_on_each_object(files):
    """Against a reference loop: each row's image is the event's towers around its own electron."""
    _, truth = files
    job = job_over(files)
    reader = EventReader(job.data, None)
    block = next(reader.read(plan_reads(job.data, reader.branches()).tasks[0]))
    image = np.stack(block["image"].to_numpy())
    rows = zip(block["label"].to_numpy(), block["entry"].to_numpy(), block["object"].to_numpy())
    arrays = {"Electron_eta": [], "Electron_phi": [], "tower_eta": [], "tower_phi": [], "tower_e": []}
    for label, entry, obj in rows:
        event = truth["sig" if label == 1 else "bkg"]
        arrays["Electron_eta"].append(event["Electron"]["eta"][entry][obj])
        arrays["Electron_phi"].append(event["Electron"]["phi"][entry][obj])
        for name in ("tower_eta", "tower_phi", "tower_e"):
            arrays[name].append(event[name][entry])
    reference = make_input(job.data.inputs["image"], {name: ak.Array(values) for name, values in arrays.items()})
    assert len(reference) > 50 and reference.any()
    assert np.allclose(image.reshape(reference.shape), reference)


def test_max_per_event_keeps_the_first_objects_and_cuts_apply_per_object(files):
    _, truth = files
    rows = read_rows(job_over(files, {"count": "nElectron", "max_per_event": 2}), None)
    expected = np.concatenate([all_ids(truth["sig"], 2), all_ids(truth["bkg"], 2)])
    assert np.array_equal(np.sort(rows["obs_Electron_id"]), np.sort(expected))
    assert rows["object"].max() == 1 and len(expected) < len(all_ids(truth["sig"])) + len(all_ids(truth["bkg"]))
    cut = read_rows(job_over(files, cut="Electron_q > 0 and x > 0.2"), None, ("obs_Electron_id", "obs_x"))
    charge = {
        int(i): q
        for name in ("sig", "bkg")
        for i, q in zip(all_ids(truth[name]), ak.to_numpy(ak.flatten(truth[name]["Electron"]["q"])))
    }
    passing = [i for i in np.concatenate([all_ids(truth["sig"]), all_ids(truth["bkg"])]) if charge[int(i)] > 0]
    assert np.all(cut["obs_x"] > 0.2) and set(cut["obs_Electron_id"].astype(int)) < set(map(int, passing))
    assert len(cut["obs_Electron_id"]) > 0.3 * len(passing)  # objects of one event pass or fail on their own


# ------------------------------------------------------------------ a tree per class group


@pytest.fixture(scope="module")
def tmva_file(tmp_path_factory):
    """One file holding TreeS (signal: ids from 0) and TreeB (background: ids from 5000)."""
    path = tmp_path_factory.mktemp("tmva") / "tmva.root"
    signal, background = towers(200, 0, seed=3), towers(150, 5000, seed=4)
    with uproot.recreate(path) as file:
        for name, branches in (("TreeS", signal), ("TreeB", background)):
            file.mktree(
                name,
                {key: value.type if isinstance(value, ak.Array) else value.dtype for key, value in branches.items()},
            )
            file[name].extend(branches)
    return path


def tmva_job(path, tree) -> dict:
    raw = objects_job({"background": str(path), "signal": str(path)}, tree=tree, observers=["evt"])
    del raw["data"]["objects"]
    raw["data"]["inputs"]["image"]["center"] = {"eta": "cand_eta", "phi": "cand_phi"}
    return raw


def test_signal_and_background_trees_in_one_file(tmva_file):
    job = JobSpec.model_validate(tmva_job(tmva_file, {"signal": "TreeS", "background": "TreeB"}))
    rows = read_rows(job, None, ("obs_evt", "label"))
    assert np.array_equal(np.sort(rows["obs_evt"]), np.r_[0:200, 5000:5150])
    assert np.array_equal(rows["label"], (rows["obs_evt"] < 5000).astype(int))  # signal: the second group
    plan = check_job(job).plan()
    assert plan[0].startswith("plan: trees background: 'TreeB', signal: 'TreeS', 2 files, 350 entries")


def test_tree_mapping_must_name_the_class_groups(tmva_file):
    with pytest.raises(
        SpecError,
        match=r"data\.tree: one tree per class group of data\.files; no tree for signal; "
        r"sgnal is not a class group; did you mean 'signal'\?",
    ):
        validate_job(tmva_job(tmva_file, {"sgnal": "TreeS", "background": "TreeB"}))
    with pytest.raises(DataError, match=r"no tree 'TreeX' .*did you mean 'TreeS'\?"):
        check_job(JobSpec.model_validate(tmva_job(tmva_file, {"signal": "TreeX", "background": "TreeB"})))


# ------------------------------------------------------------------ preflight and the CLI


def invoke_validate(tmp_path, raw: dict):
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return CliRunner().invoke(app, ["validate", str(path)])


def test_validate_prints_the_objects_setting(files, tmp_path):
    root, _ = files
    raw = objects_job(
        {"bkg": str(root / "bkg.root"), "sig": str(root / "sig.root")}, {"count": "nElectron", "max_per_event": 2}
    )
    result = invoke_validate(tmp_path, raw)
    assert result.exit_code == 0, result.output
    assert "objects: one example per object counted by 'nElectron' (the first 2 of each event)" in result.output


def test_misspelt_count_branch_is_one_error_line(files, tmp_path):
    root, _ = files
    raw = objects_job({"bkg": str(root / "bkg.root"), "sig": str(root / "sig.root")}, {"count": "nElectrons"})
    line = assert_one_error_line(invoke_validate(tmp_path, raw), "bkg.root", "nElectrons", "data.objects.count")
    assert "did you mean 'nElectron'?" in line


@pytest.mark.parametrize(
    "objects, observers, named",
    [
        ({"count": "nElectron"}, ["Jet_pt"], ["branch 'Jet_pt' (data.observers)", "counted by 'nJet'"]),
        ({"count": "Electron_q"}, [], ["branch 'Electron_q' (data.objects.count) holds a list per entry"]),
    ],
)
def test_branches_used_per_object_must_be_counted_by_the_count(files, tmp_path, objects, observers, named):
    root, _ = files
    raw = objects_job({"bkg": str(root / "bkg.root"), "sig": str(root / "sig.root")}, objects)
    raw["data"]["observers"] += observers
    assert_one_error_line(invoke_validate(tmp_path, raw), "bkg.root", *named)


def separate_counters(branches: dict, shift_at: int | None = None) -> dict:
    """The electrons as uproot writes loose jagged arrays: each its own counter (`nElectron_eta`),
    beside a `nElectron` the file's author wrote; shift_at moves one electron to the next event."""
    electron = branches["Electron"]
    counts = ak.to_numpy(ak.num(electron["id"]))
    loose = {f"Electron_{field}": electron[field] for field in ("id", "eta", "phi", "q")}
    if shift_at is not None:
        counts = counts.copy()
        counts[shift_at] -= 1
        counts[shift_at + 1] += 1
        loose = {name: ak.unflatten(ak.flatten(values), counts) for name, values in loose.items()}
    tower = {name: values for name, values in branches.items() if name not in ("Electron", "Jet")}
    return {**tower, **loose, "nElectron": ak.to_numpy(ak.num(electron["id"])).astype(np.int32)}


def test_per_object_branches_with_their_own_counters_are_read_per_object(files, tmp_path):
    """uproot's writer counts `Electron_eta` by `nElectron_eta`: holding nElectron's numbers, it is per object."""
    _, truth = files
    paths = {}
    for name in ("sig", "bkg"):
        write_tree(tmp_path / f"{name}.root", separate_counters(truth[name]))
        paths[name] = str(tmp_path / f"{name}.root")
    with uproot.open(paths["sig"]) as file:
        assert file["events"]["Electron_eta"].count_branch.name == "nElectron_eta"
    raw = objects_job({"bkg": paths["bkg"], "sig": paths["sig"]})
    result = invoke_validate(tmp_path, raw)
    assert result.exit_code == 0, result.output
    rows = read_rows(job_over((tmp_path, None)), None)
    assert np.array_equal(
        np.sort(rows["obs_Electron_id"]), np.sort(np.concatenate([all_ids(truth[n]) for n in ("bkg", "sig")]))
    )


def test_own_counter_that_differs_from_the_count_is_named_with_its_entry(files, tmp_path):
    _, truth = files
    first = int(np.flatnonzero(ak.to_numpy(ak.num(truth["sig"]["Electron"]["id"])) > 0)[0])
    write_tree(tmp_path / "sig.root", separate_counters(truth["sig"], shift_at=first))
    write_tree(tmp_path / "bkg.root", separate_counters(truth["bkg"]))
    raw = objects_job({"bkg": str(tmp_path / "bkg.root"), "sig": str(tmp_path / "sig.root")})
    line = assert_one_error_line(
        invoke_validate(tmp_path, raw), "sig.root", "counted by 'nElectron_", "'nElectron' (data.objects.count)"
    )
    assert f"entry {first} has" in line


def test_an_empty_tree_with_own_counters_is_said_to_be_empty(tmp_path):
    empty = {"nElectron": np.zeros(0, np.int32), "Electron_eta": ak.Array([[1.0]])[:0]}
    write_tree(tmp_path / "empty.root", empty)
    meta = inspect_file(
        str(tmp_path / "empty.root"),
        "events",
        {"Electron_eta": ["x"]},
        ObjectsCheck("nElectron", {"Electron_eta": ["x"]}),
    )
    assert meta.problem == "tree 'events' has no entries"


def test_read_task_names_a_list_that_is_not_per_object(files):
    """A list branch of other counts where one value per object is needed, past preflight (e.g. a std::vector)."""
    job = job_over(files, observers=["evt", "Jet_pt"])
    with pytest.raises(DataError, match=r"'Jet_pt' has a list of values per object; one value per object expected"):
        read_rows(job, None, ("entry",))


# ------------------------------------------------------------------ train and predict, end to end


def test_train_on_trees_per_class_and_predict_one_row_per_object(ray_session, tmp_path):
    """Signal and background electrons in TreeS/TreeB of one file, one epoch; then `hepray predict`
    over another file's TreeS writes one row per kept object (entry, object), scored as the model
    scores that object's own image."""
    signal, background = electrons(300, 0, seed=5), electrons(300, 5000, seed=6)
    with uproot.recreate(tmp_path / "train.root") as file:
        for name, branches in (("TreeS", signal), ("TreeB", background)):
            file.mktree(name, {k: v.type if isinstance(v, ak.Array) else v.dtype for k, v in branches.items()})
            file[name].extend(branches)
    path = str(tmp_path / "train.root")
    raw = objects_job(
        {"background": path, "signal": path},
        {"count": "nElectron", "max_per_event": 2},
        tree={"signal": "TreeS", "background": "TreeB"},
        cut="Electron_q > 0",
        events_per_task=200,
    )
    raw["train"], raw["evaluate"] = {"epochs": 1, "batch_size": 64}, {"plots": False}
    metrics = run_job(JobSpec.model_validate(raw), tmp_path / "run")
    assert 0 <= metrics["test_auc"] <= 1

    scored = electrons(40, 9000, seed=7)
    write_tree(tmp_path / "new.root", scored, tree="TreeS")
    report = predict_files(tmp_path / "run", [str(tmp_path / "new.root")], tmp_path / "out", tree="TreeS")
    rows = uproot.open(tmp_path / "out" / "new.root")[TREE].arrays(library="np")
    assert set(rows) == {"entry", "object", "score_signal", "pass_cut", "evt", "x", "Electron_id", "Electron_q"}
    counts = np.minimum(ak.to_numpy(ak.num(scored["Electron"]["id"])), 2)
    assert np.array_equal(rows["entry"], np.repeat(np.arange(40), counts))  # events without electrons: no row
    assert np.array_equal(rows["Electron_id"], (9000 + rows["entry"]) * OBJECT_ID + rows["object"])
    assert np.array_equal(rows["pass_cut"], rows["Electron_q"] > 0) and report.events == 40
    model, job = load_model(tmp_path / "run" / "model.pt")
    arrays = {
        "Electron_eta": [scored["Electron"]["eta"][e][o] for e, o in zip(rows["entry"], rows["object"])],
        "Electron_phi": [scored["Electron"]["phi"][e][o] for e, o in zip(rows["entry"], rows["object"])],
        **{name: [scored[name][e] for e in rows["entry"]] for name in ("tower_eta", "tower_phi", "tower_e")},
    }
    image = make_input(job.data.inputs["image"], {name: ak.Array(values) for name, values in arrays.items()})
    with torch.no_grad():
        logits = model({"image": torch.from_numpy(image)}).numpy()[:, 0]
    assert np.allclose(rows["score_signal"], 1 / (1 + np.exp(-logits)), atol=1e-5)
