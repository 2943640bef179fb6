"""Bundle-level helpers: metadata validation."""

from drd_components.bundle.metadata import METADATA_SCHEMA, validate_metadata
