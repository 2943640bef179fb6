"""Frozen foundation-model teachers and safe checkpoint loading."""

from drd_components.teachers.base import FrozenTeacher
from drd_components.teachers.checkpoint import (
    CheckpointError,
    extract_state_dict,
    load_checkpoint_file,
    load_state_dict_strict,
    sha256sum,
    verify_sha256,
)
from drd_components.teachers.preprocessing import TeacherPreprocessing
from drd_components.teachers.standin import ResNetStandInTeacher
from drd_components.teachers.custom import CustomTeacher
from drd_components.teachers.lvm_med import LVMMedResNet50Teacher
from drd_components.teachers.merlin import MerlinTeacher
from drd_components.teachers.pmc_clip import PMCCLIPTeacher
from drd_components.teachers.radimagenet import RadImageNetDenseNet121Teacher
from drd_components.teachers.medical_sam_adapter import MedicalSAMAdapterTeacher
from drd_components.teachers.sam_vit import MedSAMTeacher
from drd_components.teachers.litemedsam import LiteMedSAMTeacher
from drd_components.teachers.sat import SATTeacher
from drd_components.teachers.swin_umamba import SwinUMambaTeacher
