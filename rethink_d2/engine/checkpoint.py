"""Crash-safe checkpoints (see docs/cluster.md): atomic files and ``last_checkpoint`` tag, on-disk
rotation across resumes, a fallback past unreadable files, and one resume agreed by all ranks.
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

logger = logging.getLogger(__name__)

# Name of the file that names the checkpoint to resume from (Detectron2's convention).
CHECKPOINT_TAG = "last_checkpoint"
# Periodic checkpoints, as Detectron2's PeriodicCheckpointer names them (model_final.pth is not).
_PERIODIC_RE = re.compile(r"^model_(\d{7})\.pth$")


class UnreadableCheckpointError(TrainingError):
    """A checkpoint file exists but cannot be read (truncated, corrupt, not a checkpoint)."""


def _is_complete(path):
    """Cheap check that ``path`` is a whole file: torch.save's zip ends with its directory."""
    if not os.path.isfile(path) or os.path.getsize(path) == 0:
        return False
    return zipfile.is_zipfile(path) if path.endswith(".pth") else True


class Checkpointer(DetectionCheckpointer):
    """``DetectionCheckpointer`` with atomic saves, a fallback on resume, and the newest
    ``max_to_keep`` periodic checkpoints kept on disk (None or <= 0: all); loading also converts
    torchvision ResNet weights."""

    def __init__(
        self, model, save_dir="", *, max_to_keep=None, save_to_disk=None, **checkpointables
    ):
        super().__init__(model, save_dir, save_to_disk=save_to_disk, **checkpointables)
        self.max_to_keep = max_to_keep if max_to_keep and max_to_keep > 0 else None

    def save(self, name, **kwargs):
        """Atomically write ``<save_dir>/<name>.pth``, then tag it, then rotate old checkpoints."""
        if not self.save_dir or not self.save_to_disk:
            return
        data = {key: obj.state_dict() for key, obj in self.checkpointables.items()}
        data = {"model": self.model.state_dict(), **data, **kwargs}
        basename = f"{name}.pth"
        save_file = os.path.join(self.save_dir, basename)
        assert os.path.basename(save_file) == basename, basename
        os.makedirs(self.save_dir, exist_ok=True)
        for leftover in os.listdir(self.save_dir):  # temp files of a killed save (one writer)
            if TEMP_FILE_RE.match(leftover):
                with contextlib.suppress(OSError):
                    os.remove(os.path.join(self.save_dir, leftover))
                    logger.info("Removed %s, left by an interrupted save", leftover)
        self.logger.info("Saving checkpoint to %s", save_file)
        atomic_write(save_file, lambda f: torch.save(data, f))
        self.tag_last_checkpoint(basename)
        self._rotate(basename)

    def tag_last_checkpoint(self, last_filename_basename):
        """Atomically point ``last_checkpoint`` at a complete file."""
        atomic_write(
            os.path.join(self.save_dir, CHECKPOINT_TAG),
            lambda f: f.write(last_filename_basename),
            binary=False,
        )

    def _rotate(self, saved_basename):
        """Keep the newest ``max_to_keep`` periodic checkpoints; never the tagged one."""
        if self.max_to_keep is None or not _PERIODIC_RE.match(saved_basename):
            return
        periodic = sorted(
            (int(m.group(1)), name)
            for name in os.listdir(self.save_dir)
            for m in [_PERIODIC_RE.match(name)]
            if m
        )
        for _, name in periodic[: -self.max_to_keep]:
            if name != saved_basename:
                with contextlib.suppress(FileNotFoundError):
                    os.remove(os.path.join(self.save_dir, name))
                logger.debug("Deleted old checkpoint %s (keeping %d)", name, self.max_to_keep)

    def _resume_candidates(self):
        """
        Files to try, in order: the tagged one if complete, then every other complete checkpoint,
        newest first. Empty without a tag (then ``save_dir`` holds no run to resume).
        """
        try:
            with open(os.path.join(self.save_dir, CHECKPOINT_TAG)) as f:
                name = f.read().strip()
        except OSError:
            name = ""
        if not name:
            return []
        tagged = os.path.join(self.save_dir, name)
        others = sorted(
            (p for p in self.get_all_checkpoint_files() if p != tagged and _is_complete(p)),
            key=lambda p: (os.path.getmtime(p), p),
            reverse=True,
        )
        if _is_complete(tagged):
            return [tagged] + others
        if not others:
            raise TrainingError(
                f"{os.path.join(self.save_dir, CHECKPOINT_TAG)} names {tagged}, which is missing "
                f"or truncated, and no other checkpoint in {self.save_dir} is complete: delete "
                f"{CHECKPOINT_TAG} to start over, or set OUTPUT_DIR to a new directory"
            )
        logger.warning(
            f"{CHECKPOINT_TAG} names {tagged}, which is missing or truncated; falling back to "
            f"{others[0]}"
        )
        return others

    def has_checkpoint(self):
        """Whether ``save_dir`` holds a run to resume (a tag and a complete checkpoint)."""
        return bool(self._resume_candidates())

    def get_checkpoint_file(self):
        """The checkpoint to resume from (see :meth:`_resume_candidates`), or ""."""
        candidates = self._resume_candidates()
        return candidates[0] if candidates else ""

    def resume_or_load(self, path, *, resume=True):
        """
        Resume from the last readable checkpoint of ``save_dir`` if ``resume``, else load
        ``path`` (``MODEL.WEIGHTS``, may be ""). Returns the checkpoint's extra data.

        Rank 0 chooses (and loads) the checkpoint; every other rank loads the file of the same
        name in its ``save_dir``, which must hold the same bytes (shared storage), or every rank
        raises the same TrainingError. Two all_gathers, once per run.
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

    def _load_agreed(self, decision, resume):
        """On a rank > 0: load the checkpoint rank 0 chose (None: nothing to resume)."""
        rank = comm.get_rank()
        try:
            where = f"machine {rank // comm.get_local_size()} (rank {rank})"
        except AssertionError:  # no per-machine process group (not started by launch)
            where = f"rank {rank}"
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
        """Detectron2's ``load``, made re-entrant after a failed read (for the resume fallback)."""
        try:
            return super().load(path, *args, **kwargs)
        finally:
            # DetectionCheckpointer.load asserts this is None on entry and resets it only on
            # success; a fallback needs a second call.
            self._parsed_url_during_load = None

    def _load_file(self, filename):
        """Detectron2's loader, raising UnreadableCheckpointError for a truncated or foreign file,
        then torchvision ResNet weights converted."""
        try:
            loaded = super()._load_file(filename)
        except (EOFError, RuntimeError, zipfile.BadZipFile, pickle.UnpicklingError) as e:
            if "weights only" in str(e).lower():  # readable, but holds objects torch refuses
                raise
            raise UnreadableCheckpointError(
                f"cannot read checkpoint {filename}: {' '.join(str(e).split())[:200]}"
            ) from e
        return maybe_convert_torchvision_checkpoint(loaded)
