"""The real photographs installed packages ship, for the photographs faithfulness study.

scikit-image's data folder, scikit-learn's sample images, matplotlib's sample data and Debian's `darknet` package
(/usr/share/darknet/data/; `apt-get install darknet`). Only pictures whose subject is an ImageNet-class object are
used; what scikit-image ships besides, and why it is left out, is in SKIMAGE_LEFT_OUT.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

DARKNET_DATA = Path("/usr/share/darknet/data")
DARKNET_INSTALL = "apt-get install darknet"


@dataclass(frozen=True)
class Photo:
    """One picture: a short name, the package that ships it, its file, and what it shows."""

    name: str
    package: str
    path: Path
    subject: str


# (file in skimage/data, what it shows); camera is greyscale (read as three equal channels)
SKIMAGE_PHOTOS = (
    ("chelsea.png", "a tabby cat"),
    ("coffee.png", "a cup of coffee"),
    ("astronaut.png", "an astronaut (Eileen Collins) with a flag and a helmet"),
    ("rocket.jpg", "a rocket on its launch pad"),
    ("motorcycle_left.png", "a motorcycle (left view of a stereo pair)"),
    ("motorcycle_right.png", "a motorcycle (right view of a stereo pair)"),
    ("camera.png", "a cameraman with a tripod camera (greyscale)"),
    ("clock_motion.png", "a wall clock, motion-blurred (skimage.data.clock())"),
)
SKIMAGE_LEFT_OUT = {
    "brick.png, grass.png, gravel.png": "textures, no object",
    "cell.png, ihc.png, microaneurysms.png, retina.jpg": "microscopy and retina scans, no ImageNet class",
    "hubble_deep_field.jpg, moon.png": "astronomy, no ImageNet class",
    "page.png, text.png": "scanned text, no object",
    "coins.png": "greyscale museum photo of Greek coins, no ImageNet class for coins",
    "horse.png": "a binary silhouette, not a photograph",
    "chessboard_*.png, color.png, logo.png, phantom.png, binary blobs": "synthetic images",
    "lfw_subset.npy": "25x25 face crops, no ImageNet class",
    "no_time_for_that_tiny.gif": "a 64-frame animated GIF (video frames), not a still photograph",
    "multipage*.tif, motorcycle_disp.npz": "test files and a disparity map, not photographs",
}
SKLEARN_PHOTOS = (("china.jpg", "a Chinese temple (pagoda roof)"), ("flower.jpg", "a flower, close up"))
MATPLOTLIB_PHOTOS = (("grace_hopper.jpg", "Grace Hopper in uniform"),)
DARKNET_PHOTOS = (
    ("dog.jpg", "a dog, a bicycle and a truck"),
    ("person.jpg", "a person, a horse and a dog"),
    ("horses.jpg", "horses in a field"),
    ("giraffe.jpg", "a giraffe and a zebra"),
    ("kite.jpg", "people flying kites on a beach"),
    ("eagle.jpg", "an eagle"),
    ("scream.jpg", "Munch's The Scream (a painting, kept as darknet ships it)"),
)


def skimage_data() -> Path:
    import skimage

    return Path(skimage.__file__).resolve().parent / "data"


def sklearn_images() -> Path:
    import sklearn.datasets

    return Path(sklearn.datasets.__file__).resolve().parent / "images"


def matplotlib_sample_data() -> Path:
    import matplotlib

    return Path(matplotlib.get_data_path()) / "sample_data"


def installed_photos(darknet_data: str | os.PathLike = DARKNET_DATA) -> tuple[list[Photo], list[str]]:
    """The photographs found on this machine, and one line per package or file that is missing (what to install)."""
    found: list[Photo] = []
    missing: list[str] = []
    groups = [("scikit-image", skimage_data, SKIMAGE_PHOTOS, "pip install scikit-image"),
              ("scikit-learn", sklearn_images, SKLEARN_PHOTOS, "pip install scikit-learn"),
              ("matplotlib", matplotlib_sample_data, MATPLOTLIB_PHOTOS, "pip install matplotlib"),
              ("darknet", lambda: Path(darknet_data), DARKNET_PHOTOS, DARKNET_INSTALL)]
    for package, folder_of, photos, install in groups:
        try:
            folder = folder_of()
        except ImportError:
            missing.append(f"{package} is not installed ({install}): left out {', '.join(f for f, _ in photos)}")
            continue
        absent = []
        for file, subject in photos:
            path = folder / file
            if path.is_file():
                found.append(Photo(Path(file).stem, package, path, subject))
            else:
                absent.append(file)
        if absent:
            where = f"{folder} has no {', '.join(absent)}"
            missing.append(f"{where} ({install})" if len(absent) == len(photos) else where)
    return found, missing
