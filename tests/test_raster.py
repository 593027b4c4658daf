"""Rasterizers and augmentations: hand-computed cases, and the vectorized kernels against plain
per-point reference loops (float64, written here) on random jagged batches. No Ray needed."""

from __future__ import annotations

import math
import warnings

import awkward as ak
import numpy as np
import pytest
import torch

from hepray.data.augment import augment
from hepray.inputs import apply_norm, branches_for, make_input
from hepray.inputs.etaphi import EtaPhiImage
from hepray.inputs.hits_xy import HitsXYImage
from hepray.inputs.jet import JetImage
from hepray.inputs.scalars import Scalars
from hepray.inputs.voxels import VoxelImage

TOWERS = {"eta": "tower_eta", "phi": "tower_phi", "value": "tower_e"}


def jagged(lists: list[list[float]], dtype=np.float64) -> ak.Array:
    return ak.values_astype(ak.Array(lists), dtype)


def etaphi_spec(**fields) -> EtaPhiImage:
    fields.setdefault("points", [TOWERS])
    return EtaPhiImage(kind="etaphi", **fields)


def random_jagged(rng: np.random.Generator, counts: np.ndarray, low: float, high: float) -> ak.Array:
    """float32 values, as ROOT files usually hold them."""
    return ak.unflatten(rng.uniform(low, high, counts.sum()).astype(np.float32), counts)


# ---------------------------------------------------------------- etaphi: hand cases


def test_etaphi_centred_grid_edges_and_dropped_points():
    # size 4, cell 0.5: window [-1, 1), pixel = floor(d / 0.5 + 2).
    spec = etaphi_spec(center={"eta": "ele_eta", "phi": "ele_phi"}, size=4, cell=0.5)
    d_eta = [0.0, -0.5, -1.0, 0.75, 1.0, -1.25]  # edges go up; 1.0 and -1.25 lie outside
    arrays = {
        "tower_eta": jagged([[0.3 + d for d in d_eta]]),
        "tower_phi": jagged([[-0.2 + 0.1] * len(d_eta)]),  # d_phi = 0.1 -> pixel 2
        "tower_e": jagged([[1.0, 2.0, 4.0, 8.0, 16.0, 32.0]]),
        "ele_eta": np.array([0.3]),
        "ele_phi": np.array([-0.2]),
    }
    image = make_input(spec, arrays)
    expected = np.zeros((1, 1, 4, 4), np.float32)
    expected[0, 0, 2, 2] = 1.0  # d = 0 sits on the edge between pixels 1 and 2
    expected[0, 0, 1, 2] = 2.0
    expected[0, 0, 0, 2] = 4.0
    expected[0, 0, 3, 2] = 8.0  # 16 and 32 are outside: not piled into the edge rows
    assert image.dtype == np.float32
    np.testing.assert_array_equal(image, expected)


def test_etaphi_phi_offsets_wrap_across_pi():
    spec = etaphi_spec(center={"eta": "ele_eta", "phi": "ele_phi"}, size=4, cell=0.25)
    arrays = {
        # event 0: centre just below +pi, towers across the boundary; event 1: the mirror image
        "tower_eta": jagged([[0.0, 0.0], [0.0, 0.0]]),
        "tower_phi": jagged([[-math.pi + 0.1, math.pi - 0.3], [math.pi - 0.1, -math.pi + 0.3]]),
        "tower_e": jagged([[1.0, 2.0], [3.0, 4.0]]),
        "ele_eta": np.array([0.0, 0.0]),
        "ele_phi": np.array([math.pi - 0.1, -math.pi + 0.1]),
    }
    image = make_input(spec, arrays)
    # event 0: d_phi = +0.2 -> floor(0.8 + 2) = 2 and -0.2 -> floor(-0.8 + 2) = 1
    assert image[0, 0, 2, 2] == 1.0 and image[0, 0, 2, 1] == 2.0
    # event 1: d_phi = -0.2 -> 1 and +0.2 -> 2
    assert image[1, 0, 2, 1] == 3.0 and image[1, 0, 2, 2] == 4.0
    assert image.sum() == 10.0


def test_etaphi_sums_points_in_one_pixel_and_fills_channels_per_point_set():
    hcal = {"eta": "hcal_eta", "phi": "hcal_phi", "value": "hcal_e"}
    spec = etaphi_spec(points=[TOWERS, hcal], center={"eta": "c_eta", "phi": "c_phi"}, size=3, cell=1.0)
    arrays = {
        "tower_eta": jagged([[0.1, 0.2, 1.2]]),
        "tower_phi": jagged([[0.1, -0.3, 0.0]]),
        "tower_e": jagged([[1.5, 2.5, 7.0]]),
        "hcal_eta": jagged([[-1.4]]),
        "hcal_phi": jagged([[0.9]]),
        "hcal_e": jagged([[5.0]]),
        "c_eta": np.array([0.0]),
        "c_phi": np.array([0.0]),
    }
    image = make_input(spec, arrays)
    expected = np.zeros((1, 2, 3, 3), np.float32)
    expected[0, 0, 1, 1] = 4.0  # two towers in the centre pixel add up
    expected[0, 0, 2, 1] = 7.0
    expected[0, 1, 0, 2] = 5.0
    np.testing.assert_array_equal(image, expected)


def test_etaphi_centroid_uses_weighted_circular_mean_of_phi():
    spec = etaphi_spec(size=4, cell=0.1)
    arrays = {
        # a naive mean of phi would put the centre at 0, pi away from both towers
        "tower_eta": jagged([[0.1, 0.3], []]),
        "tower_phi": jagged([[math.pi - 0.05, -math.pi + 0.05], []]),
        "tower_e": jagged([[1.0, 3.0], []]),
    }
    image = make_input(spec, arrays)
    # eta centre (0.1 + 0.9) / 4 = 0.25; phi centre -pi + atan(tan(0.05) / 2) ~ -pi + 0.025
    # tower 1: d_eta = -0.15 -> row 0, d_phi ~ -0.075 -> column 1
    # tower 2: d_eta = +0.05 -> row 2, d_phi ~ +0.025 -> column 2
    expected = np.zeros((2, 1, 4, 4), np.float32)
    expected[0, 0, 0, 1] = 1.0
    expected[0, 0, 2, 2] = 3.0
    np.testing.assert_array_equal(image, expected)


def test_etaphi_channel_branch_drops_values_outside_the_channels():
    spec = etaphi_spec(center={"eta": "c_eta", "phi": "c_phi"}, size=1, cell=1.0, channel_branch="layer", n_channels=2)
    arrays = {
        "tower_eta": jagged([[0.0] * 5]),
        "tower_phi": jagged([[0.0] * 5]),
        "tower_e": jagged([[1.0, 2.0, 4.0, 8.0, 16.0]]),
        "layer": jagged([[0.0, 1.0, 2.0, -1.0, 0.5]]),  # 2, -1 and 0.5 are not channels
        "c_eta": np.array([0.0]),
        "c_phi": np.array([0.0]),
    }
    np.testing.assert_array_equal(make_input(spec, arrays).reshape(2), [1.0, 2.0])
    arrays["layer"] = ak.Array([[1, 1, 0, 5, 0]])  # integer channels work too
    np.testing.assert_array_equal(make_input(spec, arrays).reshape(2), [20.0, 3.0])


def test_etaphi_norm_is_applied_per_event():
    spec = etaphi_spec(center={"eta": "c_eta", "phi": "c_phi"}, size=2, cell=1.0, norm="max")
    arrays = {
        "tower_eta": jagged([[-0.5, 0.5], [0.5], []]),
        "tower_phi": jagged([[0.5, 0.5], [0.5], []]),
        "tower_e": jagged([[2.0, 8.0], [3.0], []]),
        "c_eta": np.zeros(3),
        "c_phi": np.zeros(3),
    }
    image = make_input(spec, arrays)
    np.testing.assert_array_equal(image.reshape(3, 4), [[0, 0.25, 0, 1], [0, 0, 0, 1], [0, 0, 0, 0]])


# ---------------------------------------------------------------- etaphi: against a reference loop


def reference_etaphi(spec: EtaPhiImage, arrays: dict, centers: list[tuple[float, float]]) -> tuple[np.ndarray, float]:
    """Plain per-point loop in float64; also the closest any kept-or-dropped point came to a pixel edge."""
    n_events = len(centers)
    images = np.zeros((n_events, *spec.shape()))
    closest_to_edge = 1.0
    for channel, points in enumerate(spec.points):
        etas, phis, values = (arrays[name].tolist() for name in (points.eta, points.phi, points.value))
        for event, (eta_center, phi_center) in enumerate(centers):
            for eta, phi, value in zip(etas[event], phis[event], values[event]):
                d_phi = (phi - phi_center + math.pi) % (2 * math.pi) - math.pi
                u = (eta - eta_center) / spec.cell + spec.size / 2
                v = d_phi / spec.cell + spec.size / 2
                closest_to_edge = min(closest_to_edge, abs(u - round(u)), abs(v - round(v)))
                i, j = math.floor(u), math.floor(v)
                if 0 <= i < spec.size and 0 <= j < spec.size:
                    images[event, channel, i, j] += value
    return images, closest_to_edge


def random_towers(rng: np.random.Generator, n_events: int, prefix: str = "tower") -> dict[str, ak.Array]:
    counts = rng.integers(0, 30, n_events)
    counts[::7] = 0  # events with no towers at all
    return {
        f"{prefix}_eta": random_jagged(rng, counts, -1.0, 1.0),
        f"{prefix}_phi": random_jagged(rng, counts, -math.pi, math.pi),
        f"{prefix}_e": random_jagged(rng, counts, 0.0, 5.0),
    }


@pytest.mark.parametrize("masked", [False, True], ids=["as_read", "after_event_mask"])
def test_etaphi_matches_reference_loop_on_random_events(masked):
    rng = np.random.default_rng(7)
    n_events = 80
    hcal = {"eta": "hcal_eta", "phi": "hcal_phi", "value": "hcal_e"}
    spec = etaphi_spec(points=[TOWERS, hcal], center={"eta": "c_eta", "phi": "c_phi"}, size=9, cell=0.15)
    arrays = {**random_towers(rng, n_events), **random_towers(rng, n_events, "hcal")}
    arrays["c_eta"] = rng.uniform(-0.5, 0.5, n_events).astype(np.float32)
    arrays["c_phi"] = rng.uniform(-math.pi, math.pi, n_events).astype(np.float32)
    arrays["c_phi"][:5] = np.float32(math.pi - 0.05)  # windows straddling the phi boundary
    if masked:  # a cut or split keeps some events: jagged arrays become starts/stops into the buffer
        keep = rng.random(n_events) < 0.6
        keep[:5] = True
        arrays = {name: values[keep] for name, values in arrays.items()}
        assert isinstance(ak.to_layout(arrays["tower_eta"]), ak.contents.ListArray)
    n_events = len(arrays["c_eta"])
    centers = list(zip(arrays["c_eta"].tolist(), arrays["c_phi"].tolist()))

    image = make_input(spec, arrays)
    expected, _ = reference_etaphi(spec, arrays, centers)
    assert image.shape == (n_events, 2, 9, 9)
    assert expected.sum() > 0 and np.count_nonzero(expected[:5]) > 0
    np.testing.assert_allclose(image, expected, rtol=1e-6, atol=1e-6)


def test_point_branches_may_be_regular_numpy_arrays():
    spec = etaphi_spec(center={"eta": "c_eta", "phi": "c_phi"}, size=3, cell=1.0)
    lists = {
        "tower_eta": [[0.0, 1.0], [-1.0, 5.0]],
        "tower_phi": [[0.0, 0.0], [1.0, 0.0]],
        "tower_e": [[1.0, 2.0], [3.0, 4.0]],
    }
    centres = {"c_eta": np.zeros(2), "c_phi": np.zeros(2)}
    from_numpy = make_input(spec, {**{k: np.array(v) for k, v in lists.items()}, **centres})
    from_lists = make_input(spec, {**{k: ak.Array(v) for k, v in lists.items()}, **centres})
    np.testing.assert_array_equal(from_numpy, from_lists)
    assert from_numpy.sum() == 6.0 and from_numpy[1, 0, 0, 2] == 3.0


def test_etaphi_centroid_matches_reference_loop_on_random_events():
    rng = np.random.default_rng(11)
    n_events = 50
    spec = etaphi_spec(size=7, cell=0.2)
    arrays = random_towers(rng, n_events)
    centers = []
    for etas, phis, values in zip(*(arrays[name].tolist() for name in ("tower_eta", "tower_phi", "tower_e"))):
        total = sum(values)
        eta_center = sum(v * e for v, e in zip(values, etas)) / total if total else 0.0
        phi_center = math.atan2(
            sum(v * math.sin(p) for v, p in zip(values, phis)), sum(v * math.cos(p) for v, p in zip(values, phis))
        )
        centers.append((eta_center, phi_center))

    expected, closest_to_edge = reference_etaphi(spec, arrays, centers)
    # The kernel's centroid is good to ~1e-7 rad (float32 sin/cos): with these seeded events no
    # point lies that close to a pixel edge, so the images must agree exactly pixel by pixel.
    assert closest_to_edge > 1e-4
    np.testing.assert_allclose(make_input(spec, arrays), expected, rtol=1e-6, atol=1e-6)


def test_nan_or_inf_raises_naming_the_branch_and_event():
    spec = etaphi_spec(center={"eta": "c_eta", "phi": "c_phi"})
    arrays = {
        "tower_eta": jagged([[0.0], [0.1, 0.2], [0.3]]),
        "tower_phi": jagged([[0.0], [0.1, 0.2], [0.3]]),
        "tower_e": jagged([[1.0], [1.0, np.nan], [1.0]], np.float32),
        "c_eta": np.zeros(3),
        "c_phi": np.zeros(3),
    }
    with pytest.raises(ValueError, match=r"'tower_e'.*event 1 "):
        make_input(spec, arrays)
    arrays["tower_e"] = jagged([[1.0], [1.0, 1.0], [1.0]])
    arrays["c_phi"] = np.array([0.0, 0.0, np.inf])
    with pytest.raises(ValueError, match=r"'c_phi'.*event 2 "):
        make_input(spec, arrays)


def test_points_of_one_set_must_have_equal_counts():
    spec = etaphi_spec(center={"eta": "c_eta", "phi": "c_phi"})
    arrays = {
        "tower_eta": jagged([[0.0, 0.1]]),
        "tower_phi": jagged([[0.0]]),
        "tower_e": jagged([[1.0, 1.0]]),
        "c_eta": np.zeros(1),
        "c_phi": np.zeros(1),
    }
    with pytest.raises(ValueError, match="'tower_eta' and 'tower_phi'"):
        make_input(spec, arrays)


def test_branches_for_each_kind():
    assert branches_for(etaphi_spec()) == {"tower_eta", "tower_phi", "tower_e"}
    assert branches_for(
        etaphi_spec(center={"eta": "el_eta", "phi": "el_phi"}, channel_branch="layer", n_channels=3)
    ) == {"tower_eta", "tower_phi", "tower_e", "el_eta", "el_phi", "layer"}
    assert branches_for(JetImage(kind="jet", eta="e", phi="p", value="pt")) == {"e", "p", "pt"}
    assert branches_for(HitsXYImage(kind="hits_xy", encoding="binary")) == {"XE", "XW", "YE", "YW"}
    assert branches_for(HitsXYImage(kind="hits_xy", encoding="total")) == {"XE", "XW", "YE", "YW", "RC"}
    assert branches_for(HitsXYImage(kind="hits_xy", encoding=["binary", "per_hit"])) == {"XE", "XW", "YE", "YW", "RC"}
    assert branches_for(VoxelImage(kind="voxels", shape=(2, 2, 2), cells="ecal")) == {"ecal"}
    assert branches_for(Scalars(kind="scalars", branches=["pt", "log(e)"])) == {"pt", "e"}  # the branches read


# ---------------------------------------------------------------- jet


def canonical_two_prong() -> list[tuple[float, float, float]]:
    """(eta, phi, pT) in the documented orientation: centroid at the origin, major axis on eta,
    leading prong on +eta, most pT at phi >= 0 (a soft third constituent below)."""
    return [(0.1, 0.02, 3.0), (-0.3, 0.02, 1.0), (0.0, -0.2, 0.4)]


def test_jet_preprocessing_puts_a_two_prong_jet_in_the_documented_orientation():
    # Disguise the canonical jet: mirror phi, rotate by 2 rad, then move it off the jet axis.
    angle, shift = 2.0, (0.05, -0.07)
    moved = []
    for eta, phi, pt in canonical_two_prong():
        phi = -phi
        eta, phi = math.cos(angle) * eta - math.sin(angle) * phi, math.sin(angle) * eta + math.cos(angle) * phi
        moved.append((eta + shift[0], phi + shift[1], pt))
    arrays = {name: jagged([[point[k] for point in moved]]) for k, name in enumerate(["etarel", "phirel", "ptrel"])}
    spec = JetImage(kind="jet", eta="etarel", phi="phirel", value="ptrel", size=33, extent=0.825, norm="none")

    image = make_input(spec, arrays)
    # cell 0.05, pixel = floor(x / 0.05 + 16.5): the canonical positions, mid-pixel
    expected = np.zeros((1, 1, 33, 33), np.float32)
    expected[0, 0, 18, 16] = 3.0
    expected[0, 0, 10, 16] = 1.0
    expected[0, 0, 16, 12] = 0.4
    np.testing.assert_allclose(image, expected, rtol=1e-6)

    raw = make_input(spec.model_copy(update={"preprocess": []}), arrays)
    assert raw.sum() == pytest.approx(4.4) and raw[0, 0, 18, 16] == 0  # without it, elsewhere


def reference_jet(spec: JetImage, arrays: dict) -> np.ndarray:
    """Per event in float64; the principal axis from an eigen-decomposition, not the kernel's atan2."""
    etas, phis, pts = (arrays[name].tolist() for name in (spec.eta, spec.phi, spec.value))
    cell = 2 * spec.extent / spec.size
    images = np.zeros((len(etas), *spec.shape()))
    for event, (eta, phi, pt) in enumerate(zip(etas, phis, pts)):
        if not pt:
            continue
        points, weights = np.array([eta, phi], dtype=np.float64).T, np.array(pt)
        points -= weights @ points / weights.sum()
        values, vectors = np.linalg.eigh((points * weights[:, None]).T @ points)
        axis = vectors[:, np.argmax(values)]
        points = points @ np.array([[axis[0], -axis[1]], [axis[1], axis[0]]])
        points *= np.where(weights @ np.sign(points) < 0, -1.0, 1.0)
        for (x, y), value in zip(points, pt):
            i, j = math.floor(x / cell + spec.size / 2), math.floor(y / cell + spec.size / 2)
            if 0 <= i < spec.size and 0 <= j < spec.size:
                images[event, 0, i, j] += value
    return images


def test_jet_matches_reference_loop_and_keeps_total_intensity():
    rng = np.random.default_rng(3)
    counts = rng.integers(0, 25, 40)
    counts[::5] = 0
    arrays = {
        "etarel": random_jagged(rng, counts, -0.4, 0.4),
        "phirel": random_jagged(rng, counts, -0.4, 0.4),
        "ptrel": random_jagged(rng, counts, 0.001, 0.3),
    }
    spec = JetImage(kind="jet", eta="etarel", phi="phirel", value="ptrel", size=16, extent=0.8, norm="none")
    image = make_input(spec, arrays)
    np.testing.assert_allclose(image, reference_jet(spec, arrays), rtol=1e-5, atol=1e-6)
    # every constituent stays within 0.4 * sqrt(2) * 2 < 0.8 of the centroid: nothing is lost
    np.testing.assert_allclose(image.sum(axis=(1, 2, 3)), ak.to_numpy(ak.sum(arrays["ptrel"], axis=1)), rtol=1e-5)

    l1 = make_input(spec.model_copy(update={"norm": "l1"}), arrays)
    np.testing.assert_allclose(l1.sum(axis=(1, 2, 3)), np.where(counts > 0, 1.0, 0.0), rtol=1e-5)


# ---------------------------------------------------------------- hits_xy


def hits_batch() -> dict[str, ak.Array]:
    # size 4, extent 2: cell 1, pixel = floor(x + 2). Event 0: two hits share a pixel, one is
    # elsewhere, one lies outside the window; event 1 has no hits; event 2 one hit on the edge.
    return {
        "XE": jagged([[0.2, 0.0, -1.5, 5.0], [], [-2.0]]),
        "XW": jagged([[0.6, 0.8, -1.5, 5.0], [], [-2.0]]),
        "YE": jagged([[-1.2, -1.0, 1.0, 0.0], [], [1.98]]),
        "YW": jagged([[-0.8, -1.0, 2.0, 0.0], [], [2.0]]),
        "RC": ak.Array([[10, 20, 30, 40], [], [5]]),  # integer ADC counts, as in the study
    }


@pytest.mark.parametrize(
    ("encoding", "shared_pixel", "lone_hit", "edge_hit"),
    [
        ("binary", 1.0, 1.0, 1.0),
        ("total", 100.0, 100.0, 5.0),  # 10 + 20 + 30 + 40: the hit outside the window counts
        ("average", 25.0, 25.0, 5.0),  # 100 / 4 hits
        ("per_hit", 30.0, 30.0, 5.0),  # 10 + 20 in the shared pixel
    ],
)
def test_hits_xy_encodings(encoding, shared_pixel, lone_hit, edge_hit):
    spec = HitsXYImage(kind="hits_xy", size=4, extent=2.0, encoding=encoding)
    image = make_input(spec, hits_batch())
    expected = np.zeros((3, 1, 4, 4), np.float32)
    expected[0, 0, 1, 2] = shared_pixel  # X = 0.4, Y = -1: row i_y = 1, column i_x = 2
    expected[0, 0, 3, 0] = lone_hit  # X = -1.5, Y = 1.5
    expected[2, 0, 3, 0] = edge_hit  # X = -2 is the window's lower edge: inside
    np.testing.assert_array_equal(image, expected)


def test_hits_xy_encoding_list_stacks_each_encodings_image_with_its_own_norm():
    spec = HitsXYImage(kind="hits_xy", size=4, extent=2.0, encoding=["binary", "per_hit"], norm="max")
    assert spec.shape() == (2, 4, 4)
    image = make_input(spec, hits_batch())
    hits_map = make_input(HitsXYImage(kind="hits_xy", size=4, extent=2.0, encoding="binary", norm="max"), hits_batch())
    energies = make_input(HitsXYImage(kind="hits_xy", size=4, extent=2.0, encoding="per_hit", norm="max"), hits_batch())
    np.testing.assert_array_equal(image, np.concatenate([hits_map, energies], axis=1))
    assert image[0, 1, 1, 2] == 1.0 and image[0, 1, 3, 0] == 1.0  # 30 ADC in both pixels, each its channel's max


def test_hits_xy_encoding_list_with_tracks_has_a_channel_per_encoding_and_track():
    spec = HitsXYImage(kind="hits_xy", size=4, extent=2.0, encoding=["binary", "total"], track_branch="TRK", tracks=2)
    arrays = {**hits_batch(), "TRK": ak.Array([[1, 1, 2, 0], [], [2]])}
    image = make_input(spec, arrays)
    assert image.shape == (3, 4, 4, 4)
    singles = [make_input(one, arrays) for one in spec.single()]
    np.testing.assert_array_equal(image, np.concatenate(singles, axis=1))
    assert image[0, 0, 1, 2] == 1.0 and image[0, 2, 1, 2] == 30.0  # track 1's hits: binary, then their total


@pytest.mark.parametrize("encoding", [[], ["binary", "binary"]])
def test_hits_xy_encoding_list_must_be_distinct_encodings(encoding):
    with pytest.raises(ValueError, match="a list of distinct encodings"):
        HitsXYImage(kind="hits_xy", encoding=encoding)


# ---------------------------------------------------------------- voxels


def test_voxel_cells_reshape_roundtrip_from_numpy_and_awkward():
    spec = VoxelImage(kind="voxels", shape=(2, 3, 4), cells="ecal")
    cells = np.arange(3 * 24, dtype=np.float64).reshape(3, 24)
    expected = cells.reshape(3, 1, 2, 3, 4).astype(np.float32)
    np.testing.assert_array_equal(make_input(spec, {"ecal": cells}), expected)
    np.testing.assert_array_equal(make_input(spec, {"ecal": cells.reshape(3, 2, 3, 4)}), expected)
    np.testing.assert_array_equal(make_input(spec, {"ecal": ak.Array(cells.tolist())}), expected)  # jagged lists
    np.testing.assert_array_equal(make_input(spec, {"ecal": ak.from_numpy(cells)}), expected)  # regular
    assert expected[1, 0, 1, 2, 3] == 24 + 1 * 12 + 2 * 4 + 3  # C order: z fastest


def test_voxel_cells_with_a_wrong_count_raise_naming_the_branch():
    spec = VoxelImage(kind="voxels", shape=(2, 3, 4), cells="hcal_cells")
    lists = [[0.0] * 24, [0.0] * 23]
    with pytest.raises(ValueError, match=r"'hcal_cells'.*expected 24.*found 23 in event 1"):
        make_input(spec, {"hcal_cells": ak.Array(lists)})
    with pytest.raises(ValueError, match=r"'hcal_cells'.*expected 24.*found 25"):
        make_input(spec, {"hcal_cells": np.zeros((2, 25))})


def test_voxel_points_are_binned_over_half_open_ranges():
    spec = VoxelImage(
        kind="voxels",
        shape=(2, 3, 4),
        points={"x": "x", "y": "y", "z": "z", "value": "e"},
        range=[(0.0, 2.0), (0.0, 3.0), (-4.0, 4.0)],
    )
    arrays = {  # bins of width 1, 1, 2
        "x": jagged([[0.5, 0.6, 1.0, 2.0, -0.01], []]),
        "y": jagged([[0.5, 0.7, 2.99, 1.0, 1.0], []]),
        "z": jagged([[-3.0, -2.5, 2.0, 0.0, 0.0], []]),
        "e": jagged([[1.0, 2.0, 4.0, 8.0, 16.0], []]),
    }
    image = make_input(spec, arrays)
    expected = np.zeros((2, 1, 2, 3, 4), np.float32)
    expected[0, 0, 0, 0, 0] = 3.0  # two points in one voxel
    expected[0, 0, 1, 2, 3] = 4.0  # x = 1.0 and z = 2.0 sit on lower edges: upper voxel
    np.testing.assert_array_equal(image, expected)  # x = 2.0 (high edge) and -0.01 are dropped


# ---------------------------------------------------------------- scalars and norms


def test_scalars_are_stacked_and_checked():
    spec = Scalars(kind="scalars", branches=["ele_pt", "log(ele_e)"])
    out = make_input(spec, {"ele_pt": np.array([10.0, 20.0]), "ele_e": ak.Array([np.e, np.e**2])})
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, [[10.0, 1.0], [20.0, 2.0]], rtol=1e-6)
    with pytest.raises(ValueError, match=r"'log\(ele_e\)'"):
        make_input(spec, {"ele_pt": np.array([10.0, 20.0]), "ele_e": np.array([1.0, np.nan])})
    with pytest.raises(ValueError, match=r"'log\(ele_e\)' has a list of values per event"):
        make_input(spec, {"ele_pt": np.array([10.0, 20.0]), "ele_e": ak.Array([[1.0], [2.0, 3.0]])})


def test_norms_per_event_and_all_zero_images_stay_zero():
    images = np.array([[[[1.0, -3.0], [2.0, 0.0]]], [[[0.0, 0.0], [0.0, 0.0]]], [[[0.5, 0.0], [0.0, 0.0]]]], np.float32)
    original = images.copy()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no division-by-zero warnings either
        l1, l2, top, log = (apply_norm(images, norm) for norm in ("l1", "l2", "max", "log1p"))
    np.testing.assert_allclose(l1[0], images[0] / 6.0, rtol=1e-6)
    np.testing.assert_allclose(l2[0], images[0] / math.sqrt(14.0), rtol=1e-6)
    np.testing.assert_allclose(top[0], images[0] / 3.0, rtol=1e-6)  # largest |value|
    np.testing.assert_allclose(log[0], np.sign(images[0]) * np.log1p(np.abs(images[0])), rtol=1e-6)
    for normed in (l1, l2, top, log):
        np.testing.assert_array_equal(normed[1], 0.0)
    assert top[2, 0, 0, 0] == 1.0 and l1[2, 0, 0, 0] == 1.0
    np.testing.assert_array_equal(images, original)  # the input is left alone
    np.testing.assert_array_equal(apply_norm(images, "none"), images)
    with pytest.raises(ValueError, match="unknown norm"):
        apply_norm(images, "l3")


# ---------------------------------------------------------------- augment


def augment_batch() -> dict[str, torch.Tensor]:
    return {
        "image": torch.arange(64 * 2 * 3 * 5, dtype=torch.float32).reshape(64, 2, 3, 5),
        "voxels": torch.rand(64, 1, 2, 2, 2),
        "scalars": torch.rand(64, 3),
    }


@pytest.mark.parametrize(("op", "axis"), [("hflip", -1), ("vflip", -2)])
def test_flips_pick_events_at_random_and_are_involutions(op, axis):
    batch = augment_batch()
    original = batch["image"].clone()
    out = augment(batch, ["image", "voxels", "scalars"], [op], torch.Generator().manual_seed(5))
    flipped = torch.tensor([torch.equal(out["image"][b], original[b].flip(axis)) for b in range(64)])
    kept = torch.tensor([torch.equal(out["image"][b], original[b]) for b in range(64)])
    assert bool((flipped ^ kept).all()) and 16 < int(flipped.sum()) < 48
    again = augment(out, ["image"], [op], torch.Generator().manual_seed(5))  # same draws: undone
    assert torch.equal(again["image"], original)
    assert out["image"].shape == original.shape
    assert out["voxels"] is batch["voxels"] and out["scalars"] is batch["scalars"]
    assert torch.equal(batch["image"], original) and out is not batch


def test_phi_roll_rolls_each_event_by_its_own_shift():
    batch = augment_batch()
    out = augment(batch, ["image"], ["phi_roll"], torch.Generator().manual_seed(2))["image"]
    shifts = []
    for b in range(64):
        matches = [s for s in range(5) if torch.equal(out[b], torch.roll(batch["image"][b], s, dims=-1))]
        assert len(matches) == 1
        shifts.append(matches[0])
    assert len(set(shifts)) > 1


def test_augment_rejects_unknown_ops():
    with pytest.raises(ValueError, match="rotate90"):
        augment(augment_batch(), ["image"], ["rotate90"])


def test_spec_rejects_ambiguous_channels_and_empty_ranges():
    with pytest.raises(ValueError, match="channel_branch needs n_channels"):
        etaphi_spec(channel_branch="layer")
    with pytest.raises(ValueError, match="low < high"):
        VoxelImage(
            kind="voxels",
            shape=(2, 2, 2),
            points={"x": "x", "y": "y", "z": "z", "value": "e"},
            range=[(0, 1), (1, 1), (0, 1)],
        )


def test_etaphi_phi_cell_can_differ_from_eta_cell():
    spec = etaphi_spec(center={"eta": "c_eta", "phi": "c_phi"}, size=3, cell=1.0, cell_phi=0.1)
    arrays = {
        "c_eta": np.zeros(1),
        "c_phi": np.zeros(1),
        "tower_eta": jagged([[0.0]]),
        "tower_phi": jagged([[0.12]]),
        "tower_e": jagged([[1.0]]),
    }
    image = make_input(spec, arrays)[0, 0]
    assert image[1, 2] == 1.0 and image.sum() == 1.0  # 0.12 / 0.1 + 1.5 -> pixel 2 in phi
