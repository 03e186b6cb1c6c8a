"""Images / instances / pixels seen: exact counts, logging, resume, 2 processes, a real run."""

import json
import logging
import os

import pytest
import torch
from torch import nn

from detectron2.checkpoint import Checkpointer
from detectron2.engine import TrainerBase, hooks
from detectron2.structures import Instances
from detectron2.utils import comm

from cluster_utils import launch_gloo
from rethink_d2.engine.data_seen import DataSeenCounter, DataSeenHook
from rethink_d2.utils.errors import TrainingError

from test_schedule import TINY_DATASET, TINY_SIZES, register_tiny_dataset, tiny_train_cfg

KEYS = ("data_seen/images", "data_seen/instances", "data_seen/pixels")


def make_batch(k, rank=0):
    """Batch number ``k``: 1 + k % 3 images of 8(k%4+1) x (16 + rank) px, k % 5 + rank objects."""
    batch = []
    for _ in range(1 + k % 3):
        h, w = 8 * (k % 4 + 1), 16 + rank
        n = k % 5 + rank
        instances = Instances((h, w), gt_classes=torch.zeros(n, dtype=torch.int64))
        batch.append({"image": torch.zeros(3, h, w, dtype=torch.uint8), "instances": instances})
    return batch


def expected_counts(ks, rank=0):
    images = sum(1 + k % 3 for k in ks)
    instances = sum((1 + k % 3) * (k % 5 + rank) for k in ks)
    pixels = sum((1 + k % 3) * 8 * (k % 4 + 1) * (16 + rank) for k in ks)
    return images, instances, pixels


def batches_from(start, rank=0, fail_at=None):
    """The infinite stream of batches a loader yields from iteration ``start`` on."""
    k = start
    while True:
        if k == fail_at:
            raise RuntimeError("simulated crash")
        yield make_batch(k, rank)
        k += 1


class LoaderTrainer(TrainerBase):
    """A trainer whose step only draws the next batch (no model)."""

    def __init__(self, loader, hook_list):
        super().__init__()
        self.loader = loader
        self._it = None
        self.register_hooks(hook_list)

    def run_step(self):
        if self._it is None:
            self._it = iter(self.loader)
        next(self._it)


def logged(storage, key):
    """{iteration: value} of a scalar in an EventStorage."""
    return {int(it): v for v, it in storage.history(key).values()}


# ---------------------------------------------------------------------------------------------
# counter and hook
# ---------------------------------------------------------------------------------------------
def test_counter_yields_the_same_batches_and_counts_them():
    source = [make_batch(k) for k in range(7)]
    counter = DataSeenCounter(source)
    seen = list(counter)
    assert all(a is b for a, b in zip(seen, source)) and len(seen) == 7
    images, instances, pixels = expected_counts(range(7))
    assert counter.local_counts() == {
        "images": images,
        "instances": instances,
        "pixels": pixels,
        "batches": 7,
    }
    # by hand: images 1+2+3+1+2+3+1; objects 0+2*1+3*2+3+2*4+0+1; 16 px wide, 8..32 px high
    assert (images, instances, pixels) == (13, 20, 3712)


def test_images_without_instances_count_zero_instances():
    counter = DataSeenCounter([[{"image": torch.zeros(3, 4, 5)}]])
    list(counter)
    assert counter.local_counts()["instances"] == 0
    assert counter.local_counts()["pixels"] == 20


@pytest.mark.parametrize("bad", [{"image": torch.zeros(3, 4, 4)}, [torch.zeros(3, 4, 4)], [{}]])
def test_counter_rejects_batches_it_cannot_count(bad):
    with pytest.raises(TrainingError, match="RETHINK.LOG_DATA_SEEN False"):
        list(DataSeenCounter([bad]))


def test_hook_logs_cumulative_totals_at_its_period_and_the_last_iteration():
    counter = DataSeenCounter(batches_from(0))
    trainer = LoaderTrainer(counter, [DataSeenHook(counter, period=4)])
    trainer.train(0, 10)
    for index, key in enumerate(KEYS):
        values = logged(trainer.storage, key)
        assert sorted(values) == [3, 7, 9]  # done = 4, 8 and the last iteration
        for it, value in values.items():
            assert value == expected_counts(range(it + 1))[index]
    assert trainer.storage.smoothing_hints()[KEYS[0]] is False


def test_invalid_hook_period():
    with pytest.raises(ValueError, match="period >= 1"):
        DataSeenHook(DataSeenCounter([]), period=0)


# ---------------------------------------------------------------------------------------------
# resume through a checkpoint
# ---------------------------------------------------------------------------------------------
def run_with_checkpoints(save_dir, start_iter, hook_order, fail_at=None, checkpoint_period=3):
    """Train 10 iterations (or until ``fail_at``), checkpointing every 3; returns the trainer."""
    counter = DataSeenCounter(batches_from(start_iter, fail_at=fail_at))
    checkpointer = Checkpointer(nn.Linear(1, 1), save_dir, data_seen=counter)
    if start_iter:
        state = checkpointer.resume_or_load("", resume=True)
        assert state["iteration"] + 1 == start_iter
    data_seen = DataSeenHook(counter, period=4, checkpoint_period=checkpoint_period)
    periodic = hooks.PeriodicCheckpointer(checkpointer, 3)
    trainer = LoaderTrainer(
        counter, [data_seen, periodic] if hook_order == "hook first" else [periodic, data_seen]
    )
    if fail_at is None:
        trainer.train(start_iter, 10)
    else:
        with pytest.raises(RuntimeError, match="simulated crash"):
            trainer.train(start_iter, 10)
    return trainer


def test_counts_survive_a_crash_and_resume(tmp_path, caplog):
    # crash while drawing batch 7: the last checkpoint is after iteration 5
    run_with_checkpoints(str(tmp_path), 0, "hook first", fail_at=7)
    with caplog.at_level(logging.WARNING, logger="rethink_d2.engine.data_seen"):
        trainer = run_with_checkpoints(str(tmp_path), 6, "hook first")
    assert not [r for r in caplog.records if r.name == "rethink_d2.engine.data_seen"]
    final = {k: logged(trainer.storage, k)[9] for k in KEYS}
    assert tuple(final.values()) == expected_counts(range(10))
    # the checkpoint of the last iteration holds the same totals
    saved = torch.load(os.path.join(tmp_path, "model_final.pth"), weights_only=False)
    assert (saved["data_seen"]["images"], saved["data_seen"]["batches"]) == (
        expected_counts(range(10))[0],
        10,
    )


def test_misplaced_hook_is_reported_on_resume(tmp_path, caplog):
    # after the checkpointer and blind to its period: the iteration-5 checkpoint holds the
    # totals of iteration 3 (the hook's own period, 4)
    run_with_checkpoints(str(tmp_path), 0, "checkpointer first", fail_at=7, checkpoint_period=0)
    with caplog.at_level(logging.WARNING, logger="rethink_d2.engine.data_seen"):
        run_with_checkpoints(str(tmp_path), 6, "checkpointer first", checkpoint_period=0)
    messages = [r.getMessage() for r in caplog.records if r.name == "rethink_d2.engine.data_seen"]
    assert len(messages) == 1 and "cover 4 iterations but training starts at iteration 6" in (
        messages[0]
    )


# ---------------------------------------------------------------------------------------------
# two processes (gloo): totals are summed over ranks
# ---------------------------------------------------------------------------------------------
def _two_rank_worker(out_dir):
    torch.set_num_threads(1)
    rank = comm.get_rank()
    counter = DataSeenCounter(batches_from(0, rank=rank))
    trainer = LoaderTrainer(counter, [DataSeenHook(counter, period=2)])
    trainer.train(0, 5)
    result = {
        "local": counter.local_counts(),
        "logged": {k: logged(trainer.storage, k) for k in KEYS},
    }
    with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as f:
        json.dump(result, f)


def test_two_processes_sum_their_counts(tmp_path):
    launch_gloo(_two_rank_worker, 2, args=(str(tmp_path),))
    results = []
    for rank in range(2):
        with open(tmp_path / f"rank{rank}.json") as f:
            results.append(json.load(f))
    for rank, result in enumerate(results):
        local = result["local"]
        assert (local["images"], local["instances"], local["pixels"]) == expected_counts(
            range(5), rank
        )
    both = [a + b for a, b in zip(expected_counts(range(5), 0), expected_counts(range(5), 1))]
    for result in results:  # every rank logs the same global totals
        assert [result["logged"][k]["4"] for k in KEYS] == both
        assert sorted(result["logged"][KEYS[0]]) == ["1", "3", "4"]


# ---------------------------------------------------------------------------------------------
# a tiny real training run with rethink_d2's Trainer
# ---------------------------------------------------------------------------------------------
class Recorder:
    """Pass-through loader that records what it hands on."""

    def __init__(self, loader):
        self.loader = loader
        self.batches = []

    def __iter__(self):
        for batch in self.loader:
            self.batches.append(
                [(d["image_id"], len(d["instances"]), tuple(d["image"].shape)) for d in batch]
            )
            yield batch


def test_counts_of_a_real_run_equal_the_images_loaded(tmp_path):
    from rethink_d2.engine import Trainer

    dicts = register_tiny_dataset(str(tmp_path))
    recorders = []

    class RecordingTrainer(Trainer):
        @classmethod
        def build_train_loader(cls, cfg):
            recorders.append(Recorder(super().build_train_loader(cfg)))
            return recorders[-1]

    overrides = {
        "SOLVER.IMS_PER_BATCH": 2,
        "SOLVER.MAX_ITER": 7,
        "SOLVER.STEPS": (5,),
        "SOLVER.WARMUP_ITERS": 2,
        "SOLVER.CHECKPOINT_PERIOD": 1000,
        "RETHINK.LOG_DATA_SEEN": True,
    }
    cfg = tiny_train_cfg(tmp_path / "run", overrides)
    trainer = RecordingTrainer(cfg)
    trainer.train()

    (recorder,) = recorders
    records = [r for b in recorder.batches for r in b]
    assert len(recorder.batches) == 7 and len(records) == 14
    with open(tmp_path / "run" / "metrics.json") as f:
        last = [r for r in map(json.loads, f) if "data_seen/images" in r][-1]
    assert last["iteration"] == 6
    assert last["data_seen/images"] == 14
    assert last["data_seen/instances"] == sum(n for _, n, _ in records)
    assert last["data_seen/pixels"] == sum(s[-2] * s[-1] for _, _, s in records)
    # ... which are the annotations of those images and their areas at 64 px (max 96)
    annotations = {d["image_id"]: len(d["annotations"]) for d in dicts}
    resized = {0: 64 * 64, 1: 64 * 96, 2: 64 * 64, 3: 96 * 64, 4: 64 * 80, 5: 80 * 64}
    assert len(resized) == len(TINY_SIZES) and cfg.DATASETS.TRAIN == (TINY_DATASET,)
    assert last["data_seen/instances"] == sum(annotations[i] for i, _, _ in records)
    assert last["data_seen/pixels"] == sum(resized[i] for i, _, _ in records)
