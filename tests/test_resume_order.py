"""The exact data order across resumes, and one agreed resume decision across machines.

* pure: the grouping-bucket position equals what Detectron2's AspectRatioGroupedDataset holds;
  a TrainLoaderPosition resumed from its state_dict continues the stream, the seed of a
  ``SEED < 0`` run included;
* one launch of two machines over loopback (1 training process and 2 loader workers each):
  a real SIGTERM at an iteration that is not a checkpoint multiple, then a resume: every rank's
  recorded image ids (RETHINK.DATA.RECORD_IDS) equal those of an uninterrupted run, for
  TrainingSampler, RepeatFactorTrainingSampler and SubsetTrainingSampler, and for aspect-ratio
  grouping with an image waiting in its buckets; then, with a separate OUTPUT_DIR per machine,
  machine 1 cannot read the checkpoint machine 0 resumes from, and both stop with one line.
"""

import itertools
import json
import os
import pickle
import random

import numpy as np
import pytest
import torch
from detectron2.data.common import AspectRatioGroupedDataset
from detectron2.data.samplers import TrainingSampler
from detectron2.data.transforms import ResizeShortestEdge
from PIL import Image

from cluster_utils import errors_of, free_port, start_train_net, wait
from rethink_d2.data.build import ResumableSampler, TrainLoaderPosition, grouped_stream_position

RANK_DUMP = os.path.join(os.path.dirname(os.path.abspath(__file__)), "train_net_rank_dump.py")
DATASET = "rethink_test_dicts"  # registered by train_net_rank_dump.py from RETHINK_TEST_DICTS


# ---- pure ----
def grouped_batches(stream, is_wide, batch_size):
    dicts = ({"width": 3 if is_wide[i] else 2, "height": 2, "index": i} for i in stream)
    return [[d["index"] for d in b] for b in AspectRatioGroupedDataset(dicts, batch_size)]


@pytest.mark.parametrize("batch_size", [1, 2, 3])
def test_grouped_position_continues_like_detectron2_grouping(batch_size):
    rng = random.Random(batch_size)
    is_wide = [rng.random() < 0.4 for _ in range(20)]
    stream = [rng.randrange(20) for _ in range(300)]
    full = grouped_batches(stream, is_wide, batch_size)
    carried = 0
    for k in range(1, 30):
        pulled, carry = grouped_stream_position(iter(stream), is_wide, batch_size, k)
        carried += bool(carry)
        # the carry, then the rest of the stream, refill the buckets as they were
        resumed = grouped_batches(carry + stream[pulled:], is_wide, batch_size)
        assert resumed[:50] == full[k : k + 50]
    assert carried > 0 or batch_size == 1


class StreamLoader:
    """A loader reading its sampler when iterated (as loader workers do): batches of dicts."""

    def __init__(self, sampler, batch_size):
        self.sampler, self.batch_size = sampler, batch_size

    def __iter__(self):
        stream = iter(self.sampler)
        while True:
            yield [{"image_id": next(stream)} for _ in range(self.batch_size)]


def make_position(seed, tmp_path):
    sampler = ResumableSampler(lambda s: TrainingSampler(30, seed=s), seed)
    return TrainLoaderPosition(
        StreamLoader(sampler, 3), sampler, batch_size=3, name="T", record_dir=str(tmp_path)
    )


def ids_of(position, n):
    return [d["image_id"] for batch in itertools.islice(iter(position), n) for d in batch]


def test_position_state_continues_the_stream_and_restores_the_seed(tmp_path):
    first = make_position(101, tmp_path)
    expected = ids_of(make_position(101, tmp_path / "ref"), 9)
    assert ids_of(first, 4) == expected[:12]
    state = first.state_dict()
    assert state["batches"] == 4 and state["seed"] == 101
    # A new run with a random SEED drew another order seed; the checkpoint's wins.
    resumed = make_position(555, tmp_path)
    resumed.load_state_dict(state)
    assert resumed.sampler.seed == 101 and resumed.sampler.skip == 12
    assert ids_of(resumed, 5) == expected[12:]
    assert resumed.state_dict()["batches"] == 9
    with open(tmp_path / "ids_rank0.jsonl") as f:
        lines = [json.loads(line) for line in f]
    # the audit file continues the first run's lines
    assert [line["iter"] for line in lines] == list(range(9))
    assert [i for line in lines for i in line["ids"]] == expected


def test_resume_drops_audit_lines_after_the_checkpoint(tmp_path):
    first = make_position(7, tmp_path)
    ids_of(first, 2)
    state = first.state_dict()
    ids_of(first, 3)  # iterations after the checkpoint, then a crash: not covered by it
    resumed = make_position(7, tmp_path)
    resumed.load_state_dict(state)
    ids_of(resumed, 1)
    with open(tmp_path / "ids_rank0.jsonl") as f:
        assert [json.loads(line)["iter"] for line in f] == [0, 1, 2]


def test_a_pickled_sampler_yields_the_resumed_stream():
    # Loader workers of launched processes are spawned: they get a pickled copy.
    sampler = ResumableSampler(lambda s: TrainingSampler(30, seed=s), 5)
    sampler.skip, sampler.carry = 7, [3, 3, 11]
    copy = pickle.loads(pickle.dumps(sampler))
    expected = [3, 3, 11] + list(itertools.islice(iter(TrainingSampler(30, seed=5)), 7, 40))
    assert list(itertools.islice(iter(copy), 36)) == expected
    assert not copy.reseed(6) and sampler.reseed(6)  # only the original can be rebuilt


def test_another_batch_layout_keeps_the_share_of_images_seen(tmp_path, caplog):
    first = make_position(3, tmp_path)
    ids_of(first, 4)
    state = dict(first.state_dict(), world_size=2)  # saved by a 2-process run
    resumed = make_position(3, tmp_path)
    resumed.load_state_dict(state)
    assert resumed.sampler.skip == 4 * 3 * 2
    assert "the exact image order of the run is not kept" in caplog.text


# ---- 2 processes, workers, SIGTERM, resume ----
def write_dataset(root, num_images=24):
    """Small PNGs of three aspect ratios, one common and one rare class (repeat factors > 1)."""
    rng = np.random.default_rng(0)
    dicts = []
    for i in range(num_images):
        h, w = [(48, 64), (64, 48), (56, 56)][i % 3]
        path = os.path.join(root, f"{i}.png")
        Image.fromarray(rng.integers(0, 255, size=(h, w, 3), dtype=np.uint8)).save(path)
        annos = [{"bbox": [4, 6, 24, 20], "bbox_mode": 1, "category_id": 0}]
        if i % 8 == 0:
            annos.append({"bbox": [20, 20, 16, 16], "bbox_mode": 1, "category_id": 1})
        dicts.append(
            {"file_name": path, "image_id": 1000 + i, "height": h, "width": w, "annotations": annos}
        )
    path = os.path.join(root, "dicts.json")
    with open(path, "w") as f:
        json.dump({"dicts": dicts, "thing_classes": ["common", "rare"]}, f)
    return path


RESUME_OPTS = [
    "MODEL.DEVICE", "cpu",
    "DATASETS.TRAIN", f"('{DATASET}',)",
    "MODEL.ROI_HEADS.NUM_CLASSES", "2",
    "SOLVER.IMS_PER_BATCH", "4",
    "SOLVER.MAX_ITER", "6",
    "SOLVER.CHECKPOINT_PERIOD", "4",
    "DATALOADER.NUM_WORKERS", "2",
    "DATALOADER.ASPECT_RATIO_GROUPING", "False",
    "RETHINK.DATA.RECORD_IDS", "True",
]  # fmt: skip
STOP_AT = 2  # a stop after iteration 2; periodic checkpoints follow iteration 3
# The three samplers; aspect-ratio grouping (its logic does not depend on the sampler) with the
# subset sampler. With SEED 7 (CLUSTER_OPTS), rank 0 has an image in a bucket at the stop.
SCENARIOS = {
    "training": [],
    "repeat": ["DATALOADER.SAMPLER_TRAIN", "RepeatFactorTrainingSampler"]
    + ["DATALOADER.REPEAT_THRESHOLD", "0.3"],
    "subset_grouped": ["DATALOADER.SAMPLER_TRAIN", "SubsetTrainingSampler"]
    + ["RETHINK.DATA.SAMPLER_SUBSET", "'16'", "DATALOADER.ASPECT_RATIO_GROUPING", "True"],
}


def recorded(directory, rank):
    with open(os.path.join(directory, f"ids_rank{rank}.jsonl")) as f:
        return [json.loads(line) for line in f]


def expected_data_seen(image_ids):
    """images / instances / pixels of these images at 64 px (write_dataset's sizes)."""
    totals = {"images": len(image_ids), "instances": 0, "pixels": 0}
    for image_id in image_ids:
        i = image_id - 1000
        h, w = ResizeShortestEdge.get_output_shape(*[(48, 64), (64, 48), (56, 56)][i % 3], 64, 64)
        totals["instances"] += 1 + (i % 8 == 0)
        totals["pixels"] += h * w
    return totals


@pytest.mark.slow
def test_sigterm_resume_and_agreed_resume_on_two_machines(tmp_path):
    """One 2-machine launch (loopback, 1 process + 2 loader workers each) for two checks:

    1. per sampler: the batches of an uninterrupted run (``ref``); a training stopped by SIGTERM
       during iteration 2, checkpointed, then resumed (``run``): every rank's recorded ids equal
       ``ref``'s, and the data-seen totals are those of the recorded images;
    2. then each machine resumes from an OUTPUT_DIR of its own, where machine 1 lacks the
       checkpoint machine 0 resumes from: both stop with the same line.
    """
    out = str(tmp_path / "runs")
    # Phase 2: machine 0's directory holds a checkpoint (model weights are not needed to agree
    # on it), machine 1's nothing.
    agree = [str(tmp_path / "machine0"), str(tmp_path / "machine1")]
    os.makedirs(agree[0])
    torch.save({"model": {}, "iteration": 41}, os.path.join(agree[0], "model_0000041.pth"))
    with open(os.path.join(agree[0], "last_checkpoint"), "w") as f:
        f.write("model_0000041.pth")
    plan = {
        "scenarios": [{"name": n, "opts": o, "stop_at": STOP_AT} for n, o in SCENARIOS.items()],
        "agree_dirs": agree,
    }
    with open(tmp_path / "plan.json", "w") as f:
        json.dump(plan, f)
    env = {
        "RETHINK_TEST_DICTS": write_dataset(str(tmp_path)),
        "RETHINK_TEST_RESUME": str(tmp_path / "plan.json"),
    }
    port = free_port()
    runs = []
    for rank in (0, 1):
        flags = ["--num-machines", "2", "--machine-rank", str(rank)]
        flags += ["--dist-url", f"tcp://127.0.0.1:{port}", "--dist-timeout", "120"]
        log = f"machine{rank}.txt"
        runs.append(start_train_net(out, RESUME_OPTS, flags, RANK_DUMP, log, env=env))
    results = [wait(proc, log, timeout=600) for proc, log in runs]

    for name in SCENARIOS:
        ref, run = os.path.join(out, name, "ref"), os.path.join(out, name, "run")
        seen = []
        for rank in (0, 1):
            expected = recorded(ref, rank)
            assert [line["iter"] for line in expected] == list(range(6))
            assert all(len(line["ids"]) == 2 for line in expected)
            assert recorded(run, rank) == expected, (name, rank)
            seen += [i for line in expected for i in line["ids"]]
        # stopped after iteration 2, not a checkpoint iteration; resumed to the end
        assert os.path.exists(os.path.join(run, f"model_{STOP_AT:07d}.pth"))
        final = torch.load(os.path.join(run, "model_final.pth"), weights_only=False)
        assert final["data_position"]["batches"] == 6
        totals = {k: final["data_seen"][k] for k in ("images", "instances", "pixels")}
        assert totals == expected_data_seen(seen), name
    grouped = os.path.join(out, "subset_grouped")
    with open(os.path.join(grouped, "ref", "subset_manifest.json")) as f:
        subset = json.load(f)["subsets"]["SubsetTrainingSampler"]["image_ids"]
    wide = {1000 + i for i in range(24) if i % 3 == 0}  # the 48 x 64 images
    for rank in (0, 1):
        batches = [line["ids"] for line in recorded(os.path.join(grouped, "run"), rank)]
        assert {i for b in batches for i in b} <= set(subset) and len(subset) == 16
        assert all(len({i in wide for i in b}) == 1 for b in batches)  # grouping applied
    # An image sat in an aspect-ratio bucket at the stop; it was neither lost nor repeated.
    with open(os.path.join(grouped, "run", "carry_rank0.json")) as f:
        assert len(json.load(f)) == 1

    missing = os.path.join(agree[1], "model_0000041.pth")
    for code, output in results:
        assert code == 2, output[-3000:]
        (error,) = errors_of(output)
        assert f"machine 1 (rank 1) cannot read {missing}" in error, error
        assert "resumes from its model_0000041.pth (iteration 41)" in error
        assert "OUTPUT_DIR must be shared storage" in error
        assert "Traceback" not in output
