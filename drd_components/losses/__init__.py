"""CKA and the DRD objective."""

from drd_components.losses.cka import CKALoss, cka, hsic
from drd_components.losses.drd_loss import DRDLoss, LinearSchedule, softened_kl
