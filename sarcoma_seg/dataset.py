"""Model-ready slice sets on disk (one .npz per split) and the Keras batch sequence over them."""

from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from sarcoma_seg.errors import SarcomaSegError
from sarcoma_seg.transforms import Preprocessing
from sarcoma_seg.volumes import Volume


@dataclass
class SliceSet:
    """Preprocessed axial slices of one split, each tied to its patient and slice index."""

    images: np.ndarray  # (N, size, size, channels) float32 in [0, 1]
    masks: np.ndarray  # (N, size, size) uint8 0/1
    patients: np.ndarray  # (N,) patient id per slice
    slices: np.ndarray  # (N,) axial index within the patient's volume
    spacing: dict[str, list[float]]  # patient id -> voxel spacing in mm

    def patient_indices(self) -> dict[str, np.ndarray]:
        """Slice positions of every patient, in axial order."""
        out = {}
        for pid in sorted(set(self.patients.tolist())):
            idx = np.flatnonzero(self.patients == pid)
            out[pid] = idx[np.argsort(self.slices[idx])]
        return out


def save_slice_set(path: Path, data: SliceSet) -> None:
    """Write a SliceSet as a compressed .npz."""
    spacing = np.array([[pid, *sp] for pid, sp in sorted(data.spacing.items())], dtype=object)
    np.savez_compressed(
        path,
        images=data.images.astype(np.float16),  # half precision: [0, 1] needs no more
        masks=data.masks,
        patients=data.patients.astype(str),
        slices=data.slices,
        spacing=spacing.astype(str),
    )


def load_slice_set(path: Path) -> SliceSet:
    """Read a SliceSet written by save_slice_set."""
    if not Path(path).is_file():
        raise SarcomaSegError(f"{path}: not found; run the preprocess stage first")
    with np.load(path) as npz:
        spacing = {row[0]: [float(v) for v in row[1:]] for row in npz["spacing"]}
        return SliceSet(
            npz["images"].astype(np.float32),
            npz["masks"],
            npz["patients"],
            npz["slices"],
            spacing,
        )


def epoch_order(
    masks: np.ndarray, rng: np.random.Generator, tumour_fraction: float | None = None
) -> np.ndarray:
    """Shuffled slice indices for one epoch; with tumour_fraction, tumour-bearing slices are drawn
    again (with replacement) until they make up that fraction of the epoch."""
    order = np.arange(len(masks))
    has_tumour = np.flatnonzero(masks.reshape(len(masks), -1).any(axis=1))
    if tumour_fraction and len(has_tumour):
        empty = len(masks) - len(has_tumour)
        # t / (t + e) = f  =>  t = f e / (1 - f): how many tumour slices the epoch needs
        needed = int(np.ceil(tumour_fraction * empty / (1.0 - tumour_fraction)))
        extra = max(0, needed - len(has_tumour))
        order = np.concatenate([order, rng.choice(has_tumour, size=extra, replace=True)])
    rng.shuffle(order)
    return order


def batch_sequence(
    data: SliceSet,
    batch_size: int,
    augment=None,
    seed: int = 0,
    tumour_fraction: float | None = None,
):
    """A Keras Sequence of (images, masks) batches; shuffled, oversampled and augmented when
    augment is given (training), plain and in order otherwise (validation)."""
    import tensorflow as tf

    class SliceSequence(tf.keras.utils.Sequence):
        def __init__(self) -> None:
            super().__init__()
            self.rng = np.random.default_rng(seed)
            self.augment = augment  # its random state is checkpointed with self.rng
            self.order = np.arange(len(data.images))
            if augment is not None:
                self.order = epoch_order(data.masks, self.rng, tumour_fraction)

        def __len__(self) -> int:
            return int(np.ceil(len(self.order) / batch_size))

        def __getitem__(self, i: int) -> tuple[np.ndarray, np.ndarray]:
            idx = self.order[i * batch_size : (i + 1) * batch_size]
            images, masks = data.images[idx], data.masks[idx]
            if augment is not None:
                pairs = [augment(image=im, mask=m) for im, m in zip(images, masks)]
                images = np.stack([p["image"] for p in pairs])
                masks = np.stack([p["mask"] for p in pairs])
            return images.astype(np.float32), masks[..., None].astype(np.float32)

        def on_epoch_end(self) -> None:
            if augment is not None and tumour_fraction:
                self.order = epoch_order(data.masks, self.rng, tumour_fraction)
            elif augment is not None:
                self.rng.shuffle(self.order)  # reshuffle in place: the order results were made with

    return SliceSequence()


def slice_set(volumes: list[Volume], pre: Preprocessing) -> SliceSet:
    """Every axial slice of the given patients, preprocessed and tagged with patient and index;
    no patients (split.val: 0) give an empty set of the same layout."""
    if not volumes:
        size = pre.image_size
        return SliceSet(
            images=np.zeros((0, size, size, pre.input_channels), np.float32),
            masks=np.zeros((0, size, size), np.uint8),
            patients=np.zeros(0, str),
            slices=np.zeros(0, np.int64),
            spacing={},
        )
    return SliceSet(
        images=np.concatenate([pre.volume(v.ct, v.pet) for v in volumes]),
        masks=np.concatenate([pre.volume_mask(v.mask) for v in volumes]),
        patients=np.concatenate([[v.patient_id] * len(v.ct) for v in volumes]).astype(str),
        slices=np.concatenate([np.arange(len(v.ct)) for v in volumes]),
        spacing={v.patient_id: list(v.spacing) for v in volumes},
    )


def with_pet_if_present(pre: Preprocessing, volumes: list[Volume]) -> Preprocessing:
    """PET becomes an input channel where the source has it: every patient, or else none."""
    if pre.pet_window is None:
        return pre
    missing = [v.patient_id for v in volumes if v.pet is None]
    if len(missing) == len(volumes):
        print("preprocess.pet_window: this source has no PET; the model reads CT only")
        return replace(pre, pet_window=None)
    if missing:
        raise SarcomaSegError(
            f"patient {missing[0]} has no PET but others do ({len(missing)} without); "
            "a PET channel needs every patient's PET: set preprocess.pet_window: null"
        )
    return pre


def stats(data: SliceSet) -> dict[str, float | int]:
    """Slices, tumour-bearing slices, tumour pixel fraction and tumour-free patients of a split."""
    per_slice = data.masks.sum(axis=(1, 2))
    per_patient = {p: per_slice[idx].sum() for p, idx in data.patient_indices().items()}
    return {
        "patients": len(per_patient),
        "patients_without_tumour": int(sum(v == 0 for v in per_patient.values())),
        "slices": len(data.masks),
        "tumour_slices": int((per_slice > 0).sum()),
        "tumour_pixel_fraction": round(float(data.masks.mean()), 6) if len(data.masks) else 0.0,
    }
