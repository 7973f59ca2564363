"""Data I/O, one module per file format (nifti, dicom, hdf5, png) plus the grid geometry and
resampling they share (grid) and the Scan type of predict (common). Each format module holds its
training reader (a data source) and predict's reader and mask writer, as nnU-Net's imageio does.
volumes.py keeps the Volume type, the bounds, the suspect-data checks and the internal store."""
