"""Dataset layouts, datalists, splits and transforms."""

from drd_components.data.busi import BUSI_CLASSES, busi_classification_datalist, find_busi_cases
from drd_components.data.folders import IMAGE_EXTENSIONS_2D, image_folder_datalist
from drd_components.data.splits import stratified_split
from drd_components.data.transforms import AdaptChannels, AdaptChannelsd
from drd_components.data.acdc import ACDC_GROUPS, ACDC_LABELS, acdc_datalist, find_acdc_cases, read_info_cfg
from drd_components.data.busi_segmentation import busi_segmentation_datalist
from drd_components.data.msd import msd_datalist, nifti_folder_datalist, read_msd_dataset_json
from drd_components.data.seg_transforms import AffineFromZoomsd, LoadUnionMaskd, ValidRegiond
