"""Calibration and validation data: readers (npz, folders, images, array files), feeds, holdout."""
