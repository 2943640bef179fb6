"""Crash-safe checkpoints and resuming training from the newest complete one.

MONAI's ``CheckpointSaver`` writes with ignite's ``DiskSaver(atomic=False)`` and ignite's
``Checkpoint`` deletes the previous file *before* writing the next one, so a process killed while
a checkpoint is written can leave a truncated file and no older one. :class:`AtomicCheckpointSaver`
keeps MONAI's arguments and file names but writes every file to a temporary name in the same folder,
flushes it to disk and renames it into place, and deletes the files it replaces only after the new
one is complete.

:class:`ResumeFromLatestCheckpoint` (attached at ``Events.STARTED``) loads the newest readable
resume checkpoint, ignite engine state included, so a restarted run continues at the next epoch.
:class:`ValidationProgress` carries the best validation metric and the best-model saver's record
through a resume, so the first validation after a restart does not overwrite a better ``model.pt``.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from ignite.engine import Engine, Events
from ignite.handlers import Checkpoint, DiskSaver
from monai.handlers import CheckpointSaver

from drd_components.teachers.checkpoint import CheckpointError, load_checkpoint_file

__all__ = ["AtomicCheckpointSaver", "ResumeFromLatestCheckpoint", "ValidationProgress", "find_checkpoints"]

logger = logging.getLogger(__name__)


class _AtomicDiskSaver(DiskSaver):
    """An ignite ``DiskSaver`` that renames complete files into place and removes old ones last.

    Args:
        dirname: folder of the checkpoints.
        filename: fixed file name (MONAI's ``key_metric_filename`` / ``final_filename``) or ``None``.
    """

    def __init__(self, dirname: str | os.PathLike, filename: str | None = None) -> None:
        super().__init__(dirname=str(dirname), atomic=True, create_dir=True, require_empty=False)
        self.filename = filename
        self._pending_removal: list[str] = []

    def __call__(self, checkpoint: Mapping, filename: str, metadata: Mapping | None = None) -> None:
        name = self.filename or filename
        path = Path(self.dirname) / name
        tmp = path.with_name(f".{name}.{os.getpid()}.tmp")
        try:
            with open(tmp, "wb") as f:
                torch.save(checkpoint, f)
                f.flush()
                os.fsync(f.fileno())
            os.chmod(tmp, 0o644)
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        for old in self._pending_removal:
            if old != name:
                (Path(self.dirname) / old).unlink(missing_ok=True)
        self._pending_removal = []

    def remove(self, filename: str) -> None:
        # ignite removes the file being replaced before it saves the new one; defer the removal
        # until the new file is complete, so a crash in between leaves the old checkpoint in place.
        self._pending_removal.append(self.filename or filename)


class AtomicCheckpointSaver(CheckpointSaver):
    """MONAI's ``CheckpointSaver`` with atomic writes and remove-after-write.

    Takes exactly the arguments of :class:`monai.handlers.CheckpointSaver`; only the way files reach
    the disk changes: each checkpoint is written to ``.<name>.<pid>.tmp`` in ``save_dir``, fsynced
    and renamed to its final name (``os.replace`` is atomic on POSIX and Windows), and the file it
    supersedes is deleted afterwards. A reader therefore sees either the old or the new complete
    file, never a partial one, whenever the process is killed.

    With ``engine_key`` set, the state of the engine the saver is attached to (epoch, iteration,
    epoch length) is saved under that key as well; a config cannot list the trainer in the
    ``save_dict`` of one of its own handlers (circular reference), so the saver adds it at
    :meth:`attach`.

    Args:
        args: positional arguments of ``CheckpointSaver``.
        engine_key: save the attached engine's state under this key (e.g. ``"trainer"``).
        kwargs: keyword arguments of ``CheckpointSaver``.
    """

    def __init__(self, *args: Any, engine_key: str | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.engine_key = engine_key
        for checkpoint in self._checkpoints():
            fixed = getattr(checkpoint.save_handler, "filename", None)
            checkpoint.save_handler = _AtomicDiskSaver(self.save_dir, filename=fixed)

    def _checkpoints(self) -> list[Checkpoint]:
        found = (self._final_checkpoint, self._key_metric_checkpoint, self._interval_checkpoint)
        return [c for c in found if c is not None]

    def attach(self, engine: Engine) -> None:
        """Register the saving events and, with ``engine_key``, add the engine to what is saved.

        Args:
            engine: the engine (trainer or evaluator).
        """
        if self.engine_key is not None:
            if self.engine_key in self.save_dict:
                raise ValueError(f"engine_key '{self.engine_key}' is already a key of save_dict.")
            self.save_dict = {**self.save_dict, self.engine_key: engine}
            for checkpoint in self._checkpoints():
                checkpoint.to_save = {**checkpoint.to_save, self.engine_key: engine}
        super().attach(engine)


class ValidationProgress:
    """Stateful view of the validation bookkeeping that must survive a resume.

    Put it in the resume checkpoint's save dict (``"validation": ValidationProgress(evaluator,
    best_model_saver)``). It records the evaluator's ``best_metric`` / ``best_metric_epoch`` and
    the list of files the best-model saver kept with their scores; restoring them means the first
    validation after a restart replaces ``model.pt`` only if it beats the best score so far,
    exactly as in an uninterrupted run.

    Args:
        evaluator: the validation engine (a MONAI ``Workflow``).
        best_model_saver: the ``CheckpointSaver`` with ``save_key_metric=True`` (optional).
    """

    def __init__(self, evaluator: Engine, best_model_saver: CheckpointSaver | None = None) -> None:
        self.evaluator = evaluator
        self.best_model_saver = best_model_saver

    def _key_checkpoint(self) -> Checkpoint | None:
        if self.best_model_saver is None:
            return None
        checkpoint = getattr(self.best_model_saver, "_key_metric_checkpoint", None)
        if checkpoint is None:
            raise ValueError("best_model_saver must be a CheckpointSaver created with save_key_metric=True.")
        return checkpoint

    def state_dict(self) -> dict:
        """Best metric, its epoch and the best-model saver's record (plain types only)."""
        state = {
            "best_metric": float(getattr(self.evaluator.state, "best_metric", -1.0)),
            "best_metric_epoch": int(getattr(self.evaluator.state, "best_metric_epoch", -1)),
        }
        checkpoint = self._key_checkpoint()
        if checkpoint is not None:
            state["saved"] = [[float(item.priority), str(item.filename)] for item in checkpoint._saved]
        return state

    def load_state_dict(self, state_dict: Mapping) -> None:
        """Restore what :meth:`state_dict` returned.

        Args:
            state_dict: the saved state.
        """
        self.evaluator.state.best_metric = float(state_dict["best_metric"])
        self.evaluator.state.best_metric_epoch = int(state_dict["best_metric_epoch"])
        checkpoint = self._key_checkpoint()
        if checkpoint is not None and "saved" in state_dict:
            checkpoint.load_state_dict({"_saved": [(p, f) for p, f in state_dict["saved"]]})


_NUMBER = re.compile(r"=(\d+)\.[^.]+$")


def find_checkpoints(ckpt_dir: str | os.PathLike, pattern: str = "resume_checkpoint_epoch=*.pt") -> list[Path]:
    """Checkpoint files in ``ckpt_dir`` matching ``pattern``, newest first.

    Files are ordered by the number after the last ``=`` in their name (the epoch or iteration of
    MONAI's ``CheckpointSaver`` names), then by modification time.

    Args:
        ckpt_dir: folder to search.
        pattern: glob pattern of the resume checkpoints.

    Returns:
        the matching files, newest first (empty when the folder does not exist).
    """
    folder = Path(ckpt_dir)
    if not folder.is_dir():
        return []

    def key(p: Path) -> tuple[int, float]:
        m = _NUMBER.search(p.name)
        return (int(m.group(1)) if m else -1, p.stat().st_mtime)

    return sorted((p for p in folder.glob(pattern) if p.is_file()), key=key, reverse=True)


class ResumeFromLatestCheckpoint:
    """Resume training from the newest complete checkpoint in a folder, if there is one.

    Attached to the trainer at ``Events.STARTED``, it looks for files matching ``pattern`` in
    ``ckpt_dir``, loads the newest one that reads cleanly (``torch.load(weights_only=True)``: a file
    holding any other pickled object is refused; a truncated file is skipped with a warning and
    the next older one is tried) and restores every object of ``load_dict`` with strict key
    matching. The trainer's own state (saved under ``engine_key`` by :class:`AtomicCheckpointSaver`)
    is restored too: its epoch and iteration are set, so training continues with the next epoch and schedules driven by the iteration
    count (DRD's ``alpha``/``beta``) continue where they stopped; the trainer keeps its configured
    ``max_epochs``. With no checkpoint it logs that training starts from scratch and does nothing.

    Args:
        ckpt_dir: folder of the resume checkpoints (the ``CheckpointSaver``'s ``save_dir``).
        load_dict: the objects to restore, normally the resume ``CheckpointSaver``'s ``save_dict``.
        pattern: glob pattern of the resume checkpoints.
        engine_key: key under which the checkpoint holds the trainer's state (see
            :class:`AtomicCheckpointSaver`); the engine this handler is attached to is restored
            from it. ``None``: do not restore the engine state.
        enabled: ``False`` switches resuming off. Every rank of a multi-GPU run must resume (from
            the same shared folder), so do not disable it on ranks other than 0.
        map_location: where tensors are loaded.

    Raises:
        CheckpointError: at run time, when checkpoints exist but none can be loaded or one does not
            match ``load_dict`` (missing objects, wrong model, different epoch length).
    """

    def __init__(
        self,
        ckpt_dir: str | os.PathLike,
        load_dict: Mapping[str, Any],
        pattern: str = "resume_checkpoint_epoch=*.pt",
        engine_key: str | None = "trainer",
        enabled: bool = True,
        map_location: str | torch.device = "cpu",
    ) -> None:
        if not load_dict:
            raise ValueError("load_dict must name at least one object to restore.")
        self.ckpt_dir = Path(ckpt_dir)
        self.load_dict = dict(load_dict)
        self.pattern = pattern
        self.engine_key = engine_key
        self.enabled = enabled
        self.map_location = map_location
        self.resumed_from: Path | None = None

    def attach(self, engine: Engine) -> None:
        """Register at ``Events.STARTED`` of ``engine``.

        Args:
            engine: the trainer.
        """
        if self.engine_key is not None:
            if self.engine_key in self.load_dict:
                raise ValueError(f"engine_key '{self.engine_key}' is already a key of load_dict.")
            self.load_dict[self.engine_key] = engine
        engine.add_event_handler(Events.STARTED, self)

    def _read_newest(self) -> tuple[Path, dict] | None:
        candidates = find_checkpoints(self.ckpt_dir, self.pattern)
        errors = []
        for path in candidates:
            try:
                obj = load_checkpoint_file(path, map_location=self.map_location)
            except CheckpointError as e:
                if "GLOBAL" in str(e) or "Unsupported global" in str(e):
                    # foreign pickled objects: a wrong or malicious file, not a crash artefact; stop
                    raise CheckpointError(
                        f"resume checkpoint '{path}' holds pickled objects other than tensors and plain types; "
                        "it was not written by this training and is refused. Remove it to start over."
                    ) from e
                logger.warning("skipping unreadable checkpoint %s: %s", path, e)
                errors.append(f"{path.name}: {e}")
                continue
            if not isinstance(obj, Mapping):
                errors.append(f"{path.name}: holds a {type(obj).__name__}, expected a dict")
                continue
            return path, dict(obj)
        if candidates:
            raise CheckpointError(
                f"found {len(candidates)} checkpoint(s) matching '{self.pattern}' in '{self.ckpt_dir}' but none "
                "could be loaded: " + "; ".join(errors)
            )
        return None

    def __call__(self, engine: Engine) -> None:
        if not self.enabled:
            return
        found = self._read_newest()
        if found is None:
            logger.info("no checkpoint matching '%s' in '%s': training starts from scratch.", self.pattern, self.ckpt_dir)
            return
        path, checkpoint = found
        missing = [k for k in self.load_dict if k not in checkpoint]
        if missing:
            raise CheckpointError(
                f"resume checkpoint '{path}' lacks {missing}: it holds {sorted(checkpoint)}; "
                "was it written with a different save_dict?"
            )
        saved_engine = checkpoint.get(self.engine_key) if self.engine_key else None
        if isinstance(saved_engine, Mapping):
            current = engine.state.epoch_length
            if current is not None and saved_engine.get("epoch_length") not in (None, current):
                raise CheckpointError(
                    f"resume checkpoint '{path}' was written with {saved_engine['epoch_length']} iterations per epoch, "
                    f"the data now gives {current}: the training data or batch size changed."
                )
        max_epochs = engine.state.max_epochs
        try:
            Checkpoint.load_objects(to_load=self.load_dict, checkpoint=checkpoint, strict=True)
        except (RuntimeError, KeyError, ValueError) as e:
            raise CheckpointError(f"resume checkpoint '{path}' does not match the current objects: {e}") from e
        if max_epochs is not None:
            engine.state.max_epochs = max_epochs
        self.resumed_from = path
        logger.info(
            "resumed from %s: epoch %s, iteration %s (objects: %s).",
            path, engine.state.epoch, engine.state.iteration, ", ".join(self.load_dict),
        )
