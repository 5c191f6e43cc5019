"""Association and filters (hareid.footage.track) on hand-made detections."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from hareid.footage.track import (
    Detection,
    SceneGeometry,
    TrackerConfig,
    associate,
    box_iou,
    filter_tracklets,
    fit_scene_geometry,
    linear_assignment,
    tracklets_from_ids,
)


def test_box_iou_hand_computed() -> None:
    a = np.array([[0, 0, 10, 10]])
    b = np.array([[5, 5, 15, 15], [20, 20, 30, 30], [0, 0, 10, 10]])
    np.testing.assert_allclose(box_iou(a, b), [[25 / 175, 0.0, 1.0]])


def test_linear_assignment_matches_brute_force() -> None:
    """Optimal: the pairs under the limit that maximise sum(limit - cost) (leaving a row and a
    column unmatched costs the limit), checked against every partial matching."""
    rng = np.random.default_rng(0)
    for _ in range(40):
        n, m = (int(v) for v in rng.integers(1, 5, size=2))
        cost = rng.random((n, m))
        limit = 0.7
        pairs = linear_assignment(cost, limit)
        assert all(cost[i, j] <= limit for i, j in pairs)
        assert len({i for i, _ in pairs}) == len(pairs) == len({j for _, j in pairs})
        size = max(n, m)
        gain = np.zeros((size, size))
        gain[:n, :m] = np.clip(limit - cost, 0, None)  # a pair above the limit gains nothing
        best = max(sum(gain[i, p] for i, p in enumerate(perm)) for perm in itertools.permutations(range(size)))
        assert sum(limit - cost[i, j] for i, j in pairs) == pytest.approx(best)


def _walk(x0: float, vx: float, y: float, frames: range, w: float = 20, h: float = 60) -> dict[int, np.ndarray]:
    return {f: np.array([x0 + vx * (f - frames.start), y, x0 + vx * (f - frames.start) + w, y + h],
                        np.float32) for f in frames}


def _frames(*walks: dict[int, np.ndarray], n: int) -> tuple[list[list[Detection]], list[dict]]:
    frames, owner = [], []
    for f in range(n):
        dets, who = [], {}
        for k, w in enumerate(walks):
            if f in w:
                who[len(dets)] = k
                dets.append(Detection(f, f / 10, w[f], key=f * 10 + k))
        frames.append(dets)
        owner.append(who)
    return frames, owner


def test_two_people_walking_apart_give_two_clean_tracklets() -> None:
    a = _walk(10, 3, 20, range(0, 30))
    b = _walk(200, -2, 100, range(5, 35))
    frames, _ = _frames(a, b, n=35)
    tracks = associate(frames, fps=10)
    assert len(tracks) == 2
    for t, walk in zip(sorted(tracks, key=lambda t: t.first_frame), (a, b)):
        assert [d.frame for d in t.detections] == sorted(walk)
        assert all(np.array_equal(d.box, walk[d.frame]) for d in t.detections)


def test_a_gap_longer_than_max_gap_splits_the_track() -> None:
    w = _walk(10, 2, 20, range(0, 40))
    keep = {f: b for f, b in w.items() if not 15 <= f < 25}  # 1 s missing at 10 fps
    frames, _ = _frames(keep, n=40)
    tracks = associate(frames, fps=10, cfg=TrackerConfig(max_gap=0.5))
    assert [(t.first_frame, t.last_frame) for t in tracks] == [(0, 14), (25, 39)]
    assert tracks[0].end_reason == "lost"


@pytest.mark.parametrize("speed", [6.0, 1.5])
def test_crossing_never_swaps_identities(speed: float) -> None:
    """Two people cross on one row and the detector sees one merged blob while they overlap. A
    short merge (fast walkers, 3 frames) is coasted through on the motion model; a long one (slow
    walkers, 13 frames) ends both tracks. Either way no tracklet holds both people."""
    n = int(240 / speed / 2) * 2
    a = _walk(0, speed, 50, range(0, n))
    b = _walk(240, -speed, 52, range(0, n))
    frames, owner = _frames(a, b, n=n)
    merged = 0
    for f, dets in enumerate(frames):
        boxes = [d.box for d in dets]
        if len(boxes) == 2 and box_iou(boxes[0][None], boxes[1][None])[0, 0] > 0:
            union = np.concatenate([np.minimum(boxes[0][:2], boxes[1][:2]), np.maximum(boxes[0][2:], boxes[1][2:])])
            frames[f] = [Detection(f, f / 10, union.astype(np.float32), key=-1)]
            owner[f] = {0: -1}
            merged += 1
    tracks = associate(frames, fps=10)
    people = {id(d): owner[d.frame][i] for f, dets in enumerate(frames) for i, d in enumerate(dets)}
    for t in tracks:
        who = {people[id(d)] for d in t.detections}
        assert len(who - {-1}) <= 1, f"tracklet {t.id} holds both people"
        assert len(who) == 1 or len(t) <= 1, "a merged blob was given to a person's tracklet"
    long = [t for t in tracks if len(t) >= 8 and people[id(t.detections[0])] != -1]  # people, not blobs
    if merged <= 3:
        assert merged == 3
        assert len(long) == 2 and all(t.first_frame == 0 and t.last_frame == n - 1 for t in long)
    else:
        assert len(long) == 4  # each person before and after the crossing
        assert sorted(t.end_reason for t in long if t.last_frame < n // 2) == ["merge", "merge"]


def test_odd_boxes_do_not_start_tracks() -> None:
    w = _walk(10, 3, 20, range(0, 20))
    frames, _ = _frames(w, n=20)
    for dets in frames:
        for d in dets:
            d.odd = True
    assert associate(frames, fps=10) == []


def test_scene_geometry_recovers_the_ground_plane_and_flags_pairs() -> None:
    rng = np.random.default_rng(0)
    y2 = rng.uniform(100, 500, 300)
    h = 0.3 * y2 + 10 + rng.normal(0, 2, 300)
    w = 0.4 * h
    boxes = np.stack([np.full(300, 50.0), y2 - h, 50 + w, y2], 1)
    outliers = boxes[:20].copy()
    outliers[:, 1] -= 0.8 * (outliers[:, 3] - outliers[:, 1])  # 1.8x too tall
    g = fit_scene_geometry(np.concatenate([boxes, outliers]))
    assert g is not None
    assert g.a == pytest.approx(0.3, abs=0.02)
    assert g.b == pytest.approx(10, abs=5)
    assert g.aspect == pytest.approx(0.4, abs=0.02)
    assert not g.is_odd(boxes).any()
    assert g.is_odd(outliers).all()
    wide = boxes[:10].copy()
    wide[:, 2] = wide[:, 0] + 2.2 * (wide[:, 2] - wide[:, 0])  # two people side by side
    assert g.is_odd(wide).all()
    assert fit_scene_geometry(boxes[:5]) is None


def test_filters_drop_short_static_and_group_tracklets() -> None:
    geometry = SceneGeometry(a=0.0, b=60.0, aspect=0.33, inliers=100)
    walking = _walk(10, 3, 20, range(0, 20))
    static = _walk(150, 0, 200, range(0, 20))
    short = _walk(400, 3, 300, range(0, 4))
    pair = _walk(300, 3, 100, range(0, 20), w=45)  # twice a person's width
    frames, _ = _frames(walking, static, short, pair, n=20)
    tracks = associate(frames, fps=10)
    kept, dropped = filter_tracklets(tracks, TrackerConfig(min_frames=8), geometry=geometry)
    assert len(kept) == 1 and kept[0].first_frame == 0 and kept[0].motion() > 0.3
    assert dropped == {"too_short": 1, "static": 1, "group": 1}
    assert kept[0].id == 0


def test_given_identities_are_split_at_gaps() -> None:
    frames = [[Detection(f, f / 10, np.array([0, 0, 10, 30], np.float32), track=7)]
              for f in list(range(0, 10)) + list(range(30, 40))]
    tracks = tracklets_from_ids(frames, fps=10, max_gap=0.5)
    assert [(t.identity, t.first_frame, t.last_frame) for t in tracks] == [(7, 0, 9), (7, 30, 39)]
