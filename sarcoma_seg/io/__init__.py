"""Data I/O, one module per file format: each holds the training reader and predict's reader and
writer for its format (so far: dicom; NIfTI, PNG and grid resampling live in readers.py and
scans.py, the HDF5 store in volumes.py)."""
