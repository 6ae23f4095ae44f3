"""``remote`` backend: an HTTP client for OpenVLA's ``deploy.py`` wire protocol.

``POST <url>/act`` with a JSON body ``{"image": HxWx3 uint8, "instruction": str, "unnorm_key": str}`` where numpy
arrays are encoded as json-numpy does (``{"__numpy__": base64, "dtype", "shape"}``); the answer is the action
(a json-numpy array, or a plain list). ``vla_ros serve`` speaks the same protocol and also answers ``GET /metadata``
(the checkpoint's conventions) and sends the done flag in an ``X-VLA-Done`` header; both are optional extras, so
this client also works against OpenVLA's own server. Needs no torch.
"""

from __future__ import annotations

import json
import logging
import urllib.error
import urllib.request

import json_numpy
import numpy as np

from vla_ros.conventions import ActionSpace
from vla_ros.policy import Policy, PolicyMetadata, PolicyOutput

log = logging.getLogger(__name__)


class RemotePolicyError(RuntimeError):
    """The server refused the request or could not be reached (reason in the message)."""


class RemotePolicy(Policy):
    def __init__(self, url: str, unnorm_key: str | None = None, timeout: float = 30.0, **meta_overrides):
        if not url.startswith(("http://", "https://")):
            url = "http://" + url
        self.url = url.rstrip("/")
        self.unnorm_key = unnorm_key
        self.timeout = float(timeout)
        self.metadata = self._fetch_metadata(meta_overrides)

    def _fetch_metadata(self, overrides: dict) -> PolicyMetadata:
        info: dict = {}
        try:
            with urllib.request.urlopen(self.url + "/metadata", timeout=self.timeout) as r:
                info = json.loads(r.read())
        except (urllib.error.URLError, OSError, ValueError) as exc:  # OpenVLA's server has no /metadata
            log.info("no /metadata at %s (%s): using defaults and options", self.url, exc)
        info.update({k: v for k, v in overrides.items() if v is not None})
        if self.unnorm_key is None:
            self.unnorm_key = info.get("unnorm_key")
        space = info.get("action_space")
        return PolicyMetadata(
            model_id=str(info.get("model_id", self.url)),
            action_space=ActionSpace.from_dict(space) if isinstance(space, dict) else PolicyMetadata("x").action_space,
            gripper_convention=str(info.get("gripper_convention", "libero_sign")),
            image_flip=str(info.get("image_flip", "rot180")),
            image_size=int(info.get("image_size", 224)),
            action_dim=int(info.get("action_dim", 7)),
            predicts_done=bool(info.get("predicts_done", False)),
            extra_images=tuple(info.get("extra_images") or ()),
            proprio_layout=str(info.get("proprio_layout") or ""),
            extra={"backend": "remote", "url": self.url, "unnorm_key": self.unnorm_key},
        )

    def _post(self, image: np.ndarray, instruction: str, extra_images: dict[str, np.ndarray] | None = None,
              proprio: np.ndarray | None = None) -> PolicyOutput:
        body = {"image": np.ascontiguousarray(image, dtype=np.uint8), "instruction": instruction}
        for name, img in (extra_images or {}).items():  # only models that need them get these fields
            body[f"{name}_image"] = np.ascontiguousarray(img, dtype=np.uint8)
        if proprio is not None:
            body["proprio"] = np.asarray(proprio, dtype=np.float64)
        if self.unnorm_key is not None:
            body["unnorm_key"] = self.unnorm_key
        req = urllib.request.Request(self.url + "/act", data=json_numpy.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"}, method="POST")
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as r:
                payload, done = r.read(), r.headers.get("X-VLA-Done", "0") == "1"
        except urllib.error.HTTPError as exc:
            raise RemotePolicyError(f"{self.url}/act answered {exc.code}: {exc.read().decode(errors='replace')}"
                                    ) from exc
        except (urllib.error.URLError, OSError) as exc:
            raise RemotePolicyError(f"cannot reach {self.url}/act: {exc}") from exc
        action = json_numpy.loads(payload.decode())
        if isinstance(action, str) and action != "error":  # deploy.py's "double-encoded" answer
            action = json_numpy.loads(action)
        if isinstance(action, str):  # deploy.py answers the string "error" (status 200) when inference failed
            raise RemotePolicyError(f"{self.url}/act reported an error: {action!r}")
        if isinstance(action, dict) and "action" in action:
            action = action["action"]
        a = np.asarray(action, dtype=np.float64).reshape(-1)
        if a.shape != (self.metadata.action_dim,):
            raise RemotePolicyError(f"server returned {a.shape[0]} values, expected {self.metadata.action_dim}")
        return PolicyOutput(a, done=done)

    def act_batch(self, images: list[np.ndarray], instructions: list[str], *, extra_images=None,
                  proprios=None) -> list[PolicyOutput]:
        if len(images) != len(instructions) or not images:
            raise ValueError(f"need as many images as instructions (>0), got {len(images)} and {len(instructions)}")
        return [self._post(img, text, {k: v[i] for k, v in (extra_images or {}).items()},
                           None if proprios is None else proprios[i])
                for i, (img, text) in enumerate(zip(images, instructions, strict=True))]


def load(path: str | None = None, unnorm_key: str | None = None, timeout: float = 30.0, url: str | None = None,
         **options) -> RemotePolicy:
    """``path`` (or ``url``) is the server address, e.g. ``http://gpu-host:8000``."""
    target = url or path
    if not target:
        raise ValueError("the remote backend needs the server URL as path (e.g. http://host:8000)")
    for k in ("device", "dtype", "quantization", "adapter", "merge_adapter", "center_crop", "fast", "compile",
              "threads"):
        options.pop(k, None)  # server-side settings: meaningless for the client
    return RemotePolicy(target, unnorm_key=unnorm_key, timeout=timeout, **options)
