"""Family templates of the bundle generator (``tools/generate_bundles.py``)."""
