"""Staged student networks."""

from drd_components.networks.students.base import StagedNetwork
from drd_components.networks.students.resnet import StagedResNet, StagedResNet18, resnet_stage_modules
