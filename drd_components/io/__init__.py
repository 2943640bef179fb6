"""File transfer helpers: verified downloads and safe archive extraction."""

from drd_components.io.archive import UnsafeArchiveError, check_tar_members, check_zip_members, safe_extract_tar, safe_extract_zip
from drd_components.io.download import DownloadError, download_file
