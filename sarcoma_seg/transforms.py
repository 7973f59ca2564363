"""Deterministic preprocessing, declared once and reused by preprocess, train, evaluate and predict,
and the random albumentations augmentation that only training uses."""

import functools
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import cv2
import numpy as np

from sarcoma_seg import config
from sarcoma_seg.errors import SarcomaSegError
from sarcoma_seg.params import check_image_size, check_int_at_least
from sarcoma_seg.settings import Preprocess

if TYPE_CHECKING:
    import albumentations as A


def through_window(values: np.ndarray, window: tuple[float, float]) -> np.ndarray:
    """Intensities through a [low, high] window onto [0, 1]: low and below 0, high and above 1."""
    low, high = window
    return np.clip((values - low) / (high - low), 0.0, 1.0)


@dataclass(frozen=True)
class Preprocessing:
    """HU window -> [0, 1], resize to a square, then channels: the slice repeated as many times as
    the encoder expects (or seen through one HU window per channel), or (2.5D, context > 0) the
    slice with `context` neighbours each side; with a PET window, the PET slice on the CT grid
    follows as one more channel."""

    hu_window: tuple[float, float]
    image_size: int
    channels: int
    context: int = 0  # neighbouring slices on each side; channels == 2 * context + 1 when > 0
    pet_window: tuple[float, float] | None = None  # SUV window of the PET channel; None: CT only
    units: str = "HU"  # what the CT intensities are: HU, or png8 for 8-bit exported slices
    hu_windows: tuple[tuple[float, float], ...] | None = None  # one per CT channel; None: repeat

    @property
    def input_channels(self) -> int:
        """Channels the model sees: the CT channels plus one for PET."""
        return self.channels + (self.pet_window is not None)

    def plane(self, hu_slice: np.ndarray, window: tuple[float, float] | None = None) -> np.ndarray:
        """One axial slice (rows, cols) -> float32 (size, size) in [0, 1] (HU window by default)."""
        windowed = through_window(hu_slice.astype(np.float32), window or self.hu_window)
        size = (self.image_size, self.image_size)
        return cv2.resize(windowed, size, interpolation=cv2.INTER_AREA)

    def display(self, hu_slice: np.ndarray) -> np.ndarray:
        """One axial slice through the CT window onto [0, 1] at its own size, for figures."""
        return through_window(hu_slice, self.hu_window)

    def planes(self, volume: np.ndarray, window: tuple[float, float]) -> np.ndarray:
        """A volume (slices, rows, cols) through one window -> float32 (slices, size, size)."""
        return np.stack([self.plane(s, window) for s in volume])

    def image(self, hu_slice: np.ndarray, pet_slice: np.ndarray | None = None) -> np.ndarray:
        """One axial HU slice -> float32 (size, size, input channels); a lone slice is its own
        context."""
        return self.volume(hu_slice[None], None if pet_slice is None else pet_slice[None])[0]

    def mask(self, mask_slice: np.ndarray) -> np.ndarray:
        """One mask slice -> uint8 (size, size) of 0/1: a pixel is tumour where tumour covers at
        least half of its footprint, so the mask stays centred on the image's pixels."""
        binary = (mask_slice > 0).astype(np.float32)
        size = (self.image_size, self.image_size)
        # not INTER_NEAREST: OpenCV samples each footprint's top-left source pixel, shifting the
        # mask against the INTER_AREA image by up to half a model pixel (IBSI: a perfect model
        # restored to the CT grid scores 0.963 3D Dice that way, 0.985 with the covered fraction)
        shrink = mask_slice.shape[0] >= size[1] and mask_slice.shape[1] >= size[0]
        interpolation = cv2.INTER_AREA if shrink else cv2.INTER_LINEAR
        return (cv2.resize(binary, size, interpolation=interpolation) >= 0.5).astype(np.uint8)

    def volume(self, ct: np.ndarray, pet: np.ndarray | None = None) -> np.ndarray:
        """A CT volume (slices, rows, cols), and PET on its grid if the model reads PET ->
        (slices, size, size, input channels)."""
        if self.pet_window is not None and (pet is None or pet.shape != ct.shape):
            found = "none" if pet is None else f"shape {pet.shape}"
            raise SarcomaSegError(
                f"this model reads PET as well as CT: give PET on the CT grid {ct.shape} "
                f"(got {found})"
            )
        if self.hu_windows:
            stacked = np.stack([self.planes(ct, w) for w in self.hu_windows], axis=-1)
        elif not self.context:
            stacked = np.repeat(self.planes(ct, self.hu_window)[..., None], self.channels, axis=-1)
        else:
            offsets = np.arange(-self.context, self.context + 1)
            # edge slices repeat themselves where a neighbour is missing
            neighbours = np.clip(np.arange(len(ct))[:, None] + offsets[None, :], 0, len(ct) - 1)
            stacked = self.planes(ct, self.hu_window)[neighbours].transpose(0, 2, 3, 1)
        if self.pet_window is None:
            return stacked
        return np.concatenate([stacked, self.planes(pet, self.pet_window)[..., None]], axis=-1)

    def volume_mask(self, mask: np.ndarray) -> np.ndarray:
        """A mask volume (slices, rows, cols) -> (slices, size, size)."""
        return np.stack([self.mask(s) for s in mask])

    def restore(self, probs: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
        """A (size, size) probability map back onto a (rows, cols) slice grid; interpolating
        before thresholding gives smooth outlines, not the model grid's blocky steps."""
        size = (shape[1], shape[0])
        return cv2.resize(probs.astype(np.float32), size, interpolation=cv2.INTER_LINEAR)


WINDOW_PARAMS = {"HU": "hu_window", "png8": "png8_window"}  # which window fits which units


def preprocessing_from(image_size: int, pre: Preprocess, units: str = "HU") -> Preprocessing:
    """Build and validate the Preprocessing from base.image_size and the preprocess section,
    for CT in `units` (HU, or png8 for 8-bit exported slices: their own window)."""
    name = WINDOW_PARAMS[units]
    window = getattr(pre, name)
    channels = check_int_at_least("preprocess.channels", pre.channels, 1)
    context = check_int_at_least("preprocess.context_slices", pre.context_slices, 0)
    if context and channels != 2 * context + 1:
        raise SarcomaSegError(
            f"preprocess.channels={channels} does not fit preprocess.context_slices={context}; "
            f"2.5D input needs channels = {2 * context + 1}"
        )
    if not context and channels not in (1, 3):
        raise SarcomaSegError(f"preprocess.channels={channels} is not allowed; choose 1 or 3")
    size = check_image_size(image_size)
    pet = pre.pet_window
    if pet is not None:
        pet = check_window("preprocess.pet_window", pet)
    window = check_window(f"preprocess.{name}", window)
    windows = check_hu_windows(pre.hu_windows, channels, context, units)
    return Preprocessing(window, size, channels, context, pet, units, windows)


def check_hu_windows(
    windows: Any, channels: int, context: int, units: str
) -> tuple[tuple[float, float], ...] | None:
    """preprocess.hu_windows: null, or one HU [low, high] per CT channel of a one-slice input."""
    if windows is None:
        return None
    name = "preprocess.hu_windows"
    if units != "HU":
        raise SarcomaSegError(f"{name} needs CT in HU; this source gives {units} intensities")
    if context:
        raise SarcomaSegError(f"{name} and preprocess.context_slices > 0 both claim the channels")
    if not isinstance(windows, list | tuple) or len(windows) != channels:
        raise SarcomaSegError(
            f"{name}={windows!r} is not allowed; give one [low, high] per channel "
            f"(preprocess.channels={channels})"
        )
    return tuple(check_window(f"{name}[{i}]", w) for i, w in enumerate(windows))


def check_window(name: str, window: Any) -> tuple[float, float]:
    """A [low, high] intensity window with low < high, as floats."""
    return config.check_window(name, window)


def _blur_sharpen(cfg: dict[str, Any]) -> "A.BasicTransform":
    """One of blur or sharpen, as the original study's OneOf block."""
    A = _albumentations()  # noqa: N806  (albumentations' own alias)
    return A.OneOf([A.Blur(blur_limit=tuple(cfg["blur_limit"])), A.Sharpen()], p=cfg["p"])


def _crop(size: int) -> Callable[[dict[str, Any]], "A.BasicTransform"]:
    """A random crop of at least min_fraction of the side, resized back to the model size."""
    A = _albumentations()  # noqa: N806  (albumentations' own alias)
    return lambda cfg: A.RandomResizedCrop(
        size=(size, size), scale=(cfg["min_fraction"] ** 2, 1.0), ratio=(0.9, 1.1), p=cfg["p"]
    )


@functools.cache
def _albumentations() -> Any:
    """albumentations, imported on first use: only training augments, and the import costs
    predict (which imports this module for Preprocessing) ~0.4 s of CPU before any work."""
    import albumentations

    return albumentations


@functools.cache
def pet_transforms() -> tuple[type, type]:
    """(PetUptake, PetBlur): the PET channel's augmentations, albumentations transforms defined
    on first use (they subclass albumentations' ImageOnlyTransform)."""
    A = _albumentations()  # noqa: N806  (albumentations' own alias)

    class PetUptake(A.ImageOnlyTransform):
        """Scale the PET channel (the last) by a random factor, or zero it: FDG uptake varies
        between tumours, patients and scanners, and a model shown only bright tumours ignores the
        CT and misses the faint ones. Only for models that read PET. It scales the windowed
        channel, so an uptake above the window's top (already 1.0) comes out at the factor
        itself: fainter than a truly weaker uptake would, which widens the range the model sees."""

        def __init__(self, scale: tuple[float, float], drop: float = 0.0, p: float = 0.5) -> None:
            super().__init__(p=p)
            if len(scale) != 2 or not 0 <= scale[0] <= scale[1] or not 0 <= drop <= 1:
                raise ValueError("scale needs 0 <= low <= high and drop 0 <= d <= 1")
            self.scale, self.drop = (float(scale[0]), float(scale[1])), float(drop)

        def get_params(self) -> dict[str, float]:
            """The factor of this call: 0 with probability drop, else uniform in scale."""
            if self.py_random.random() < self.drop:
                return {"factor": 0.0}
            return {"factor": self.py_random.uniform(*self.scale)}

        def apply(self, img: np.ndarray, factor: float = 1.0, **params: Any) -> np.ndarray:
            """The image with its last channel scaled (and kept in [0, 1])."""
            out = img.copy()
            out[..., -1] = np.clip(out[..., -1] * factor, 0.0, 1.0)
            return out

    class PetBlur(A.ImageOnlyTransform):
        """Blur the PET channel (the last) with a Gaussian of random sigma, in model pixels: PET's
        resolution (4-5 mm voxels, a wider point spread) varies by scanner and reconstruction, and
        its hot spot spreads past the tumour's CT outline. A model shown blurred PET learns to take
        the outline from the CT and the location from the PET."""

        def __init__(self, sigma: tuple[float, float], p: float = 0.5) -> None:
            super().__init__(p=p)
            if len(sigma) != 2 or not 0 < sigma[0] <= sigma[1]:
                raise ValueError("sigma needs 0 < low <= high (model pixels)")
            self.sigma = (float(sigma[0]), float(sigma[1]))

        def get_params(self) -> dict[str, float]:
            """The sigma of this call, uniform in the range."""
            return {"sigma": self.py_random.uniform(*self.sigma)}

        def apply(self, img: np.ndarray, sigma: float = 1.0, **params: Any) -> np.ndarray:
            """The image with its last channel blurred (edges reflected, so the mean is kept)."""
            out = img.copy()
            pet = np.ascontiguousarray(out[..., -1])
            out[..., -1] = cv2.GaussianBlur(
                pet, (0, 0), sigmaX=sigma, borderType=cv2.BORDER_REFLECT
            )
            return out

    return PetUptake, PetBlur


PET_AUGMENTATIONS = ("pet_uptake", "pet_blur")  # act on the PET channel: skipped for CT-only models


def _augmentations(size: int) -> dict[str, Callable[[dict[str, Any]], "A.BasicTransform"]]:
    """Registry of switchable augmentations, each built from its params block."""
    A = _albumentations()  # noqa: N806  (albumentations' own alias)
    PetUptake, PetBlur = pet_transforms()  # noqa: N806  (classes)
    border = {"border_mode": cv2.BORDER_CONSTANT, "fill": 0, "fill_mask": 0}
    return {
        "horizontal_flip": lambda c: A.HorizontalFlip(p=c["p"]),
        "affine": lambda c: A.Affine(
            scale=tuple(c["scale"]),
            translate_percent=(-c["translate_percent"], c["translate_percent"]),
            rotate=(-c["rotate"], c["rotate"]),
            p=c["p"],
            **border,
        ),
        "perspective": lambda c: A.Perspective(scale=tuple(c["scale"]), p=c["p"], **border),
        "brightness_contrast": lambda c: A.RandomBrightnessContrast(
            brightness_limit=c["brightness_limit"], contrast_limit=c["contrast_limit"], p=c["p"]
        ),
        "gamma": lambda c: A.RandomGamma(gamma_limit=tuple(c["gamma_limit"]), p=c["p"]),
        "blur_sharpen": _blur_sharpen,
        "gauss_noise": lambda c: A.GaussNoise(std_range=tuple(c["std_range"]), p=c["p"]),
        "random_crop": _crop(size),
        "pet_uptake": lambda c: PetUptake(tuple(c["scale"]), c["drop"], p=c["p"]),
        "pet_blur": lambda c: PetBlur(tuple(c["sigma"]), p=c["p"]),
    }


def build_augmentation(
    augment: Mapping[str, Mapping[str, Any]], image_size: int, seed: int, pet: bool = False
) -> "A.Compose":
    """A seeded albumentations pipeline of the enabled transforms of train.augment, in the
    original study's order (then the PET ones, if the model reads PET); a block the mapping
    lacks is not applied."""
    registry = _augmentations(image_size)
    unknown = sorted(set(augment) - set(registry))
    if unknown:
        raise SarcomaSegError(
            f"train.augment.{unknown[0]} is not a known augmentation; choose from: "
            + ", ".join(registry)
        )
    transforms = []
    for name, build in registry.items():
        if name not in augment:
            continue
        cfg = augment[name]
        if not cfg["enabled"] or (name in PET_AUGMENTATIONS and not pet):
            continue
        try:
            transforms.append(build(cfg))
        except (KeyError, TypeError, ValueError) as exc:
            raise SarcomaSegError(
                f"train.augment.{name}: invalid settings {cfg!r} ({exc})"
            ) from exc
    return _albumentations().Compose(transforms, seed=seed)
