"""Crash-safe checkpoints: atomic files, an atomic ``last_checkpoint`` tag, rotation on disk.

A process killed at any moment (SIGKILL included, during a save too) leaves ``OUTPUT_DIR`` in a
resumable state:

* every file is written to a hidden temp file in the same directory, flushed, ``fsync``-ed and
  renamed over its final name (``os.replace`` is atomic on POSIX), then the directory is
  ``fsync``-ed: a reader sees the old file or the complete new one, never a prefix;
* ``last_checkpoint`` is rewritten the same way, and only after the checkpoint it names is
  complete;
* old periodic checkpoints (``model_NNNNNNN.pth``) are deleted only after the new one is tagged,
  keeping the newest ``max_to_keep`` (``RETHINK.CHECKPOINTS_TO_KEEP``) on disk, across resumes
  (Detectron2's ``PeriodicCheckpointer`` only remembers the files of the current process);
* leftover temp files of a killed save are ignored (they do not end in ``.pth``) and removed by
  the next save;
* when ``last_checkpoint`` names a missing or unreadable file, resuming falls back to the newest
  readable checkpoint with a warning, or stops with a :class:`TrainingError` if there is none;
* in a multi-process run, rank 0 alone chooses the checkpoint (and so the iteration) to resume;
  every other rank loads the file of that name from its own ``save_dir`` after checking that it
  exists with the same size and holds the same iteration, or every rank stops with the same
  one-line :class:`TrainingError` (``OUTPUT_DIR`` must be shared storage).
"""

import contextlib
import logging
import os
import pickle
import re
import zipfile

import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.utils import comm

from ..modeling.pretrained import maybe_convert_torchvision_checkpoint
from ..utils.errors import TrainingError
from ..utils.files import TEMP_FILE_RE, atomic_write

__all__ = ["CHECKPOINT_TAG", "Checkpointer", "UnreadableCheckpointError"]

logger = logging.getLogger(__name__)

# Name of the file that names the checkpoint to resume from (Detectron2's convention).
CHECKPOINT_TAG = "last_checkpoint"


class UnreadableCheckpointError(TrainingError):
    """A checkpoint file exists but cannot be read (truncated, corrupt, not a checkpoint)."""


def _is_complete(path):
    """Cheap check that ``path`` is a whole file: torch.save's zip ends with its directory."""
    if not os.path.isfile(path) or os.path.getsize(path) == 0:
        return False
    return zipfile.is_zipfile(path) if path.endswith(".pth") else True


class Checkpointer(DetectionCheckpointer):
    """
    ``DetectionCheckpointer`` with atomic saves, on-disk rotation and a fallback on resume.

    See the module docstring. Loading also renames torchvision ResNet state dicts for Detectron2
    (:func:`rethink_d2.modeling.pretrained.maybe_convert_torchvision_checkpoint`).

    Args:
        model (nn.Module): model (DDP wrappers are unwrapped).
        save_dir (str): directory of the checkpoints (``OUTPUT_DIR``).
        max_to_keep (int or None): periodic checkpoints (``<file_prefix>_NNNNNNN.pth``) to keep
            on disk; None or <= 0 keeps all. ``<file_prefix>_final.pth`` is never deleted.
        file_prefix (str): prefix of the periodic checkpoints (Detectron2's "model").
        save_to_disk (bool or None): default: only on the main process.
        checkpointables: objects with ``state_dict()`` / ``load_state_dict()``.
    """

    def __init__(
        self,
        model,
        save_dir="",
        *,
        max_to_keep=None,
        file_prefix="model",
        save_to_disk=None,
        **checkpointables,
    ):
        super().__init__(model, save_dir, save_to_disk=save_to_disk, **checkpointables)
        self.max_to_keep = max_to_keep if max_to_keep and max_to_keep > 0 else None
        self._periodic_re = re.compile(rf"^{re.escape(file_prefix)}_(\d{{7}})\.pth$")

    # ---- saving ----
    def save(self, name, **kwargs):
        """
        Atomically write ``<save_dir>/<name>.pth``, then tag it, then rotate old checkpoints.

        Args:
            name (str): file name without ``.pth``, e.g. ``model_0004999``.
            kwargs: extra data stored in the checkpoint (e.g. ``iteration``).
        """
        if not self.save_dir or not self.save_to_disk:
            return
        data = {"model": self.model.state_dict()}
        for key, obj in self.checkpointables.items():
            data[key] = obj.state_dict()
        data.update(kwargs)
        basename = f"{name}.pth"
        save_file = os.path.join(self.save_dir, basename)
        assert os.path.basename(save_file) == basename, basename
        os.makedirs(self.save_dir, exist_ok=True)
        self._remove_temp_files()
        self.logger.info("Saving checkpoint to %s", save_file)
        atomic_write(save_file, lambda f: torch.save(data, f))
        self.tag_last_checkpoint(basename)
        self._rotate(basename)

    def tag_last_checkpoint(self, last_filename_basename):
        """
        Atomically point ``last_checkpoint`` at a complete file.

        Args:
            last_filename_basename (str): basename of a checkpoint in ``save_dir``.
        """
        atomic_write(
            os.path.join(self.save_dir, CHECKPOINT_TAG),
            lambda f: f.write(last_filename_basename),
            binary=False,
        )

    def _remove_temp_files(self):
        """Delete temp files left by a save that was killed (one writer per directory)."""
        for name in os.listdir(self.save_dir):
            if TEMP_FILE_RE.match(name):
                with contextlib.suppress(OSError):
                    os.remove(os.path.join(self.save_dir, name))
                    logger.info("Removed %s, left by an interrupted save", name)

    def _rotate(self, saved_basename):
        """Keep the newest ``max_to_keep`` periodic checkpoints; never the tagged one."""
        if self.max_to_keep is None or not self._periodic_re.match(saved_basename):
            return
        periodic = sorted(
            (int(m.group(1)), name)
            for name in os.listdir(self.save_dir)
            for m in [self._periodic_re.match(name)]
            if m
        )
        for _, name in periodic[: -self.max_to_keep]:
            if name != saved_basename:
                with contextlib.suppress(FileNotFoundError):
                    os.remove(os.path.join(self.save_dir, name))
                logger.debug("Deleted old checkpoint %s (keeping %d)", name, self.max_to_keep)

    # ---- finding ----
    def _tagged_file(self):
        """Path named by ``last_checkpoint`` (complete or not), or "" when there is no tag."""
        try:
            with open(os.path.join(self.save_dir, CHECKPOINT_TAG)) as f:
                name = f.read().strip()
        except OSError:
            return ""
        return os.path.join(self.save_dir, name) if name else ""

    def _complete_files_newest_first(self, exclude=()):
        files = [p for p in self.get_all_checkpoint_files() if p not in exclude and _is_complete(p)]
        return sorted(files, key=lambda p: (os.path.getmtime(p), p), reverse=True)

    def get_all_checkpoint_files(self):
        """
        Returns:
            list[str]: the ``.pth`` files of ``save_dir`` (temp files of killed saves excluded).
        """
        if not os.path.isdir(self.save_dir):
            return []
        return [
            os.path.join(self.save_dir, name)
            for name in os.listdir(self.save_dir)
            if name.endswith(".pth") and os.path.isfile(os.path.join(self.save_dir, name))
        ]

    def _resume_candidates(self):
        """
        Files to try, in order: the tagged one if complete, then every other complete checkpoint,
        newest first. Empty when there is no tag (a directory without ``last_checkpoint`` holds no
        run to resume, whatever ``.pth`` files it contains).
        """
        tagged = self._tagged_file()
        if not tagged:
            return []
        if _is_complete(tagged):
            return [tagged] + self._complete_files_newest_first(exclude={tagged})
        others = self._complete_files_newest_first(exclude={tagged})
        if not others:
            raise TrainingError(
                f"{os.path.join(self.save_dir, CHECKPOINT_TAG)} names {tagged}, which is missing "
                f"or truncated, and no other checkpoint in {self.save_dir} is complete: delete "
                f"{CHECKPOINT_TAG} to start over, or set OUTPUT_DIR to a new directory"
            )
        logger.warning(
            "%s names %s, which is missing or truncated; falling back to %s",
            CHECKPOINT_TAG,
            tagged,
            others[0],
        )
        return others

    def has_checkpoint(self):
        """
        Returns:
            bool: whether ``save_dir`` holds a run to resume (a tag and a complete checkpoint).
        """
        return bool(self._resume_candidates())

    def get_checkpoint_file(self):
        """
        Returns:
            str: the checkpoint to resume from: the tagged one, or the newest complete one when
            the tagged file is missing or truncated; "" when there is none.
        """
        candidates = self._resume_candidates()
        return candidates[0] if candidates else ""

    # ---- loading ----
    def resume_or_load(self, path, *, resume=True):
        """
        Resume from the last checkpoint (falling back past unreadable ones), else load ``path``.

        Args:
            path (str): weights to load when not resuming (``MODEL.WEIGHTS``), may be "".
            resume (bool): resume the run in ``save_dir`` if it holds one.

        Returns:
            dict: the checkpoint's extra data (e.g. ``iteration``), as ``Checkpointer.load``.

        Raises:
            TrainingError: no checkpoint of the run can be read.
        """
        if comm.get_world_size() == 1:
            chosen, loaded = self._resume_first_readable(resume)
            return self.load(path, checkpointables=[]) if chosen is None else loaded
        return self._agreed_resume_or_load(path, resume)

    def _resume_first_readable(self, resume):
        """(path, loaded data) of the first readable resume candidate; (None, None) when there
        is none to resume. Raises TrainingError when every candidate is unreadable."""
        candidates = self._resume_candidates() if resume else []
        if not candidates:
            return None, None
        for candidate in candidates:
            try:
                return candidate, self.load(candidate)
            except UnreadableCheckpointError as e:
                logger.warning("%s; trying an older checkpoint", e)
        raise TrainingError(
            f"no checkpoint in {self.save_dir} can be read (tried {len(candidates)}): delete "
            f"{CHECKPOINT_TAG} to start over, or set OUTPUT_DIR to a new directory"
        )

    def _agreed_resume_or_load(self, path, resume):
        """
        resume_or_load in a multi-process run: rank 0 chooses (and loads) the checkpoint,
        every other rank loads the file of the same name in its ``save_dir``, which must hold
        the same bytes (shared storage); otherwise every rank raises the same TrainingError.
        Two all_gathers, once per run.
        """
        rank, decision, loaded = comm.get_rank(), None, None
        if rank == 0:
            try:
                chosen, loaded = self._resume_first_readable(resume)
                decision = {"error": None, "name": None}
                if chosen is not None:
                    decision.update(
                        name=os.path.basename(chosen),
                        size=os.path.getsize(chosen),
                        iteration=loaded.get("iteration"),
                    )
            except TrainingError as e:
                decision = {"error": str(e), "name": None}
        decision = comm.all_gather(decision)[0]
        if decision["error"] is not None:
            raise TrainingError(decision["error"] if rank == 0 else f"rank 0: {decision['error']}")
        error = None
        if rank != 0:
            try:
                loaded = self._load_agreed(decision, resume)
            except (OSError, TrainingError) as e:
                error = " ".join(str(e).split())
        errors = [e for e in comm.all_gather(error) if e is not None]
        if errors:
            raise TrainingError(errors[0])
        if decision["name"] is None:
            return self.load(path, checkpointables=[])
        return loaded

    def _load_agreed(self, decision, resume):
        """On a rank > 0: load the checkpoint rank 0 chose (None: nothing to resume)."""
        where = _this_process()
        if decision["name"] is None:
            mine = self.get_checkpoint_file() if resume else ""
            if mine:
                raise TrainingError(
                    f"{where} would resume from {mine}, but rank 0 finds no checkpoint to resume "
                    "in its OUTPUT_DIR: OUTPUT_DIR must be shared storage that every machine "
                    "reads (or start in a new OUTPUT_DIR)"
                )
            return None
        file = os.path.join(self.save_dir, decision["name"])
        fix = (
            f"rank 0 resumes from its {decision['name']} (iteration {decision['iteration']}): "
            "OUTPUT_DIR must be shared storage that every machine reads"
        )
        if not os.path.isfile(file):
            raise TrainingError(f"{where} cannot read {file}: {fix}")
        if os.path.getsize(file) != decision["size"]:
            raise TrainingError(
                f"{where} reads a different {file} ({os.path.getsize(file)} bytes, rank 0: "
                f"{decision['size']}): {fix}"
            )
        try:
            loaded = self.load(file)
        except UnreadableCheckpointError as e:
            raise TrainingError(f"{where}: {e}: {fix}") from e
        if loaded.get("iteration") != decision["iteration"]:
            raise TrainingError(
                f"{where} read iteration {loaded.get('iteration')} from {file}, rank 0 "
                f"iteration {decision['iteration']}: {fix}"
            )
        if not (resume and self.has_checkpoint()):
            # The trainer continues at the checkpoint's iteration only where both hold.
            raise TrainingError(
                f"{where} does not see {os.path.join(self.save_dir, CHECKPOINT_TAG)} naming a "
                f"complete checkpoint (or was not asked to resume): {fix}"
            )
        return loaded

    def load(self, path, *args, **kwargs):
        """Detectron2's ``load``, made re-entrant after a failed read (see resume_or_load)."""
        try:
            return super().load(path, *args, **kwargs)
        finally:
            # DetectionCheckpointer.load asserts this is None on entry and resets it only on
            # success; a fallback needs a second call.
            self._parsed_url_during_load = None

    def _load_file(self, filename):
        """
        Read a checkpoint with Detectron2's loader, then convert torchvision ResNet weights.

        Raises:
            UnreadableCheckpointError: the file is truncated or not a checkpoint.
        """
        try:
            loaded = super()._load_file(filename)
        except (EOFError, RuntimeError, zipfile.BadZipFile, pickle.UnpicklingError) as e:
            if "weights only" in str(e).lower():  # readable, but holds objects torch refuses
                raise
            raise UnreadableCheckpointError(
                f"cannot read checkpoint {filename}: {' '.join(str(e).split())[:200]}"
            ) from e
        return maybe_convert_torchvision_checkpoint(loaded)


def _this_process():
    """'machine M (rank R)' of this process, as Detectron2's launch numbers them."""
    rank = comm.get_rank()
    try:
        return f"machine {rank // comm.get_local_size()} (rank {rank})"
    except AssertionError:  # no per-machine process group (not started by launch)
        return f"rank {rank}"
