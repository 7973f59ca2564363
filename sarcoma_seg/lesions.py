"""3D lesions of a binary mask: its connected components and the largest of them, shared by the
inference postprocessing, predict's lesion count and the phantom's tumour generator."""

import numpy as np

# 26-connectivity (faces, edges and corners; scipy's connectivity 3 in 3D): one tumour whose voxels
# touch only at an edge or corner, as a thin or oblique margin does on anisotropic CT voxels (a few
# mm across a slice, 5 mm between slices), is one lesion, not several
LESION_CONNECTIVITY = 3


def components(
    mask: np.ndarray, connectivity: int = LESION_CONNECTIVITY
) -> tuple[np.ndarray, int, tuple[slice, ...]]:
    """3D connected components of a binary mask, labelled inside its bounding box only (labels,
    count, box): a tumour fills a sliver of a 512 x 512 CT."""
    box = tuple(
        slice(int(hits[0]), int(hits[-1]) + 1) if len(hits) else slice(0, 0)
        for hits in (
            np.flatnonzero(mask.any(axis=tuple(a for a in range(3) if a != axis)))
            for axis in range(3)
        )
    )
    from scipy import ndimage  # here: SciPy's import is a third of `predict --help`

    structure = ndimage.generate_binary_structure(3, connectivity)
    labels, count = ndimage.label(mask[box], structure=structure)
    return labels, int(count), box


def largest_component(mask: np.ndarray, connectivity: int = LESION_CONNECTIVITY) -> np.ndarray:
    """Only the largest 3D connected component of a binary mask, in the mask's dtype; the first
    in scan order wins a tie; an empty or one-piece mask comes back as it is."""
    labels, count, box = components(mask, connectivity)
    if count <= 1:
        return mask
    sizes = np.bincount(labels.ravel())[1:]
    out = np.zeros_like(mask)
    out[box] = labels == 1 + int(np.argmax(sizes))
    return out
