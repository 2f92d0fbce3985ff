"""normcli: statistics and normalization for image and array datasets."""

__version__ = "0.1.0"
