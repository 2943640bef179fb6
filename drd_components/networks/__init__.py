"""Networks: reprogramming projectors and staged students."""

from drd_components.networks.reprogramming import ReprogrammingModule, ReprogrammingProjector, tokens_to_map
from drd_components.networks.students import StagedNetwork, StagedResNet, StagedResNet18
