"""Preemption: on SIGTERM or SIGUSR1, checkpoint the current iteration and exit with code 75.

Schedulers warn before they kill: Kubernetes and ``docker stop`` send SIGTERM (then SIGKILL
after the grace period), Slurm sends SIGTERM on preemption and ``--signal=USR1@<seconds>``
before the time limit. During training:

1. the signal handler only records the signal (anything more is unsafe inside a handler); the
   training thread keeps the signals blocked while an iteration runs and unblocks them between
   iterations, so that data loader workers (forked during an iteration) inherit them blocked:
   Slurm signals every process of the job, and PyTorch's workers would die on SIGTERM, taking
   the trainer down before it can checkpoint. (Such workers cannot be stopped by SIGTERM either,
   so the hook shuts the training loader's workers down itself when training ends);
2. all ranks agree whether any of them got a signal (received, or pending while blocked), so
   every rank stops after the *same* iteration. With rethink-d2's trainer the flag rides in the
   iteration's single :class:`~rethink_d2.engine.distributed.StepVote` all-reduce, next to the
   non-finite loss flag; on its own, the hook does one 1-element ``all_reduce`` per iteration;
3. every rank runs the ``before_save`` collectives (e.g. summing the data-seen counts, so the
   checkpoint holds the counts of its own iteration), then the main process writes
   ``model_<iteration>.pth`` (atomic, tagged in ``last_checkpoint``) with the trainer's
   checkpointer: model, optimizer, LR scheduler, iteration and hook states;
4. every process exits with :data:`PREEMPTED_EXIT_CODE` (75, ``EX_TEMPFAIL``: "temporary
   failure, try again"), the code the job scripts in ``docker/examples`` requeue on.

Restarting with ``--resume`` (or in the same OUTPUT_DIR, with ``RETHINK.AUTO_RESUME``) continues
at the next iteration with the same LR. A signal that arrives at the last iteration lets the run
finish normally; one that arrives before training starts (model and data still being built)
ends the process the default way, which loses no training either.

The parent process of a multi-process launch forwards the signals to its training processes
(:func:`forward_signals_to_children`): Kubernetes and ``docker stop`` signal only PID 1.
"""

import contextlib
import logging
import multiprocessing
import os
import signal
import threading

from detectron2.engine import HookBase, SimpleTrainer
from detectron2.utils import comm

from .distributed import any_rank

__all__ = [
    "PREEMPTED_EXIT_CODE",
    "PREEMPTION_SIGNALS",
    "Preempted",
    "PreemptionHook",
    "forward_signals_to_children",
]

logger = logging.getLogger(__name__)

# sysexits.h EX_TEMPFAIL: the run stopped cleanly on request and should be started again.
PREEMPTED_EXIT_CODE = 75
PREEMPTION_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)
# The flag name of the preemption check in a StepVote.
_VOTE_FLAG = "preempt"


class Preempted(SystemExit):
    """
    Raised after the preemption checkpoint is written; exits with :data:`PREEMPTED_EXIT_CODE`.

    A ``SystemExit`` so that Detectron2's training loop does not log it as a failure, still runs
    every hook's ``after_train`` (metrics are flushed) and the process exit code is 75.
    """

    def __init__(self):
        super().__init__(PREEMPTED_EXIT_CODE)


def _install(signals, handler):
    """Install ``handler`` for ``signals``; returns the previous handlers, or {} off the main
    thread (where Python cannot install signal handlers)."""
    if threading.current_thread() is not threading.main_thread():
        logger.warning("Not in the main thread: preemption signals are not handled")
        return {}
    return {sig: signal.signal(sig, handler) for sig in signals}


def _restore(previous):
    for sig, handler in previous.items():
        signal.signal(sig, handler)


class PreemptionHook(HookBase):
    """
    Checkpoint and exit with code 75 after the iteration during which a signal arrived.

    Register it last, so that the checkpoint holds the state after every other hook ran for
    that iteration (LR scheduler stepped, periodic checkpoint written), like a periodic one.

    Args:
        checkpointer (Checkpointer): the trainer's checkpointer (saves on the main process).
        file_prefix (str): checkpoint name prefix; files are ``<prefix>_<iteration:07d>.pth``.
        signals (tuple[signal.Signals]): the signals that request a stop.
        step_vote (StepVote or None): the trainer's per-iteration vote (``FiniteLossTrainer``'s
            ``step_vote``): the preemption flag travels in it instead of a collective of its own.
        before_save (iterable[callable]): collectives every rank runs before the checkpoint is
            written, e.g. ``DataSeenCounter.synchronize``.
    """

    def __init__(
        self,
        checkpointer,
        file_prefix="model",
        signals=PREEMPTION_SIGNALS,
        step_vote=None,
        before_save=(),
    ):
        self.checkpointer = checkpointer
        self.file_prefix = file_prefix
        self.signals = tuple(signals)
        self.step_vote = step_vote
        self.before_save = list(before_save)
        self.received = None
        self._previous = {}

    def _on_signal(self, signum, frame):
        self.received = signum

    def _block(self, blocked):
        """Block (or deliver) the signals in this thread; processes forked meanwhile inherit it."""
        if self._previous:
            how = signal.SIG_BLOCK if blocked else signal.SIG_UNBLOCK
            signal.pthread_sigmask(how, self.signals)

    def _signalled(self):
        """Whether a signal was received, or is pending while the signals are blocked."""
        if self.received is not None:
            return True
        return bool(self._previous) and not set(self.signals).isdisjoint(signal.sigpending())

    def before_train(self):
        self._previous = _install(self.signals, self._on_signal)
        self._block(True)
        if self.step_vote is not None:
            self.step_vote.add_source(_VOTE_FLAG, self._signalled)

    def after_train(self):
        if self.step_vote is not None:
            self.step_vote.remove_source(_VOTE_FLAG)
        self._block(False)
        if self._previous:
            _stop_data_loader_workers(self.trainer)
        _restore(self._previous)
        self._previous = {}

    def after_step(self):
        self._block(False)  # a signal that arrived during the iteration is handled now
        stop = None
        if self.step_vote is not None:
            stop = self.step_vote.agreed(_VOTE_FLAG, self.trainer.iter)
        if stop is None:  # no vote this iteration (another trainer): agree here
            stop = any_rank(self.received is not None)
        if not stop:
            self._block(True)
            return
        iteration = self.trainer.iter
        what = signal.Signals(self.received).name if self.received else "a signal on another rank"
        if iteration + 1 >= self.trainer.max_iter:
            logger.warning("Got %s at the last iteration: finishing the run normally", what)
            return
        name = f"{self.file_prefix}_{iteration:07d}"
        for collective in self.before_save:
            collective()
        if comm.is_main_process():
            # A periodic checkpoint of this very iteration may have just been written.
            if os.path.basename(self.checkpointer.get_checkpoint_file()) != f"{name}.pth":
                self.checkpointer.save(name, iteration=iteration)
        # Nobody exits before the checkpoint is complete (a parent seeing one child exit
        # terminates the others).
        comm.synchronize()
        logger.warning(
            "Preempted (%s) after iteration %d: checkpoint %s.pth written; exiting with code %d. "
            "Start again in the same OUTPUT_DIR (with --resume or RETHINK.AUTO_RESUME) to "
            "continue from iteration %d.",
            what,
            iteration,
            name,
            PREEMPTED_EXIT_CODE,
            iteration + 1,
        )
        raise Preempted()


def _stop_data_loader_workers(trainer):
    """
    Stop the training loader's worker processes, which have SIGTERM blocked (see module).

    Otherwise a process leaving with an exception still referencing the loader (preemption,
    errors) would hang in multiprocessing's exit handler, whose ``terminate()`` sends SIGTERM.
    Releasing the iterator makes PyTorch shut the workers down cleanly; daemon children still
    alive after that are killed.
    """
    inner = getattr(trainer, "_trainer", trainer)
    if isinstance(inner, SimpleTrainer):
        loader = inner.data_loader
        inner.reset_data_loader(lambda: loader)  # drops the iterator, and with it the workers
    for child in multiprocessing.active_children():
        if child.daemon:
            child.join(timeout=5)
            if child.is_alive():
                child.kill()


@contextlib.contextmanager
def forward_signals_to_children(signals=PREEMPTION_SIGNALS):
    """
    In a launcher process, pass ``signals`` on to its multiprocessing children, and record them.

    Without it, SIGTERM would kill the launcher (its children then die with SIGINT, without a
    checkpoint) and PID 1 in a container would ignore it.

    Args:
        signals (tuple[signal.Signals]): the signals to forward.

    Yields:
        list[int]: the signals received so far (appended to while the block runs).
    """
    received = []

    def forward(signum, frame):
        received.append(signum)
        for child in multiprocessing.active_children():
            with contextlib.suppress(ProcessLookupError):
                os.kill(child.pid, signum)

    previous = _install(signals, forward)
    try:
        yield received
    finally:
        _restore(previous)
