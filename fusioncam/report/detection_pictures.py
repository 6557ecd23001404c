"""Pictures of detection explanations: an image with its explained instances' boxes, labels and scores drawn, and a
panel per instance (the image | its box | each method's map with the box), in the layout of pictures.py.

Boxes are in the model's input pixels (the whole image is resized to the input, images.preprocess), so each box is
scaled by (image width / input width, image height / input height) before it is drawn on the image.
"""

from __future__ import annotations

from typing import Sequence

import cv2
import numpy as np

from .pictures import overlay, tile_size, tiled_panel
from .segmentation_pictures import class_colors


def class_color(cls: int, num_classes: int) -> tuple[int, int, int]:
    """The RGB colour a class's boxes are drawn in (segmentation_pictures.class_colors; class 0 included)."""
    colors = class_colors(max(num_classes, 1) + 1)[1:]  # skip the background grey: every class gets a hue
    return tuple(int(v) for v in colors[int(cls) % len(colors)])


def box_thickness(image_shape: Sequence[int]) -> int:
    """Line width of drawn boxes: 2 pixels, more on large images."""
    return max(2, int(image_shape[0]) // 150)


def scaled_box(box: Sequence[float], input_size: tuple[int, int], image_shape: Sequence[int]) -> tuple[int, ...]:
    """A box (x0, y0, x1, y1) in the model's input pixels as whole pixels of an image [h, w], clipped inside it."""
    height, width = image_shape[:2]
    sx, sy = width / input_size[1], height / input_size[0]
    x0, y0, x1, y1 = (float(box[0]) * sx, float(box[1]) * sy, float(box[2]) * sx, float(box[3]) * sy)
    clip = lambda v, top: int(min(max(round(v), 0), top - 1))  # noqa: E731
    return clip(x0, width), clip(y0, height), clip(x1, width), clip(y1, height)


def draw_boxes(image_rgb: np.ndarray, boxes: np.ndarray, classes: Sequence[int], labels: Sequence[str] | None,
               input_size: tuple[int, int], num_classes: int) -> np.ndarray:
    """A copy of the image with each box (input pixels) drawn in its class colour and, when given, its label in a
    filled tag above the box's top-left corner (inside the image)."""
    out = np.ascontiguousarray(image_rgb.copy())
    thickness = box_thickness(out.shape)
    scale = max(0.35, out.shape[0] / 700)
    for k, (box, cls) in enumerate(zip(boxes, classes)):
        x0, y0, x1, y1 = scaled_box(box, input_size, out.shape)
        color = class_color(int(cls), num_classes)
        cv2.rectangle(out, (x0, y0), (x1, y1), color, thickness, lineType=cv2.LINE_8)
        if labels:
            (tw, th), base = cv2.getTextSize(labels[k], cv2.FONT_HERSHEY_SIMPLEX, scale, 1)
            top = y0 - th - base - 2 if y0 - th - base - 2 >= 0 else y0 + thickness
            cv2.rectangle(out, (x0, top), (min(x0 + tw + 2, out.shape[1] - 1), top + th + base + 2), color, -1)
            cv2.putText(out, labels[k], (x0 + 1, top + th + 1), cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255), 1,
                        cv2.LINE_AA)
    return out


def instance_label(explanation, index: int) -> str:
    """"name score" of an instance row, e.g. "car 0.91"."""
    return f"{explanation.class_name(index)} {float(explanation.probabilities[index]):.2f}"


def detections_picture(image_rgb: np.ndarray, explanation, input_size: tuple[int, int], num_classes: int
                       ) -> np.ndarray:
    """The image at its own size with every instance row of the explanation boxed, labelled and scored."""
    rows = range(len(explanation.classes))
    return draw_boxes(image_rgb, explanation.boxes, explanation.classes, [instance_label(explanation, j) for j in rows],
                      input_size, num_classes)


def instance_panel(image_rgb: np.ndarray, explanation, index: int, methods: Sequence[str], input_size: tuple[int, int],
                   num_classes: int, titles: dict[str, str] | None = None, tile_height: int = 224,
                   colormap: str = "jet", alpha: float = 0.5) -> np.ndarray:
    """uint8 RGB panel of instance row `index`: the image | the image with its box | each method's map over the
    image with the box, under a title naming the instance, its class, score and anchor."""
    height, width = tile_size(image_rgb.shape[:2], tile_height)
    image = cv2.resize(image_rgb, (width, height), interpolation=cv2.INTER_AREA
                       if height < image_rgb.shape[0] else cv2.INTER_LINEAR) if image_rgb.shape[:2] != (height, width) \
        else np.ascontiguousarray(image_rgb)
    box, cls = explanation.boxes[index:index + 1], [int(explanation.classes[index])]
    boxed = lambda picture: draw_boxes(picture, box, cls, None, input_size, num_classes)  # noqa: E731
    tiles = [("image", image), ("box", boxed(image))]
    for method in methods:
        tiles.append(((titles or {}).get(method, method),
                      boxed(overlay(image, explanation.maps[method][index], colormap, alpha))))
    title = (f"{explanation.class_name(index)}  score={float(explanation.probabilities[index]):.3f}  "
             f"(anchor {int(explanation.anchors[index])})")
    return tiled_panel(tiles, title, height, width)


__all__ = ["box_thickness", "class_color", "detections_picture", "draw_boxes", "instance_label", "instance_panel",
           "scaled_box"]
