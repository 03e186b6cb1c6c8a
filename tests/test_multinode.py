"""Two "machines" of one process each over loopback (gloo): real multi-machine launches on CPU.

Every run goes through tools/train_net.py's launch path (``--num-machines 2 --machine-rank R
--dist-url tcp://127.0.0.1:PORT``): Detectron2's ``launch`` spawns the training process, which
joins the process group over TCP.
"""

import os
import signal
import socket

import pytest
import torch

from cluster_utils import errors_of, free_port, start_train_net, tagged_checkpoint, wait
from cluster_utils import wait_until
from conftest import TRAIN_NET
from rethink_d2.engine.distributed import explain_worker_failure
from rethink_d2.engine.preemption import PREEMPTED_EXIT_CODE

RANK_DUMP = os.path.join(os.path.dirname(os.path.abspath(__file__)), "train_net_rank_dump.py")


def start_machine(output_dir, rank, port, opts=(), flags=(), script=RANK_DUMP, env=None):
    """Start machine ``rank`` of a 2-machine run; returns (proc, log)."""
    launch = ["--num-machines", "2", "--machine-rank", str(rank)]
    launch += ["--dist-url", f"tcp://127.0.0.1:{port}", *flags]
    log_name = f"machine{rank}.txt"
    return start_train_net(output_dir, opts, launch, script=script, log_name=log_name, env=env)


def two_machines(output_dir, opts=(), flags=(), script=RANK_DUMP, env_of_machine_1=None):
    """Start machine ranks 0 and 1 of one run; returns [(proc, log), (proc, log)]."""
    port = free_port()
    return [
        start_machine(
            output_dir, rank, port, opts, flags, script, env_of_machine_1 if rank else None
        )
        for rank in (0, 1)
    ]


# RPN-only detector (Detectron2's ProposalNetwork) with SyncBN in backbone and FPN:
# - every anchor that is labelled foreground/background is used (BATCH_SIZE_PER_IMAGE above
#   the ~1000 anchors of a 64 px image), so no random subsampling differs between processes;
# - the RPN losses are normalized by BATCH_SIZE_PER_IMAGE x images of the process, so DDP's
#   average over 2 processes of 1 image equals one process of 2 images;
# - naive SyncBN over 2 x 1 image uses the statistics of the whole batch of 2, like BN in one
#   process, and its all-reduce passes the gradients across processes;
# - no flip, one resize size, the sampler seeded by SEED: rank 0 sees images 0, 2, 4 ... of the
#   seeded permutation, rank 1 images 1, 3, 5 ..., one process [0, 1], [2, 3] ...
# (ROI heads average their losses per process over a varying number of sampled RoIs, so a full
# Mask R-CNN only matches approximately: it is not used for the comparison.)
EQUIVALENT = [
    "MODEL.META_ARCHITECTURE", "ProposalNetwork",
    "RETHINK.NORM", "SyncBN",
    "MODEL.RPN.BATCH_SIZE_PER_IMAGE", "4096",
    "INPUT.RANDOM_FLIP", "none",
    "SOLVER.MAX_ITER", "3",
    "SOLVER.WARMUP_ITERS", "0",
    "SOLVER.BASE_LR", "0.1",
    "SOLVER.CHECKPOINT_PERIOD", "1",
]  # fmt: skip


def relative_update_error(a, b, start, keys=None):
    """||a - b|| / ||b - start|| over the trained tensors of ``keys`` (default: all; BN running
    statistics excluded)."""
    keys = [k for k in keys or b if b[k].is_floating_point() and "running_" not in k]
    num = sum(((a[k] - b[k]).double() ** 2).sum() for k in keys)
    den = sum(((b[k] - start[k]).double() ** 2).sum() for k in keys)
    assert den > 0, "the weights did not move"
    return float((num / den).sqrt())


def test_two_machines_over_loopback_equal_ranks_and_match_one_process(tmp_path):
    two, one = str(tmp_path / "two"), str(tmp_path / "one")
    runs = two_machines(two, EQUIVALENT) + [start_train_net(one, EQUIVALENT, script=RANK_DUMP)]
    for proc, log in runs:
        code, output = wait(proc, log)
        assert code == 0, output[-3000:]

    def load(path):
        state = torch.load(path, map_location="cpu", weights_only=False)
        return state.get("model", state)

    rank0, rank1 = load(f"{two}/rank0_final.pth"), load(f"{two}/rank1_final.pth")
    init = load(f"{two}/rank0_init.pth")
    # DDP: same start (broadcast from rank 0), same averaged gradients -> bitwise equal.
    assert rank0.keys() == rank1.keys()
    assert all(torch.equal(rank0[k], rank1[k]) for k in rank0)
    assert all(torch.equal(load(f"{two}/rank1_init.pth")[k], init[k]) for k in init)
    # Same SEED, same start as the single process.
    assert all(torch.equal(load(f"{one}/rank0_init.pth")[k], init[k]) for k in init)
    # One synchronized step from the same weights equals one step over the whole batch, up to
    # float rounding. Measured (torch 2.14.1, CPU): 9e-6 of the update in the FPN and the RPN
    # head, 2.6e-2 in the ResNet, whose gradients pass backwards through naive SyncBN on 2x2 res5
    # maps (var = E[x^2] - E[x]^2 in fp32) and accumulate that rounding down to the stem. Later
    # steps drift further apart, as training from scratch amplifies the difference.
    step0_two, step0_one = load(f"{two}/model_0000000.pth"), load(f"{one}/model_0000000.pth")
    heads = [k for k in step0_one if "bottom_up" not in k]
    assert relative_update_error(step0_two, step0_one, init, heads) < 1e-4
    assert relative_update_error(step0_two, step0_one, init) < 5e-2
    # Control: the same comparison against a different batch (the single run's next step)
    # is far outside that tolerance.
    assert relative_update_error(load(f"{one}/model_0000001.pth"), step0_one, init) > 0.5


def test_signal_on_one_machine_stops_both_at_one_iteration_then_auto_resume(tmp_path):
    out = str(tmp_path / "run")
    # A data loader worker per process: it must not keep the trainer from exiting.
    opts = ["SOLVER.MAX_ITER", "10", "SOLVER.CHECKPOINT_PERIOD", "3", "DATALOADER.NUM_WORKERS", "1"]
    runs = two_machines(out, opts)
    procs = [proc for proc, _ in runs]
    wait_until(lambda: tagged_checkpoint(out) == "model_0000002.pth", 300, procs, "iteration 2")
    # Only machine 1's launcher is signalled (as Kubernetes signals PID 1 of one pod); it
    # forwards the signal to its training process, and the ranks agree to stop together.
    procs[1].send_signal(signal.SIGUSR1)
    results = [wait(proc, log) for proc, log in runs]
    for code, output in results:
        assert code == PREEMPTED_EXIT_CODE, output[-3000:]
    k = torch.load(os.path.join(out, tagged_checkpoint(out)), weights_only=False)["iteration"]
    assert tagged_checkpoint(out) == f"model_{k:07d}.pth" and 2 <= k < 9
    with open(os.path.join(out, "log.txt.rank1")) as f:  # ranks > 0 log to their own file
        assert f"Preempted (SIGUSR1) after iteration {k}" in f.read()
    assert f"Preempted (a signal on another rank) after iteration {k}" in results[0][1]

    # Restart both machines with the same command, without --resume: auto-resume.
    runs = two_machines(out, opts)
    (code, output), (code1, output1) = [wait(proc, log) for proc, log in runs]
    assert code == 0 and code1 == 0, (output + output1)[-3000:]
    assert f"Auto-resume: {out} already holds a checkpoint of this run" in output
    assert f"Starting training from iteration {k + 1}" in output
    final = torch.load(os.path.join(out, "model_final.pth"), weights_only=False)
    assert final["iteration"] == 9
    rank1 = torch.load(os.path.join(out, "rank1_final.pth"))
    assert all(torch.equal(final["model"][name], rank1[name]) for name in rank1)


def test_port_in_use_is_one_clear_error(tmp_path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        # Machine 1 is not needed: machine 0 checks its port before starting anything.
        proc, log = start_machine(str(tmp_path), 0, port, script=TRAIN_NET)
        code, output = wait(proc, log, timeout=120)
    assert code == 2, output[-3000:]
    (error,) = errors_of(output)
    assert f"port {port}" in error and "already in use" in error
    assert "Traceback" not in output


def test_rank_that_never_joins_is_one_error_after_the_timeout(tmp_path):
    # Machine 1 is never started.
    proc, log = start_machine(
        str(tmp_path), 0, free_port(), flags=["--dist-timeout", "5"], script=TRAIN_NET
    )
    code, output = wait(proc, log, timeout=180)
    assert code == 1, output[-3000:]
    (error,) = errors_of(output)
    assert "timed out after 5 s waiting for the other training processes" in error
    assert "Traceback" not in output


def test_dataset_missing_on_one_machine_fails_both_without_hanging(tmp_path):
    # Machine 1 cannot read (or draw) the dataset: its data directory is under a regular file.
    # It fails after the process group formed, while machine 0 waits for it in a collective.
    (tmp_path / "not_a_dir").write_text("")
    no_data = {"RETHINK_D2_DATA": str(tmp_path / "not_a_dir" / "data")}
    runs = two_machines(
        str(tmp_path / "run"),
        ["SOLVER.MAX_ITER", "5"],
        ["--dist-timeout", "60"],
        TRAIN_NET,
        env_of_machine_1=no_data,
    )
    (code0, out0), (code1, out1) = [wait(proc, log, timeout=240) for proc, log in runs]
    assert code1 == 2, out1[-3000:]
    (error1,) = errors_of(out1)
    assert "not_a_dir" in error1 and "RETHINK_D2_DATA" in error1
    # Machine 0 notices that its peer is gone (or, at worst, times out): one line, no hang.
    assert code0 == 1, out0[-3000:]
    (error0,) = errors_of(out0)
    assert "another training process stopped" in error0 or "timed out" in error0
    assert "Traceback" not in out0


@pytest.mark.parametrize(
    "traceback_text, expected",
    [
        (
            'File "torch/distributed/rendezvous.py", line 215, in _create_c10d_store\n'
            "torch.distributed.DistStoreError: Timed out after 4 seconds waiting for clients. "
            "1/2 clients joined.",
            "timed out after 5 s waiting for the other training processes at tcp://h:1",
        ),
        (
            'File "torch/distributed/distributed_c10d.py", in all_reduce\nRuntimeError: '
            "[gloo/transport/tcp/pair.cc:534] Connection closed by peer [127.0.0.1]:4242",
            "another training process stopped",
        ),
        (
            "torch.distributed.DistNetworkError: The server socket has failed to listen on any "
            "local network address. port: 1, useIpv6: false, code: -98, name: EADDRINUSE, "
            "message: address already in use",
            "already in use",
        ),
        # Not about the process group: the traceback is the best report.
        (
            'File "torch/utils/data/dataloader.py"\nRuntimeError: DataLoader timed out after 5 s',
            None,
        ),
    ],
)
def test_process_group_failures_are_explained_in_one_line(traceback_text, expected):
    message = explain_worker_failure(traceback_text, "tcp://h:1", 5)
    if expected is None:
        assert message is None
    else:
        assert expected in message and "\n" not in message
