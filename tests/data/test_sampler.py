"""IdentitySampler: P x K batches, epoch length, determinism, DDP shares."""

from __future__ import annotations

from collections import Counter

import pytest

from hareid.data import IdentitySampler, ImageRecord
from hareid.errors import DataError


def _records(counts: list[int]) -> list[ImageRecord]:
    return [ImageRecord(f"/x/{pid}_{i}.jpg", pid, i % 3, "train")
            for pid, n in enumerate(counts) for i in range(n)]


COUNTS = [1, 2, 3, 4, 5, 7, 8, 9, 12, 16, 4, 4, 6, 30]


def _batches(sampler: IdentitySampler) -> list[list[int]]:
    idx = list(sampler)
    assert len(idx) == len(sampler)
    return [idx[i:i + sampler.batch_size] for i in range(0, len(idx), sampler.batch_size)]


def test_pk_structure_and_epoch_length():
    recs = _records(COUNTS)
    s = IdentitySampler(recs, batch_size=12, num_instances=4, seed=3)
    chunks = sum(max(1, n // 4) for n in COUNTS)  # documented definition
    assert len(s) == (chunks // 3) * 12
    for b in _batches(s):
        pids = [recs[i].pid for i in b]
        groups = [pids[j:j + 4] for j in range(0, 12, 4)]
        assert all(len(set(g)) == 1 for g in groups)  # K images of one identity, consecutive
        assert len({g[0] for g in groups}) == 3  # P distinct identities
        for g, j in zip(groups, range(0, 12, 4)):
            ids = b[j:j + 4]
            if COUNTS[g[0]] >= 4:
                assert len(set(ids)) == 4  # no repeats when the identity has enough images


def test_deterministic_under_seed_and_epoch():
    recs = _records(COUNTS)
    a = IdentitySampler(recs, 8, 2, seed=1)
    b = IdentitySampler(recs, 8, 2, seed=1)
    assert list(a) == list(b)
    a.set_epoch(1)
    assert list(a) != list(b)
    b.set_epoch(1)
    assert list(a) == list(b)
    assert list(IdentitySampler(recs, 8, 2, seed=2)) != list(IdentitySampler(recs, 8, 2, seed=1))


@pytest.mark.parametrize("world", [2, 3])
def test_ddp_ranks_disjoint_equal_length(world):
    recs = _records(COUNTS * 3)
    single = IdentitySampler(recs, 8, 4, seed=5)
    ranks = [IdentitySampler(recs, 8, 4, seed=5, rank=r, world_size=world) for r in range(world)]
    for r in ranks:
        r.set_epoch(2)
    lens = {len(r) for r in ranks}
    assert len(lens) == 1 and lens.pop() == (single.num_batches_total // world) * 8
    per_rank = [_batches(r) for r in ranks]
    assert len({len(p) for p in per_rank}) == 1
    seen = Counter(tuple(b) for p in per_rank for b in p)
    assert all(c == 1 for c in seen.values())  # each batch on exactly one rank
    # ranks together cover the same batches as the global order, interleaved
    full = IdentitySampler(recs, 8, 4, seed=5, rank=0, world_size=1)
    full.set_epoch(2)
    glob = [tuple(int(i) for i in b) for b in full._all_batches()][: ranks[0].num_batches_total]
    assert sorted(seen) == sorted(glob)


def test_every_identity_with_images_is_used_and_errors():
    recs = _records([8] * 10)
    s = IdentitySampler(recs, 8, 4, seed=0)
    used = Counter(recs[i].pid for i in s)
    assert set(used) == set(range(10)) and all(v == 8 for v in used.values())
    with pytest.raises(DataError, match="multiple"):
        IdentitySampler(recs, 10, 4)
    with pytest.raises(DataError, match="identities"):
        IdentitySampler(_records([4, 4]), 12, 4)
