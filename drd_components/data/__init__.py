"""Dataset layouts, datalists, splits and transforms."""

from drd_components.data.busi import BUSI_CLASSES, busi_classification_datalist, find_busi_cases
from drd_components.data.folders import IMAGE_EXTENSIONS_2D, image_folder_datalist
from drd_components.data.splits import stratified_split
from drd_components.data.transforms import AdaptChannels, AdaptChannelsd
