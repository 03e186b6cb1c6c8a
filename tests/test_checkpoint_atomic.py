"""Crash-safe checkpoints: SIGKILL at random moments and during writes never corrupts resuming."""

import logging
import multiprocessing
import os
import random
import signal
import stat
import time

import pytest
import torch

from rethink_d2.engine.checkpoint import CHECKPOINT_TAG, Checkpointer
from rethink_d2.utils.errors import TrainingError

KEEP = 2


def small_model():
    # ~1M parameters: a 4 MB checkpoint, so that a save takes long enough to be hit.
    return torch.nn.Sequential(torch.nn.Linear(512, 1024), torch.nn.Linear(1024, 512))


def fill(model, value):
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(float(value))


def save_forever(save_dir, ready, name=None):
    """Child: resume, then save checkpoints whose every weight equals their iteration, named
    ``model_<iteration>`` or always ``name`` (a file rewritten in place, like model_final)."""
    torch.set_num_threads(1)
    model = small_model()
    checkpointer = Checkpointer(model, save_dir, max_to_keep=KEEP, save_to_disk=True)
    iteration = checkpointer.resume_or_load("", resume=True).get("iteration", -1)
    ready.set()
    while True:
        iteration += 1
        fill(model, iteration)
        checkpointer.save(name or f"model_{iteration:07d}", iteration=iteration)


def start_saver(save_dir, name=None):
    ctx = multiprocessing.get_context("fork")  # no re-import of torch: a kill every ~0.3 s
    ready = ctx.Event()
    proc = ctx.Process(target=save_forever, args=(save_dir, ready, name), daemon=True)
    proc.start()
    assert ready.wait(60), "saver did not start"
    return proc


def kill(proc):
    os.kill(proc.pid, signal.SIGKILL)
    proc.join(30)
    assert proc.exitcode == -signal.SIGKILL


def assert_resumable(save_dir, min_iteration, name=None):
    """last_checkpoint names a complete file whose content is the iteration it claims."""
    with open(os.path.join(save_dir, CHECKPOINT_TAG)) as f:
        tagged = f.read().strip()
    assert os.path.isfile(os.path.join(save_dir, tagged)), tagged
    model = small_model()
    checkpointer = Checkpointer(model, save_dir, save_to_disk=False)
    assert checkpointer.get_checkpoint_file() == os.path.join(save_dir, tagged)
    iteration = checkpointer.resume_or_load("", resume=True)["iteration"]
    assert tagged == (name or f"model_{iteration:07d}") + ".pth"
    assert iteration >= min_iteration
    for p in model.parameters():
        assert torch.all(p == iteration), f"{tagged} holds mixed content"
    periodic = [n for n in os.listdir(save_dir) if n.endswith(".pth")]
    assert len(periodic) <= KEEP + 1, periodic  # +1: killed between tagging and rotating
    return iteration


def temp_files(save_dir):
    return [n for n in os.listdir(save_dir) if n.endswith(".tmp")]


def test_sigkill_at_random_moments_keeps_a_resumable_state(tmp_path):
    rng = random.Random(0)
    last = 0
    for _ in range(6):
        proc = start_saver(str(tmp_path))
        time.sleep(rng.uniform(0.0, 0.8))
        kill(proc)
        # Each restart resumes from what the previous one left, then saves further.
        last = assert_resumable(str(tmp_path), min_iteration=last)
    assert last >= 1


def test_sigkill_while_rewriting_the_tagged_file_keeps_it_whole(tmp_path):
    # The hardest case: the file being rewritten is the one last_checkpoint names (model_final
    # of a run whose MAX_ITER was raised). A plain open("wb") would leave it truncated.
    save_dir = str(tmp_path)
    seed = small_model()
    fill(seed, 0)
    Checkpointer(seed, save_dir).save("model_final", iteration=0)
    hits = 0
    for _ in range(20):
        proc = start_saver(save_dir, name="model_final")
        deadline = time.monotonic() + 10
        while not [n for n in temp_files(save_dir) if n.startswith(".model_")]:
            assert time.monotonic() < deadline, "no save started"
        kill(proc)  # now: a checkpoint is being written (its temp file exists)
        hits += bool([n for n in temp_files(save_dir) if n.startswith(".model_")])
        assert_resumable(save_dir, min_iteration=0, name="model_final")
        if hits >= 3:
            break
    assert hits >= 3, "could not kill a save in the middle of its write"
    # Temp files are ignored, and the next save removes them.
    assert temp_files(save_dir)
    model = small_model()
    checkpointer = Checkpointer(model, save_dir, save_to_disk=True)
    assert all(p.endswith(".pth") for p in checkpointer.get_all_checkpoint_files())
    checkpointer.save("model_9999999", iteration=9999999)
    assert temp_files(save_dir) == []


def test_rotation_keeps_k_across_restarts_and_never_final(tmp_path):
    save_dir = str(tmp_path)
    model = small_model()
    Checkpointer(model, save_dir, max_to_keep=2).save("model_final", iteration=0)
    for start in (0, 3):  # two "processes"
        checkpointer = Checkpointer(model, save_dir, max_to_keep=2)
        for it in range(start, start + 3):
            checkpointer.save(f"model_{it:07d}", iteration=it)
    names = sorted(n for n in os.listdir(save_dir) if n.endswith(".pth"))
    assert names == ["model_0000004.pth", "model_0000005.pth", "model_final.pth"]
    mode = stat.S_IMODE(os.stat(os.path.join(save_dir, names[0])).st_mode)
    assert mode & stat.S_IRGRP, "checkpoints must keep the umask permissions, not 0600"
    keep_all = Checkpointer(model, save_dir, max_to_keep=0)
    for it in range(6, 10):
        keep_all.save(f"model_{it:07d}", iteration=it)
    assert len([n for n in os.listdir(save_dir) if n.endswith(".pth")]) == 7


def write_two_checkpoints(save_dir):
    model = small_model()
    checkpointer = Checkpointer(model, save_dir)
    fill(model, 1)
    checkpointer.save("model_0000001", iteration=1)
    time.sleep(0.02)  # distinct modification times
    fill(model, 2)
    checkpointer.save("model_0000002", iteration=2)
    return os.path.join(save_dir, "model_0000002.pth")


@pytest.mark.parametrize("damage", ["truncated", "missing", "garbage"])
def test_bad_tagged_file_falls_back_with_a_warning(tmp_path, caplog, damage):
    newest = write_two_checkpoints(str(tmp_path))
    if damage == "missing":
        os.remove(newest)
    else:
        data = open(newest, "rb").read()
        with open(newest, "wb") as f:
            f.write(data[: len(data) // 2] if damage == "truncated" else b"\0" * len(data))
    model = small_model()
    checkpointer = Checkpointer(model, str(tmp_path), save_to_disk=False)
    with caplog.at_level(logging.WARNING):
        assert checkpointer.has_checkpoint()
        assert checkpointer.resume_or_load("", resume=True)["iteration"] == 1
    assert all(torch.all(p == 1) for p in model.parameters())
    assert "falling back" in caplog.text


def test_unreadable_checkpoint_with_a_valid_zip_falls_back_at_load(tmp_path, caplog):
    newest = write_two_checkpoints(str(tmp_path))
    import zipfile

    with zipfile.ZipFile(newest, "w") as z:  # complete zip, not a checkpoint
        z.writestr("nonsense/data.pkl", b"not a pickle")
    model = small_model()
    with caplog.at_level(logging.WARNING):
        extra = Checkpointer(model, str(tmp_path)).resume_or_load("", resume=True)
    assert extra["iteration"] == 1
    assert "cannot read checkpoint" in caplog.text


def test_nothing_loadable_is_one_clear_error(tmp_path):
    newest = write_two_checkpoints(str(tmp_path))
    os.remove(newest)
    os.remove(os.path.join(str(tmp_path), "model_0000001.pth"))
    with pytest.raises(TrainingError, match="delete last_checkpoint to start over"):
        Checkpointer(small_model(), str(tmp_path)).resume_or_load("", resume=True)


def test_no_tag_means_no_run_to_resume(tmp_path):
    torch.save({"model": small_model().state_dict()}, os.path.join(str(tmp_path), "weights.pth"))
    checkpointer = Checkpointer(small_model(), str(tmp_path))
    assert not checkpointer.has_checkpoint()
    assert checkpointer.get_checkpoint_file() == ""


def test_torchvision_resnet_weights_are_converted_on_load(tmp_path):
    import torchvision
    from detectron2.config import get_cfg
    from detectron2.layers import ShapeSpec
    from detectron2.modeling.backbone import build_resnet_backbone

    tv = torchvision.models.resnet18(weights=None)
    path = os.path.join(str(tmp_path), "resnet18-f37072fd.pth")
    torch.save(tv.state_dict(), path)
    cfg = get_cfg()
    cfg.MODEL.RESNETS.DEPTH = 18
    cfg.MODEL.RESNETS.RES2_OUT_CHANNELS = 64
    cfg.MODEL.RESNETS.OUT_FEATURES = ["res5"]
    backbone = build_resnet_backbone(cfg, ShapeSpec(channels=3))
    Checkpointer(backbone, str(tmp_path)).load(path)
    assert torch.equal(backbone.stem.conv1.weight, tv.conv1.weight)
    assert torch.equal(backbone.res5[1].conv2.weight, tv.layer4[1].conv2.weight)
