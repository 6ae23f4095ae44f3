"""sensor_msgs/Image <-> numpy without cv_bridge (PyPI has no ROS 2 cv_bridge).

Works on any object with the Image fields (height, width, encoding, is_bigendian, step, data), so it
is importable and testable without rclpy.
"""

from __future__ import annotations

import numpy as np

_CHANNELS = {"rgb8": 3, "bgr8": 3, "mono8": 1, "rgba8": 4, "bgra8": 4}
SUPPORTED_ENCODINGS = tuple(_CHANNELS)


class ImageDecodeError(ValueError):
    """The message does not hold a usable image (reason in the text)."""


def image_msg_to_rgb(msg) -> np.ndarray:
    """Decode an Image message to an HxWx3 uint8 RGB array (a copy), or raise ImageDecodeError."""
    enc = str(msg.encoding).lower()
    if enc not in _CHANNELS:
        raise ImageDecodeError(f"unsupported encoding {msg.encoding!r}; supported: {SUPPORTED_ENCODINGS}")
    h, w, c = int(msg.height), int(msg.width), _CHANNELS[enc]
    if h <= 0 or w <= 0:
        raise ImageDecodeError(f"empty image {w}x{h}")
    step = int(msg.step) if msg.step else w * c
    if step < w * c:
        raise ImageDecodeError(f"step {step} shorter than a row of {w}x{c} bytes")
    try:  # bytes, array.array('B') and memoryview share the buffer protocol: no copy
        buf = np.frombuffer(msg.data, dtype=np.uint8)
    except TypeError:  # a plain list of ints
        buf = np.asarray(msg.data, dtype=np.uint8)
    if buf.size < step * (h - 1) + w * c:
        raise ImageDecodeError(f"truncated data: {buf.size} bytes for {w}x{h} {enc} (step {step})")
    rows = np.lib.stride_tricks.as_strided(buf, shape=(h, w * c), strides=(step, 1))
    img = rows.reshape(h, w, c)
    if enc in ("bgr8", "bgra8"):
        img = img[..., 2::-1]
    elif enc == "rgba8":
        img = img[..., :3]
    elif enc == "mono8":
        img = np.repeat(img, 3, axis=2)
    return np.ascontiguousarray(img)


def fill_image_msg(msg, rgb: np.ndarray, encoding: str = "rgb8"):
    """Fill an Image message from an HxWx3 uint8 RGB array; returns the message."""
    rgb = np.asarray(rgb)
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise ValueError(f"expected HxWx3 uint8 RGB, got {rgb.shape} {rgb.dtype}")
    if encoding == "rgb8":
        arr = rgb
    elif encoding == "bgr8":
        arr = rgb[..., ::-1]
    else:
        raise ValueError(f"can only encode rgb8/bgr8, not {encoding!r}")
    arr = np.ascontiguousarray(arr)
    msg.height, msg.width = int(arr.shape[0]), int(arr.shape[1])
    msg.encoding = encoding
    msg.is_bigendian = 0
    msg.step = int(arr.shape[1] * 3)
    msg.data = arr.tobytes()
    return msg
