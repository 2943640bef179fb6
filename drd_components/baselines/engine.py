"""A supervised trainer whose loss also sees a frozen teacher: the base of the KD and FitNet trainers."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from monai.engines import SupervisedTrainer
from monai.engines.utils import IterationEvents
from monai.engines.workflow import Workflow
from monai.utils.enums import CommonKeys as Keys
from torch import nn
from torch.optim import Optimizer

__all__ = ["TeacherGuidedTrainer"]


class TeacherGuidedTrainer(SupervisedTrainer):
    """One forward of a frozen teacher and the student per iteration; subclasses define the loss.

    Subclasses implement :meth:`compute_loss`, which returns the student's prediction and a dict of
    scalar loss terms with the total under ``"loss"``. The teacher runs under
    ``torch.inference_mode`` (its outputs are cloned so they can enter the loss); AMP uses
    ``torch.autocast`` on the training device (``float16`` + GradScaler on CUDA, ``bfloat16`` on
    CPU). ``engine.state.output`` holds ``image``, ``label``, ``pred``, ``loss`` and every term
    (scalars, for :class:`~drd_components.handlers.LossTermsTransform`), and the stock iteration
    events fire, so postprocessing, metrics and handlers work unchanged.

    Args:
        device: training device.
        max_epochs: number of epochs.
        train_data_loader: training data.
        network: the student (deployed model).
        optimizer: optimizer over everything that trains.
        loss_function: the loss module (used by :meth:`compute_loss`).
        teacher: the frozen teacher model (put in eval mode, no gradients).
        amp: automatic mixed precision.
        amp_dtype: autocast dtype (default ``float16`` on CUDA, ``bfloat16`` elsewhere).
        teacher_input_key: batch key of the teacher's input (e.g. ``"image_teacher"``, the
            image before random augmentation); ``None`` feeds the teacher the student's input.
        kwargs: every other :class:`monai.engines.SupervisedTrainer` argument.
    """

    def __init__(
        self,
        device: str | torch.device,
        max_epochs: int,
        train_data_loader: Iterable,
        network: nn.Module,
        optimizer: Optimizer,
        loss_function: nn.Module,
        teacher: nn.Module,
        amp: bool = False,
        amp_dtype: torch.dtype | str | None = None,
        teacher_input_key: str | None = None,
        **kwargs: Any,
    ) -> None:
        if kwargs.get("compile"):
            raise ValueError(f"{type(self).__name__} does not support compile=True.")
        super().__init__(
            device=device,
            max_epochs=max_epochs,
            train_data_loader=train_data_loader,
            network=network,
            optimizer=optimizer,
            loss_function=loss_function,
            amp=amp,
            **kwargs,
        )
        self.teacher = teacher
        teacher.eval()
        teacher.requires_grad_(False)
        if isinstance(amp_dtype, str):
            amp_dtype = getattr(torch, amp_dtype)
        self.amp_device_type = torch.device(device).type
        self.amp_dtype = amp_dtype or (torch.float16 if self.amp_device_type == "cuda" else torch.bfloat16)
        self.teacher_input_key = teacher_input_key

    def teacher_inputs(self, inputs: torch.Tensor, batchdata: Any) -> torch.Tensor:
        """The teacher's input: ``batchdata[teacher_input_key]`` when set, else ``inputs``.

        Raises:
            KeyError: when the batch lacks ``teacher_input_key``.
        """
        if self.teacher_input_key is None:
            return inputs
        if not isinstance(batchdata, dict) or self.teacher_input_key not in batchdata:
            raise KeyError(
                f"teacher_input_key '{self.teacher_input_key}' is not in the batch; add it to the training "
                "transforms (e.g. CopyItemsd(keys='image', names='image_teacher') before random augmentation)."
            )
        return batchdata[self.teacher_input_key].to(self.state.device, non_blocking=self.non_blocking)

    def compute_loss(
        self, inputs: torch.Tensor, targets: torch.Tensor, batchdata: Any
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Prediction of the student and the loss terms (``"loss"`` is the total)."""
        raise NotImplementedError

    def run(self) -> None:
        use_scaler = self.amp and self.amp_device_type == "cuda" and self.amp_dtype == torch.float16
        self.scaler = torch.amp.GradScaler("cuda") if use_scaler else None
        Workflow.run(self)

    def _iteration(self, engine: TeacherGuidedTrainer, batchdata: dict[str, torch.Tensor]) -> dict:
        if batchdata is None:
            raise ValueError("Must provide batch data for current iteration.")
        batch = engine.prepare_batch(batchdata, engine.state.device, engine.non_blocking, **engine.to_kwargs)
        inputs, targets = batch[0], batch[1]
        engine.state.output = {Keys.IMAGE: inputs, Keys.LABEL: targets}
        engine.network.train()
        engine.teacher.eval()
        engine.optimizer.zero_grad(set_to_none=engine.optim_set_to_none)
        with torch.autocast(engine.amp_device_type, dtype=engine.amp_dtype, enabled=engine.amp):
            pred, terms = engine.compute_loss(inputs, targets, batchdata)
        engine.state.output[Keys.PRED] = pred
        engine.fire_event(IterationEvents.FORWARD_COMPLETED)
        loss = terms["loss"]
        if not torch.isfinite(loss):
            raise FloatingPointError(
                f"non-finite loss at epoch {engine.state.epoch}, iteration {engine.state.iteration}: "
                + ", ".join(f"{k}={float(v):.4g}" for k, v in terms.items())
            )
        engine.state.output[Keys.LOSS] = loss
        for key, value in terms.items():
            if key != "loss":
                engine.state.output[key] = value.detach()
        engine.fire_event(IterationEvents.LOSS_COMPLETED)
        if engine.scaler is not None:
            engine.scaler.scale(loss).backward()
            engine.fire_event(IterationEvents.BACKWARD_COMPLETED)
            engine.scaler.step(engine.optimizer)
            engine.scaler.update()
        else:
            loss.backward()
            engine.fire_event(IterationEvents.BACKWARD_COMPLETED)
            engine.optimizer.step()
        engine.fire_event(IterationEvents.MODEL_COMPLETED)
        return engine.state.output
