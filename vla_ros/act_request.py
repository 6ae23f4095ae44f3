"""The ``/act`` request of ``vla-ros serve`` (OpenVLA's deploy.py protocol): its limits, and its body decoded and
validated field by field, so that every bad request is a :class:`BadRequestError` with the reason (HTTP 400, or
413 for a body over the bound) and never an exception from deep inside the parser or numpy.
"""

from __future__ import annotations

import argparse
from dataclasses import asdict, dataclass, field
from typing import Any

import json_numpy
import numpy as np

from vla_ros.config import load_yaml
from vla_ros.controller import validate_instruction

# Measured: a 512x512x3 uint8 image is 1.05 MB json-numpy encoded (base64, parsed in ~0.05 s) and 4.1 MB as a
# nested JSON list (parsed in 0.3-0.9 s on a loaded 2-core CPU, holding the interpreter). 8 MiB takes a 512 px
# camera and wrist image even as nested lists; the old 64 MiB let a 48 MiB list stall every client for 20 s.
DEFAULT_MAX_BODY_BYTES = 8 * 2**20
DEFAULT_MAX_JSON_DEPTH = 16  # a nested-list image is 4 levels deep in its object
DEFAULT_REQUEST_TIMEOUT_S = 30.0
DEFAULT_BACKLOG = 128  # socketserver's default of 5 refuses a burst of robots connecting at once
MAX_UNNORM_KEY_CHARS = 256


def node_max_instruction_chars() -> int:
    """vla_policy_node's ``max_instruction_chars`` default, read from its one source, config/policy_node.yaml."""
    return int(load_yaml("policy_node.yaml")["vla_policy_node"]["ros__parameters"]["max_instruction_chars"])


@dataclass(frozen=True)
class ServerLimits:
    """What one request may cost the server (``vla-ros serve`` options of the same names)."""

    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES  # larger Content-Lengths are refused (413) before reading
    max_instruction_chars: int = field(default_factory=node_max_instruction_chars)
    max_json_depth: int = DEFAULT_MAX_JSON_DEPTH
    request_timeout_s: float = DEFAULT_REQUEST_TIMEOUT_S  # idle connection, stalled read, or one whole body
    backlog: int = DEFAULT_BACKLOG  # listen() queue of connections not yet accepted

    def __post_init__(self) -> None:
        for name, value in asdict(self).items():
            if not value > 0:
                raise ValueError(f"{name} must be > 0, got {value}")

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> ServerLimits:
        names = ("max_instruction_chars", "max_json_depth", "request_timeout_s", "backlog")
        return cls(max_body_bytes=round(args.max_body_mib * 2**20), **{n: getattr(args, n) for n in names})


class BadRequestError(ValueError):
    """The request cannot be answered (reason in the message, sent back with ``status``, 400 by default)."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


_BRACKET_STEP = np.zeros(256, np.int8)
_BRACKET_STEP[[ord("["), ord("{")]] = 1
_BRACKET_STEP[[ord("]"), ord("}")]] = -1


def json_depth(text: bytes) -> int:
    """The deepest nesting of arrays/objects in a JSON text, found before parsing it (brackets in strings do not
    count). Vectorised, a few passes over the bytes: the bound is checked before the parser spends anything."""
    a = np.frombuffer(text, np.uint8)
    quotes = np.flatnonzero(a == ord('"'))
    outside = np.ones(a.size, bool)
    if quotes.size:
        backslash = a == ord("\\")
        after_backslash = quotes[(quotes > 0) & backslash[quotes - 1]]
        if after_backslash.size:  # escaped iff an odd run of backslashes precedes it
            edges = np.diff(backslash.view(np.int8), prepend=0, append=0)
            starts, ends = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)
            run = after_backslash - starts[np.searchsorted(ends, after_backslash)]
            quotes = np.setdiff1d(quotes, after_backslash[run % 2 == 1], assume_unique=True)
        toggles = np.zeros(a.size, np.uint8)
        toggles[quotes] = 1
        outside = np.bitwise_xor.accumulate(toggles) == 0
    steps = _BRACKET_STEP[a]
    at = np.flatnonzero((steps != 0) & outside)
    return int(np.cumsum(steps[at], dtype=np.int64).max()) if at.size else 0


def _loads(text: bytes, limits: ServerLimits) -> Any:
    depth = json_depth(text)
    if depth > limits.max_json_depth:
        raise BadRequestError(f"JSON nested {depth} levels deep; at most {limits.max_json_depth} are accepted")
    try:
        return json_numpy.loads(text.decode("utf-8", "surrogatepass"))
    # json-numpy decodes arrays while parsing: bad base64, dtype, shape or a missing key fail in there
    except (UnicodeDecodeError, ValueError, TypeError, KeyError, IndexError, RecursionError) as exc:
        raise BadRequestError(f"body is not JSON (json-numpy): {type(exc).__name__}: {exc}"[:500]) from exc


def _image(value: Any, field: str) -> np.ndarray:
    try:
        image = np.asarray(value)
    except (ValueError, TypeError) as exc:  # ragged nested lists
        raise BadRequestError(f"{field} is not a rectangular HxWx3 array: {exc}"[:300]) from exc
    if image.ndim != 3 or image.shape[2] != 3 or min(image.shape[:2]) < 1:
        raise BadRequestError(f"{field} must be HxWx3, got shape {image.shape}")
    if image.dtype != np.uint8:
        if image.dtype.kind not in "iu" or image.min() < 0 or image.max() > 255:
            raise BadRequestError(f"{field} must be uint8 RGB, got {image.dtype}")
        image = image.astype(np.uint8)
    return image


def _proprio(value: Any) -> np.ndarray:
    if isinstance(value, (bool, str, dict)):
        raise BadRequestError(f"proprio must be a flat list of numbers, got {type(value).__name__}")
    try:
        proprio = np.asarray(value)
    except (ValueError, TypeError) as exc:
        raise BadRequestError(f"proprio must be a flat list of numbers (not ragged): {exc}"[:300]) from exc
    if proprio.dtype.kind not in "iuf":
        raise BadRequestError(f"proprio must be a flat list of numbers, got {proprio.dtype} values")
    proprio = proprio.astype(np.float64).reshape(-1)
    if not np.all(np.isfinite(proprio)):
        raise BadRequestError("proprio has NaN/inf values")
    return proprio


def parse_act_request(body: bytes, limits: ServerLimits | None = None) -> tuple[np.ndarray, str, str | None, dict]:
    """Decode and validate one ``/act`` body -> (image, instruction as the policy gets it, unnorm_key, further
    inputs as the keyword arguments of ``Policy.act``: ``extra_images``, ``proprio``); BadRequestError if not."""
    limits = limits or ServerLimits()
    payload = _loads(body, limits)
    if isinstance(payload, dict) and "encoded" in payload:  # deploy.py's double encoding
        if not isinstance(payload["encoded"], str):
            raise BadRequestError("'encoded' (deploy.py's double encoding) must be a string holding the JSON body")
        payload = _loads(payload["encoded"].encode("utf-8", "surrogatepass"), limits)
    if not isinstance(payload, dict) or "image" not in payload or "instruction" not in payload:
        raise BadRequestError("body must be an object with 'image' and 'instruction'")
    instruction = payload["instruction"]
    if not isinstance(instruction, str) or not instruction.strip():
        raise BadRequestError("instruction must be a non-empty string")
    try:  # the node's rules (controller.validate_instruction) and, by default, its length bound
        instruction = validate_instruction(instruction, limits.max_instruction_chars)
    except ValueError as exc:
        raise BadRequestError(f"instruction rejected: {exc}") from exc
    image = _image(payload["image"], "image")
    key = payload.get("unnorm_key")
    if key is not None and not (isinstance(key, str) and len(key) <= MAX_UNNORM_KEY_CHARS):
        raise BadRequestError(f"unnorm_key must be a string of at most {MAX_UNNORM_KEY_CHARS} characters")
    inputs: dict = {}
    extra = {k[: -len("_image")]: _image(v, k) for k, v in payload.items() if k.endswith("_image")}
    if extra:
        inputs["extra_images"] = extra
    if payload.get("proprio") is not None:
        inputs["proprio"] = _proprio(payload["proprio"])
    return image, instruction, key, inputs
