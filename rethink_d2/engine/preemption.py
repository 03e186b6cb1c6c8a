"""Preemption: on SIGTERM or SIGUSR1, checkpoint the current iteration and exit with code 75.

All ranks agree (in the trainer's :class:`StepVote`) whether any got a signal, so every rank
stops after the same iteration. A signal at the last iteration lets the run finish; one before
training starts ends the process the default way. See docs/cluster.md.
"""

import contextlib
import logging
import multiprocessing
import os
import signal
import threading

from detectron2.engine import HookBase, SimpleTrainer
from detectron2.utils import comm

from .distributed import StepVote

logger = logging.getLogger(__name__)

# sysexits.h EX_TEMPFAIL: the run stopped cleanly on request and should be started again.
PREEMPTED_EXIT_CODE = 75
PREEMPTION_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)
_VOTE_FLAG = "preempt"


class Preempted(SystemExit):
    """Exits with :data:`PREEMPTED_EXIT_CODE` after the preemption checkpoint; a ``SystemExit``,
    so Detectron2's loop does not log it as a failure and still runs every ``after_train``."""

    def __init__(self):
        super().__init__(PREEMPTED_EXIT_CODE)


def _install(handler):
    """Install ``handler`` for the preemption signals; returns the previous handlers ({} off the
    main thread, where Python cannot install signal handlers)."""
    if threading.current_thread() is not threading.main_thread():
        logger.warning("Not in the main thread: preemption signals are not handled")
        return {}
    return {sig: signal.signal(sig, handler) for sig in PREEMPTION_SIGNALS}


def _restore(previous):
    for sig, handler in previous.items():
        signal.signal(sig, handler)


class PreemptionHook(HookBase):
    """
    Checkpoint and exit with code 75 after the iteration during which a signal arrived.
    Register it last, so that the checkpoint holds the state after every other hook ran.

    Args:
        step_vote (StepVote or None): the trainer's per-iteration vote (``FiniteLossTrainer``),
            which then carries the flag; without it, the hook votes on its own.
        before_save (iterable[callable]): collectives every rank runs before the checkpoint is
            written, e.g. ``DataSeenCounter.synchronize``.
    """

    def __init__(self, checkpointer, step_vote=None, before_save=()):
        self.checkpointer = checkpointer
        self.step_vote = step_vote if step_vote is not None else StepVote()
        self.before_save = list(before_save)
        self.received = None
        self._previous = {}

    def _on_signal(self, signum, frame):
        self.received = signum

    def _block(self, blocked):
        """Block (or deliver) the signals in this thread; processes forked meanwhile inherit it.

        Signals stay blocked while an iteration runs, so that data loader workers forked then
        inherit them blocked: Slurm signals every process of the job, and a worker dying on
        SIGTERM would take the trainer down before it checkpoints."""
        if self._previous:
            how = signal.SIG_BLOCK if blocked else signal.SIG_UNBLOCK
            signal.pthread_sigmask(how, PREEMPTION_SIGNALS)

    def _signalled(self):
        """Whether a signal was received, or is pending while the signals are blocked."""
        if self.received is not None:
            return True
        return bool(self._previous) and not set(PREEMPTION_SIGNALS).isdisjoint(signal.sigpending())

    def before_train(self):
        self._previous = _install(self._on_signal)
        self._block(True)
        self.step_vote.add_source(_VOTE_FLAG, self._signalled)

    def after_train(self):
        self.step_vote.remove_source(_VOTE_FLAG)
        self._block(False)
        if self._previous:
            _stop_data_loader_workers(self.trainer)
        _restore(self._previous)
        self._previous = {}

    def after_step(self):
        self._block(False)  # a signal that arrived during the iteration is handled now
        iteration = self.trainer.iter
        stop = self.step_vote.agreed(_VOTE_FLAG, iteration)
        if stop is None:  # the trainer took no vote this iteration
            stop = self.step_vote.vote(iteration)[_VOTE_FLAG]
        if not stop:
            self._block(True)
            return
        what = signal.Signals(self.received).name if self.received else "a signal on another rank"
        if iteration + 1 >= self.trainer.max_iter:
            logger.warning("Got %s at the last iteration: finishing the run normally", what)
            return
        name = f"model_{iteration:07d}"
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
    """Stop the training loader's workers, which have SIGTERM blocked: otherwise a process leaving
    with an exception that references the loader hangs in multiprocessing's exit handler, whose
    ``terminate()`` sends SIGTERM."""
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
def forward_signals_to_children():
    """
    In a launcher process, pass the preemption signals on to its multiprocessing children
    (Kubernetes and ``docker stop`` signal only PID 1); yields the list of signals received.
    """
    received = []

    def forward(signum, frame):
        received.append(signum)
        for child in multiprocessing.active_children():
            with contextlib.suppress(ProcessLookupError):
                os.kill(child.pid, signum)

    previous = _install(forward)
    try:
        yield received
    finally:
        _restore(previous)
