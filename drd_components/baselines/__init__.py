"""Baselines the DRD papers compare against: vanilla, linear probe, fine-tuning, LoRA, logit KD, FitNet.

Each baseline is a config overlay in ``tools/bundle_templates/overlays/`` (copied into every
bundle's ``configs/``), used as ``--config_file "['configs/train.json','configs/<overlay>']"``.
They only use the contract ids of a generated ``train.json``:

=====================  =====================================================  =====================
overlay                what trains / what is deployed                         best checkpoint
=====================  =====================================================  =====================
train_vanilla          student alone, ``task_loss``                           ``model.pt``
train_linear_probe     frozen teacher + head (linear; conv decoder for seg)   ``teacher_head.pt``
train_finetune         whole teacher + head (BatchNorm statistics frozen)     ``teacher_finetuned.pt``
train_lora             LoRA factors + head; base weights unchanged            ``teacher_lora.pt``
train_kd               student, Hinton KD from the probe teacher              ``model.pt``
                       (``teacher_head_checkpoint``)
train_lora_kd          student, KD from the LoRA teacher                      ``model.pt``
                       (``teacher_lora_checkpoint``)
train_fitnet           student + 1x1 hint adapters (MSE to teacher taps)      ``model.pt``
train_rd               DRD with one projector at the last stage, alpha=1,     ``model.pt``
                       beta=0 (RD, MICCAI 2024)
train_drd_no_cka/kl/   DRDLoss ``use_cka`` / ``use_kl`` / ``use_hybrid`` off  ``model.pt``
hybrid                 (no_hybrid drops the hybrid *task* term; the hybrid
                       paths still exist and still feed the KL term)
train_drd_cache        DRD with the multi-view teacher-feature cache          ``model.pt``
=====================  =====================================================  =====================

LP / FT / LoRA deploy the teacher: their ``network`` is a :class:`TeacherWithHead`, so the
bundle's validation and ``tools/benchmark_methods.py`` measure the teacher's inference cost;
the bundle's ``evaluate.json`` / ``inference.json`` (student ``model.pt``) do not apply to them.
Segmentation: every overlay trains on 2D segmentation bundles (teacher head = light conv decoder
on the tapped features, KD per voxel, ``kd_mask_key`` restricts it to a voxel mask); 3D works
through the same code paths (``spatial_dims``) but is not covered by a test. The feature cache
needs the bundle's ``train#deterministic_transforms`` / ``train#random_transforms`` ids; it trains
on K fixed augmented views per sample (teacher and student see the same view) instead of fresh
augmentation every epoch (see ``docs/teacher_cache.md`` and
:mod:`drd_components.engines.feature_cache`).
"""

from drd_components.baselines.engine import TeacherGuidedTrainer
from drd_components.baselines.feature_probe import LinearFeatureProbe, fit_linear_probe, pool_taps
from drd_components.baselines.fitnet import FitNetLoss, FitNetTrainer, HintAdapters
from drd_components.baselines.kd import KDTrainer, LogitKDLoss
from drd_components.baselines.lora import LoRAUpdate, apply_lora, lora_layer_names, lora_parameters
from drd_components.baselines.teacher_head import (
    TEACHER_MODES,
    ClassificationProbeHead,
    SegmentationProbeHead,
    TeacherWithHead,
)
