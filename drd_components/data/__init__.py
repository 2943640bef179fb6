"""Dataset layouts, datalists, splits and transforms."""

from drd_components.data.busi import BUSI_CLASSES, busi_classification_datalist, find_busi_cases
from drd_components.data.folders import IMAGE_EXTENSIONS_2D, image_folder_datalist
from drd_components.data.splits import stratified_split
from drd_components.data.transforms import AdaptChannels, AdaptChannelsd
from drd_components.data.acdc import ACDC_GROUPS, ACDC_LABELS, acdc_datalist, find_acdc_cases, read_info_cfg
from drd_components.data.busi_segmentation import busi_segmentation_datalist
from drd_components.data.msd import msd_datalist, nifti_folder_datalist, read_msd_dataset_json
from drd_components.data.seg_transforms import AffineFromZoomsd, LoadUnionMaskd, ValidRegiond
from drd_components.data.brain_tumor import BRAIN_TUMOR_CLASSES, brain_tumor_mri_datalist
from drd_components.data.btcv import SelectLabeld, btcv_gallbladder_datalist
from drd_components.data.duplicates import find_duplicate_groups, resolve_cross_split_duplicates
from drd_components.data.fives import fives_datalist
from drd_components.data.ham10000 import HAM10000_CLASSES, ham10000_datalist
from drd_components.data.inference_inputs import DicomSeriesReader, inference_datalist
from drd_components.data.isic_segmentation import isic2018_segmentation_datalist
from drd_components.data.kvasir import BinarizeLabeld, kvasir_seg_datalist
from drd_components.data.medmnist import medmnist_datalist, verify_medmnist_md5
from drd_components.data.mosmed import MOSMED_CLASSES, mosmeddata_datalist
from drd_components.data.pneumonia import PNEUMONIA_CLASSES, pneumonia_xray_datalist
from drd_components.data.validation import DataValidationError, check_dataset_dir, validate_datalist
from drd_components.data.multiview import MultiViewDataset, MultiViewSampler
from drd_components.data import user_datalist
