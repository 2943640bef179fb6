"""Networks: reprogramming projectors and staged students."""

from drd_components.networks.reprogramming import ReprogrammingModule, ReprogrammingProjector, tokens_to_map
from drd_components.networks.batchnorm import running_stats_frozen
from drd_components.networks.students import (
    StagedNetwork,
    StagedResNet,
    StagedResNet18,
    StagedSegmentationNetwork,
    StagedShuffleNetV2UNet,
    StagedUNet,
    StagedUNet3D,
    StagedViTSegmenter,
    StagedViTTinySegmenter,
)
