"""Staged student networks."""

from drd_components.networks.students.base import StagedNetwork
from drd_components.networks.students.resnet import StagedResNet, StagedResNet18, resnet_stage_modules
from drd_components.networks.students.segmentation import StagedSegmentationNetwork
from drd_components.networks.students.shufflenet_unet import ShuffleV2Block, StagedShuffleNetV2UNet
from drd_components.networks.students.unet import StagedUNet, StagedUNet3D
from drd_components.networks.students.vit_segmenter import StagedViTSegmenter, StagedViTTinySegmenter
