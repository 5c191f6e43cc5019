"""DDP on CPU (gloo): ``torchrun --nproc_per_node 2`` trains a tiny model; both ranks finish with equal
weights that match one process seeing the same global batches; sharded evaluation gathers features
back in dataset order and scores like a single process.

Equivalence needs a model whose forward does not depend on how the global batch is split: with
BatchNorm in train mode each rank normalises by its own 4-image statistics, not the 8-image ones,
so the tiny model (``train_once``, tests/helpers/toys.py) has no BatchNorm and no dropout
(SyncBatchNorm, ``train.sync_bn``, would restore equivalence on GPUs). The loss is cross-entropy
only: batch-hard triplet mining looks inside each rank's batch. Per-rank losses are means over
equal per-rank batches, and DDP averages gradients, so the update equals the one-process update up
to float summation order.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from hareid import distributed as hdist
from hareid.checkpoint import load_checkpoint
from tests.helpers.toys import FS, train_once

ROOT = Path(__file__).resolve().parents[1]  # the repository: ``tests.helpers`` for the workers


WORKER = """
import json, os, sys, torch
from pathlib import Path
from dataclasses import asdict
import numpy as np
from hareid import distributed as hdist
from tests.helpers.toys import train_once, FS

info = hdist.init_distributed()
assert info.world_size == 2 and info.backend == "gloo"
res, weights = train_once(Path({out!r}), info.rank, info.world_size)
torch.save(weights, Path({out!r}) / f"weights_rank{{info.rank}}.pt")

# gather_feature_set: strided shards of 7 items come back whole and in order
idx = hdist.shard_indices(7)
fs = FS(torch.tensor([[float(i), 2.0 * i] for i in idx]), np.array(idx) * 10, np.array(idx) % 3,
        [f"p{{i}}" for i in idx])
full = hdist.gather_feature_set(fs, total=7)
assert isinstance(full, FS)
assert full.features[:, 0].tolist() == list(range(7)), full.features
assert full.pids.tolist() == [10 * i for i in range(7)] and full.paths == [f"p{{i}}" for i in range(7)]
parts = hdist.all_gather_tensor(torch.full((info.rank + 1, 2), float(info.rank)))
assert [p.shape[0] for p in parts] == [1, 2] and parts[1].eq(1).all()
if info.rank == 0:
    (Path({out!r}) / "result.json").write_text(json.dumps({{k: v for k, v in res.items() if k != "best"}}))
hdist.cleanup_distributed()
sys.stdout.write(f"RANK_DONE {{info.rank}}\\n")
sys.stdout.flush()
"""


def test_single_process_helpers_are_identity() -> None:
    assert not hdist.is_distributed() and hdist.get_rank() == 0 and hdist.get_world_size() == 1
    assert hdist.init_distributed().world_size == 1
    fs = FS(torch.zeros(2, 2), np.zeros(2), np.zeros(2), ["a", "b"])
    assert hdist.gather_feature_set(fs) is fs
    assert hdist.all_gather_object(3) == [3] and hdist.broadcast_object("x") == "x"
    assert hdist.shard_indices(7, rank=1, world_size=3) == [1, 4]
    loader = DataLoader(list(range(7)), batch_size=2)
    assert hdist.shard_loader(loader, 0, 1) is loader
    shard = hdist.shard_loader(loader, 1, 2)
    assert [int(x) for b in shard for x in b] == [1, 3, 5]


def test_ddp_two_processes_match_one_process(tmp_path: Path) -> None:
    pytest.importorskip("hareid.evaluate")
    ddp_out, ref_out = tmp_path / "ddp", tmp_path / "ref"
    ddp_out.mkdir()
    script = tmp_path / "worker.py"
    script.write_text(textwrap.dedent(WORKER.format(out=str(ddp_out))))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1",
           "PYTHONPATH": os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])}
    env.pop("PYTEST_XDIST_WORKER", None)
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(script)],
        capture_output=True, text=True, env=env, timeout=180,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "RANK_DONE 0" in proc.stdout and "RANK_DONE 1" in proc.stdout

    w0 = torch.load(ddp_out / "weights_rank0.pt")
    w1 = torch.load(ddp_out / "weights_rank1.pt")
    assert all(torch.equal(w0[k], w1[k]) for k in w0)  # ranks stay bitwise in step

    ref_res, ref_w = train_once(ref_out, 0, 1)  # one process, same global batches
    for k in ref_w:
        torch.testing.assert_close(w0[k], ref_w[k], rtol=1e-4, atol=1e-5)
    ddp_res = json.loads((ddp_out / "result.json").read_text())
    assert ddp_res["loss"] == pytest.approx(ref_res["loss"], rel=1e-4)
    # sharded + gathered evaluation (hareid.evaluate on each shard) scores like one process
    assert ddp_res["rank1"] == pytest.approx(ref_res["rank1"], abs=1e-6)
    assert ddp_res["mAP"] == pytest.approx(ref_res["mAP"], abs=1e-4)
    # only rank 0 wrote the run folder: one line per epoch, not two
    lines = [json.loads(x) for x in (ddp_out / "metrics.jsonl").read_text().splitlines()]
    assert [x["epoch"] for x in lines if "loss" in x] == [1, 2]
    ckpt = load_checkpoint(ddp_out / "checkpoints" / "last.pt")
    assert ckpt["world_size"] == 2
    ranks = ckpt["rng_ranks"]  # each rank's own RNG, restored per rank on resume
    assert len(ranks) == 2 and not torch.equal(ranks[0]["rng"]["torch"], ranks[1]["rng"]["torch"])
