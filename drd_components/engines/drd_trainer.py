"""The DRD training engine: a MONAI ``SupervisedTrainer`` whose iteration runs DRD."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from ignite.engine import Events
from monai.engines import SupervisedTrainer
from monai.engines.utils import IterationEvents
from monai.engines.workflow import Workflow
from monai.utils.enums import CommonKeys as Keys
from torch import nn
from torch._utils import _flatten_dense_tensors, _unflatten_dense_tensors
from torch.optim import Optimizer

from drd_components.losses.drd_loss import DRDLoss, LinearSchedule
from drd_components.networks.batchnorm import running_stats_frozen
from drd_components.networks.reprogramming import ReprogrammingModule

__all__ = ["DRDTrainer", "HYBRID_GRAD_TARGETS", "LOSS_TERM_KEYS", "parameters_frozen", "running_stats_frozen"]

#: keys of the weighted loss terms placed in ``engine.state.output``; they add up to ``loss``.
LOSS_TERM_KEYS = ("loss_task", "loss_hybrid", "loss_kl", "loss_cka")

#: what the hybrid paths' task loss trains (``DRDTrainer(hybrid_grad=...)``).
HYBRID_GRAD_TARGETS = ("student", "projectors")


@contextmanager
def parameters_frozen(module: nn.Module, enabled: bool = True) -> Iterator[None]:
    """Record the operations inside the context without gradients for ``module``'s parameters.

    Gradients still flow through the module to its inputs (e.g. to the projectors that produced
    them); the module's own trainable parameters are left out of the recorded graph, and their
    ``requires_grad`` flags are restored on exit, also when the body raises.
    """
    frozen = [p for p in module.parameters() if p.requires_grad] if enabled else []
    for p in frozen:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p in frozen:
            p.requires_grad_(True)


class DRDTrainer(SupervisedTrainer):
    """Deep Reprogramming Distillation trainer.

    Each iteration computes, once per batch: the frozen teacher's tapped features, the student's
    stage outputs and prediction ``z_S``, the reprogrammed features ``r_i = phi_i(f^T)``, the
    hybrid outputs ``z_i`` (``r_i`` pushed through the rest of the student), and the
    :class:`~drd_components.losses.DRDLoss` terms; then one backward pass through student and
    projectors (never through the teacher) and an optimizer step.

    It fires the same events as :class:`monai.engines.SupervisedTrainer` (``FORWARD_COMPLETED``,
    ``LOSS_COMPLETED``, ``BACKWARD_COMPLETED``, ``MODEL_COMPLETED``) and fills
    ``engine.state.output`` with ``image``, ``label``, ``pred`` (the student's output) and ``loss``,
    so postprocessing, metrics and handlers work unchanged. The weighted loss terms
    (``loss_task``, ``loss_hybrid``, ``loss_kl``, ``loss_cka``), ``alpha``, ``beta`` and the
    per-stage CKA similarities ``cka_stage<i>`` are added to the output as scalars and kept in
    ``engine.state.drd_terms`` (floats) for StatsHandler / TensorBoard.

    ``network`` is the student: checkpoints, validation, inference and export see the student
    alone. Save ``projectors`` in the checkpoint too when training must be resumable.

    Args:
        device: device to train on.
        max_epochs: number of epochs.
        train_data_loader: training data.
        network: the student (a :class:`~drd_components.networks.students.StagedNetwork`).
        optimizer: optimizer over the student's and the projectors' parameters.
        loss_function: a :class:`~drd_components.losses.DRDLoss`.
        teacher: the frozen teacher (``stage_features(x)``).
        projectors: the :class:`~drd_components.networks.ReprogrammingModule`.
        alpha_schedule: weight of the hybrid task term over training (default 1 -> 0 linearly).
        beta_schedule: weight of the KL term over training (default 1 -> 0 linearly).
        amp: enable automatic mixed precision (``autocast`` on the training device).
        amp_dtype: autocast dtype; default ``float16`` on CUDA, ``bfloat16`` elsewhere.
        kl_mask_key: optional batch key holding a voxel mask that restricts the KL term
            (e.g. the valid, non-padded image region).
        hybrid_stages_per_step: k, the number of projected stages whose hybrid paths (and KL
            terms) run per iteration, drawn uniformly without replacement from the N projected
            stages; their hybrid and KL sums are scaled by ``N / k`` so that their expectation
            equals the full DRD loss. ``None`` (or ``k >= N``) runs all N: exact DRD. CKA is
            computed for every stage either way. The draw of iteration ``t`` depends only on
            ``(hybrid_seed, t)``, so a resumed run repeats it; it is kept in
            ``engine.state.hybrid_stages`` (student stage indices).
        hybrid_seed: seed of the hybrid-stage draws (the bundles pass the run's ``seed``).
        hybrid_skips: skip features of the hybrid paths below the replaced stage: ``"student"``
            (the student's own) or ``"teacher"`` (the reprogrammed teacher maps; needs a projector
            on every stage up to the deepest one). See :meth:`hybrid_skip_features`.
        hybrid_grad: what the hybrid paths' task loss trains: ``"student"`` (the paper's deep
            co-training: the projectors and the student's later stages and head, which the hybrid
            paths share) or ``"projectors"`` (the projectors only; the student's stages and head
            then learn from their own path, the KL toward the hybrid outputs and CKA). With
            ``"projectors"`` the student's later stages are not trained on teacher-derived inputs.
        kwargs: every other :class:`monai.engines.SupervisedTrainer` argument.

    A training data loader whose sampler has ``set_epoch`` (e.g.
    :class:`~drd_components.data.multiview.MultiViewSampler`) gets ``set_epoch(epoch)`` at every
    epoch start (MONAI does the same for ``DistributedSampler``).

    Raises:
        TypeError: when the network has no staged interface or the loss is not a ``DRDLoss``.
        ValueError: for ``hybrid_stages_per_step < 1``.
    """

    def __init__(
        self,
        device: str | torch.device,
        max_epochs: int,
        train_data_loader: Iterable,
        network: nn.Module,
        optimizer: Optimizer,
        loss_function: DRDLoss,
        teacher: nn.Module,
        projectors: ReprogrammingModule,
        alpha_schedule: Callable[[float], float] | None = None,
        beta_schedule: Callable[[float], float] | None = None,
        amp: bool = False,
        amp_dtype: torch.dtype | str | None = None,
        kl_mask_key: str | None = None,
        hybrid_stages_per_step: int | None = None,
        hybrid_seed: int = 0,
        hybrid_skips: str = "student",
        hybrid_grad: str = "student",
        **kwargs: Any,
    ) -> None:
        core = getattr(network, "module", network)  # DistributedDataParallel wraps the student
        for attr in ("forward_stages", "forward_head", "forward_from"):
            if not callable(getattr(core, attr, None)):
                raise TypeError(f"the student must implement the StagedNetwork interface; '{attr}' is missing.")
        if not isinstance(loss_function, DRDLoss):
            raise TypeError(f"loss_function must be a DRDLoss, got {type(loss_function).__name__}.")
        if kwargs.get("compile"):
            raise ValueError("DRDTrainer does not support compile=True; compile the student's stages instead.")
        if hybrid_stages_per_step is not None and int(hybrid_stages_per_step) < 1:
            raise ValueError(f"hybrid_stages_per_step must be >= 1 or None, got {hybrid_stages_per_step}.")
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
        if hasattr(teacher, "freeze"):
            teacher.freeze()
        else:
            teacher.eval()
            teacher.requires_grad_(False)
        self.projectors = projectors
        self.alpha_schedule = alpha_schedule if alpha_schedule is not None else LinearSchedule(1.0, 0.0)
        self.beta_schedule = beta_schedule if beta_schedule is not None else LinearSchedule(1.0, 0.0)
        if isinstance(amp_dtype, str):
            amp_dtype = getattr(torch, amp_dtype)
        device_type = torch.device(device).type
        self.amp_device_type = device_type
        self.amp_dtype = amp_dtype or (torch.float16 if device_type == "cuda" else torch.bfloat16)
        self.kl_mask_key = kl_mask_key
        if hybrid_skips not in ("student", "teacher"):
            raise ValueError(f"hybrid_skips must be 'student' or 'teacher', got '{hybrid_skips}'.")
        if hybrid_skips == "teacher" and projectors.student_stages != list(range(len(projectors.student_stages))):
            raise ValueError(
                "hybrid_skips='teacher' needs a projector on every stage below the deepest projected one "
                f"(drd_stages 'all'), got stages {projectors.student_stages}."
            )
        self.hybrid_skips = hybrid_skips
        if hybrid_grad not in HYBRID_GRAD_TARGETS:
            raise ValueError(f"hybrid_grad must be one of {HYBRID_GRAD_TARGETS}, got '{hybrid_grad}'.")
        self.hybrid_grad = hybrid_grad
        self.hybrid_stages_per_step = None if hybrid_stages_per_step is None else int(hybrid_stages_per_step)
        self.hybrid_seed = int(hybrid_seed)
        self.state.drd_terms = {}
        self.state.hybrid_stages = list(projectors.student_stages)
        sampler = getattr(train_data_loader, "sampler", None)
        if callable(getattr(sampler, "set_epoch", None)) and not isinstance(sampler, torch.utils.data.DistributedSampler):
            self.add_event_handler(Events.EPOCH_STARTED, lambda engine: sampler.set_epoch(engine.state.epoch))

    @property
    def student(self) -> nn.Module:
        """The student without a DistributedDataParallel wrapper."""
        return getattr(self.network, "module", self.network)

    def progress(self) -> float:
        """Training progress in ``[0, 1]``: 0 at the first iteration, 1 at the last."""
        epoch_length = self.state.epoch_length or 1
        total = max(int(self.state.max_epochs or 1) * int(epoch_length), 1)
        return (max(self.state.iteration, 1) - 1) / max(total - 1, 1)

    def draw_hybrid_stages(self, iteration: int | None = None) -> list[int]:
        """Positions (into ``projectors.student_stages``) of the stages whose hybrid paths run at
        ``iteration`` (default: the current one): all of them, or k drawn uniformly without
        replacement (``hybrid_stages_per_step``), sorted, from a generator seeded by
        ``(hybrid_seed, iteration)``."""
        n = len(self.projectors.student_stages)
        k = self.hybrid_stages_per_step
        if k is None or k >= n:
            return list(range(n))
        it = int(self.state.iteration if iteration is None else iteration)
        seed = int(np.random.SeedSequence([self.hybrid_seed, it, 0x44524421]).generate_state(1)[0])
        g = torch.Generator().manual_seed(seed)
        return sorted(torch.randperm(n, generator=g)[:k].tolist())

    def compute_teacher_features(self, inputs: torch.Tensor, batchdata: Any = None) -> list[torch.Tensor]:
        """Teacher features for ``inputs`` (override to serve them from a cache)."""
        return self.teacher.stage_features(inputs)

    def hybrid_skip_features(self, reprogrammed: list[torch.Tensor], student_features: list[torch.Tensor]) -> list[torch.Tensor]:
        """Stage outputs a hybrid path takes below its replaced stage (the skips of a segmentation
        decoder): the student's own (``hybrid_skips="student"``) or the reprogrammed teacher maps
        (``"teacher"``: hybrid path ``i`` then sees teacher knowledge at every level up to ``i``, the
        deepest one is the frozen-teacher encoder with the student's decoder). Classifier heads read
        the last stage only, so the choice does not change them."""
        if self.hybrid_skips == "teacher":
            return list(reprogrammed) + list(student_features[len(reprogrammed):])
        return student_features

    def _trainable(self) -> list[nn.Parameter]:
        params = list(self.student.parameters()) + list(self.projectors.parameters())
        return [p for p in params if p.requires_grad]

    def sync_gradients(self) -> None:
        """Average student and projector gradients over all processes (multi-GPU training).

        The student's stages and the projectors are called directly rather than through a
        ``DistributedDataParallel`` forward (DRD needs the stage outputs and hybrid paths), so
        DDP's own reducer stays idle and the gradients are all-reduced here in one flat buffer.
        A no-op without an initialised process group of more than one process.
        """
        if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() < 2:
            return
        grads = [p.grad for p in self._trainable() if p.grad is not None]
        if not grads:
            return
        flat = _flatten_dense_tensors(grads)
        dist.all_reduce(flat)
        flat /= dist.get_world_size()
        for g, synced in zip(grads, _unflatten_dense_tensors(flat, grads)):
            g.copy_(synced)

    def _broadcast_parameters(self) -> None:
        if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() < 2:
            return
        for t in list(self.student.state_dict().values()) + list(self.projectors.state_dict().values()):
            dist.broadcast(t, src=0)

    def run(self) -> None:
        self._broadcast_parameters()
        # GradScaler only for float16 autocast on CUDA; bfloat16 and CPU need none.
        use_scaler = self.amp and self.amp_device_type == "cuda" and self.amp_dtype == torch.float16
        self.scaler = torch.amp.GradScaler("cuda") if use_scaler else None
        Workflow.run(self)

    def _iteration(self, engine: DRDTrainer, batchdata: dict[str, torch.Tensor]) -> dict:
        if batchdata is None:
            raise ValueError("Must provide batch data for current iteration.")
        batch = engine.prepare_batch(batchdata, engine.state.device, engine.non_blocking, **engine.to_kwargs)
        inputs, targets = batch[0], batch[1]
        mask = None
        if engine.kl_mask_key is not None and isinstance(batchdata, dict):
            mask = batchdata[engine.kl_mask_key].to(engine.state.device)
        engine.state.output = {Keys.IMAGE: inputs, Keys.LABEL: targets}
        alpha = float(engine.alpha_schedule(engine.progress()))
        beta = float(engine.beta_schedule(engine.progress()))

        acc = engine.accumulation_steps
        local_iter = engine.state.iteration - 1
        if engine.state.epoch_length is not None:
            local_iter %= engine.state.epoch_length
        last_in_epoch = engine.state.epoch_length is not None and local_iter + 1 == engine.state.epoch_length
        should_zero_grad = local_iter % acc == 0
        should_step = (local_iter + 1) % acc == 0 or last_in_epoch

        engine.network.train()
        engine.projectors.train()
        if should_zero_grad:
            engine.optimizer.zero_grad(set_to_none=engine.optim_set_to_none)

        with torch.autocast(engine.amp_device_type, dtype=engine.amp_dtype, enabled=engine.amp):
            teacher_feats = engine.compute_teacher_features(inputs, batchdata)
            student = engine.student
            s_feats = student.forward_stages(inputs)
            pred = student.forward_head(s_feats)
            engine.state.output[Keys.PRED] = pred
            engine.fire_event(IterationEvents.FORWARD_COMPLETED)
            stages = engine.projectors.student_stages
            reprogrammed = engine.projectors(teacher_feats, s_feats)
            drawn = engine.draw_hybrid_stages()
            engine.state.hybrid_stages = [stages[j] for j in drawn]
            with running_stats_frozen(student), parameters_frozen(student, engine.hybrid_grad == "projectors"):
                skips = engine.hybrid_skip_features(reprogrammed, s_feats)
                hybrids = [student.forward_from(stages[j], reprogrammed[j], skips) for j in drawn]
            terms = engine.loss_function(
                pred,
                targets,
                hybrid_outputs=hybrids,
                student_features=[s_feats[i] for i in stages],
                reprogrammed_features=reprogrammed,
                alpha=alpha,
                beta=beta,
                mask=mask,
                stage_ids=stages,
                hybrid_scale=DRDLoss.subset_scale(len(stages), len(drawn)),
            )
        loss = terms["loss"]
        if not torch.isfinite(loss):
            raise FloatingPointError(
                f"non-finite DRD loss at epoch {engine.state.epoch}, iteration {engine.state.iteration}: "
                + ", ".join(f"{k}={float(v):.4g}" for k, v in terms.items())
            )
        engine.state.output[Keys.LOSS] = loss
        for key, value in terms.items():
            if key != "loss":
                engine.state.output[key] = value.detach()
        engine.state.output["alpha"] = torch.tensor(alpha)
        engine.state.output["beta"] = torch.tensor(beta)
        engine.state.drd_terms = {k: float(v.detach()) for k, v in terms.items()} | {"alpha": alpha, "beta": beta}
        engine.fire_event(IterationEvents.LOSS_COMPLETED)

        scaled = loss / acc if acc > 1 else loss
        if engine.scaler is not None:
            engine.scaler.scale(scaled).backward()
            engine.fire_event(IterationEvents.BACKWARD_COMPLETED)
            if should_step:
                engine.sync_gradients()
                engine.scaler.step(engine.optimizer)
                engine.scaler.update()
        else:
            scaled.backward()
            engine.fire_event(IterationEvents.BACKWARD_COMPLETED)
            if should_step:
                engine.sync_gradients()
                engine.optimizer.step()
        engine.fire_event(IterationEvents.MODEL_COMPLETED)
        return engine.state.output
