"""Cross-camera linking (hareid.footage.link) on hand-made cases: constraints and clustering."""

from __future__ import annotations

import numpy as np
import pytest

from hareid.errors import DataError
from hareid.footage.link import (
    Track,
    TravelWindow,
    agglomerate,
    cannot_link,
    link_tracks,
    parse_travel,
)
from hareid.index.base import mean_unit


def _unit(*rows: list[float]) -> np.ndarray:
    x = np.asarray(rows, np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_mean_unit_averages_unit_rows_per_key() -> None:
    keys, v = mean_unit(np.array([[3.0, 0], [0, 1], [0, 5], [1, 1]]), ["a", "b", "a", "b"])
    assert keys == ["a", "b"]
    np.testing.assert_allclose(v[0], [2 ** -0.5, 2 ** -0.5], atol=1e-6)  # (1,0)+(0,1): scale ignored
    np.testing.assert_allclose(np.linalg.norm(v, axis=1), 1, atol=1e-6)


def test_cannot_link_same_camera_same_time_and_travel_windows() -> None:
    tracks = [Track("a/1", "a", 0, 10), Track("a/2", "a", 5, 15), Track("a/3", "a", 20, 30),
              Track("b/1", "b", 40, 50), Track("b/2", "b", 12, 18)]
    c = cannot_link(tracks)
    assert c[0, 1] and c[1, 0]  # seen together in camera a
    assert not c[0, 2] and not c[0, 3] and not c.diagonal().any()
    c = cannot_link(tracks, [TravelWindow("b", "a", 5, 15)])
    # a/3 ends at 30, b/1 starts at 40: 10 s, inside; a/1 -> b/1: 30 s, outside
    assert not c[2, 3] and c[0, 3]
    assert c[2, 4]  # b/2 (12-18) before a/3 (20-30): 2 s, too fast


def test_a_cannot_link_pair_never_merges_even_when_identical() -> None:
    v = _unit([1, 0], [1, 0], [1, 0.01])
    d = 1 - v @ v.T
    cannot = np.zeros((3, 3), bool)
    cannot[0, 1] = True
    lab = agglomerate(d, cannot, threshold=0.5)
    assert lab[0] != lab[1]
    assert lab[2] in (lab[0], lab[1])
    # the constraint holds for clusters: 2 joins 0 or 1, and then the other stays apart
    assert len(set(lab.tolist())) == 2


def test_two_identities_over_three_cameras_cluster_correctly() -> None:
    rng = np.random.default_rng(0)
    red, blue = rng.normal(size=16), rng.normal(size=16)
    tracks, vecs, truth = [], [], []
    for k, (cam, start, who) in enumerate([("a", 0, 0), ("a", 0, 1), ("b", 20, 0), ("b", 22, 1),
                                           ("c", 50, 1), ("c", 60, 0), ("a", 90, 0)]):
        tracks.append(Track(f"{cam}/{k}", cam, start, start + 8))
        vecs.append((red if who == 0 else blue) + 0.3 * rng.normal(size=16))
        truth.append(who)
    labels, thr = link_tracks(tracks, _unit(*vecs), threshold=0.5)
    assert thr == 0.5
    assert len(set(labels.tolist())) == 2
    assert all((labels[i] == labels[j]) == (truth[i] == truth[j]) for i in range(7) for j in range(7))
    assert labels[0] == 0  # numbered by first appearance
    # a threshold of 0 keeps every tracklet apart
    assert len(set(link_tracks(tracks, _unit(*vecs), threshold=0.0)[0].tolist())) == 7


def test_parse_travel() -> None:
    assert parse_travel("gate:lobby:5:60") == TravelWindow("gate", "lobby", 5.0, 60.0)
    assert parse_travel("a:b:-3:10").lo == -3.0
    for bad in ("gate:lobby:60", "gate:lobby:9:5", "a:b:x:5", "::1:2"):
        with pytest.raises(DataError, match="CAM_A:CAM_B:MIN_S:MAX_S"):
            parse_travel(bad)
