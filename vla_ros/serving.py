"""``serve``: any backend behind OpenVLA's ``deploy.py`` HTTP protocol, so one GPU host can serve robots.

``POST /act`` with JSON ``{"image": <json-numpy HxWx3 uint8>, "instruction": str, "unnorm_key"?: str}`` (or
deploy.py's double-encoded ``{"encoded": "<json>"}``) answers the un-normalised action as a json-numpy array, with
the policy's done flag in the ``X-VLA-Done`` header. Models with further inputs (``extra_images`` and
``proprio_layout`` in ``/metadata``) also take ``"<camera>_image"`` (e.g. ``"wrist_image"``) and ``"proprio"``
fields (json-numpy arrays); OpenVLA's clients never send them and need not. ``GET /metadata`` returns the
checkpoint's conventions and ``GET /health`` the request counters. Bad requests get status 400 with the reason,
and are counted. Requests are served one at a time on the model (a lock), so a single GPU is never shared by two
forward passes.

    vla-ros serve --backend native --path ckpt/ --host 0.0.0.0 --port 8000 --quantization 4bit
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import threading
from dataclasses import asdict
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import json_numpy
import numpy as np

from vla_ros.backends import BACKENDS, load_policy
from vla_ros.policy import Policy

log = logging.getLogger("vla_ros.serve")
MAX_BODY_BYTES = 64 * 2**20  # a 2k x 2k RGB image base64-encoded is ~16 MB


class BadRequestError(ValueError):
    """The request cannot be answered (reason in the message, sent back with status 400)."""


def _image(value: Any, field: str) -> np.ndarray:
    image = np.asarray(value)
    if image.ndim != 3 or image.shape[2] != 3 or min(image.shape[:2]) < 1:
        raise BadRequestError(f"{field} must be HxWx3, got shape {image.shape}")
    if image.dtype != np.uint8:
        if not np.issubdtype(image.dtype, np.integer) or image.min() < 0 or image.max() > 255:
            raise BadRequestError(f"{field} must be uint8 RGB, got {image.dtype}")
        image = image.astype(np.uint8)
    return image


def parse_act_request(body: bytes) -> tuple[np.ndarray, str, str | None, dict]:
    """Decode and validate one ``/act`` body -> (image, instruction, unnorm_key, further inputs as the
    keyword arguments of ``Policy.act``: ``extra_images``, ``proprio``)."""
    try:
        payload = json_numpy.loads(body.decode())
        if isinstance(payload, dict) and "encoded" in payload:  # deploy.py's double encoding
            payload = json_numpy.loads(payload["encoded"])
    except (UnicodeDecodeError, ValueError, TypeError) as exc:
        raise BadRequestError(f"body is not JSON (json-numpy): {exc}") from exc
    if not isinstance(payload, dict) or "image" not in payload or "instruction" not in payload:
        raise BadRequestError("body must be an object with 'image' and 'instruction'")
    image = _image(payload["image"], "image")
    instruction = payload["instruction"]
    if not isinstance(instruction, str) or not instruction.strip():
        raise BadRequestError("instruction must be a non-empty string")
    key = payload.get("unnorm_key")
    if key is not None and not isinstance(key, str):
        raise BadRequestError("unnorm_key must be a string")
    inputs: dict = {}
    extra = {k[: -len("_image")]: _image(v, k) for k, v in payload.items() if k.endswith("_image")}
    if extra:
        inputs["extra_images"] = extra
    if payload.get("proprio") is not None:
        proprio = np.asarray(payload["proprio"], dtype=np.float64).reshape(-1)
        if not np.all(np.isfinite(proprio)):
            raise BadRequestError("proprio has NaN/inf values")
        inputs["proprio"] = proprio
    return image, instruction, key, inputs


class PolicyServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, policy: Policy, host: str = "127.0.0.1", port: int = 8000):
        self.policy = policy
        self.lock = threading.Lock()
        self.counters = {"served": 0, "rejected": 0, "failed": 0}
        super().__init__((host, port), _Handler)

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}"

    def metadata(self) -> dict[str, Any]:
        m = asdict(self.policy.metadata)
        m.update({k: v for k, v in m.pop("extra", {}).items() if k not in m})
        return m

    def act(self, image: np.ndarray, instruction: str, unnorm_key: str | None, inputs: dict | None = None,
            ) -> tuple[np.ndarray, bool]:
        with self.lock:
            current = self.policy.metadata.extra.get("unnorm_key")
            if unnorm_key is not None and unnorm_key != current:
                setter = getattr(self.policy, "set_unnorm_key", None)
                if setter is None:
                    raise BadRequestError(f"this server un-normalises with {current!r}; cannot switch to "
                                          f"{unnorm_key!r}")
                try:
                    setter(unnorm_key)
                except (KeyError, ValueError) as exc:
                    raise BadRequestError(str(exc)) from exc
            try:
                out = self.policy.act(image, instruction, **(inputs or {}))
            except ValueError as exc:  # a missing/ill-shaped input of this model: the client's mistake
                raise BadRequestError(str(exc)) from exc
        return np.asarray(out.action, dtype=np.float64), bool(out.done)


class _Handler(BaseHTTPRequestHandler):
    server: PolicyServer
    protocol_version = "HTTP/1.1"

    def log_message(self, fmt: str, *args) -> None:  # route through logging, not stderr
        log.debug("%s " + fmt, self.address_string(), *args)

    def _send(self, status: int, body: str, headers: dict[str, str] | None = None) -> None:
        data = body.encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json" if status == 200 else "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        if self.path == "/metadata":
            self._send(200, json.dumps(self.server.metadata()))
        elif self.path == "/health":
            self._send(200, json.dumps({"ok": True, **self.server.counters}))
        else:
            self._send(404, f"unknown path {self.path}; use POST /act, GET /metadata, GET /health")

    def do_POST(self) -> None:
        if self.path.rstrip("/") != "/act":
            self._send(404, f"unknown path {self.path}; use POST /act")
            return
        try:
            n = int(self.headers.get("Content-Length", "0"))
            if n <= 0 or n > MAX_BODY_BYTES:
                raise BadRequestError(f"Content-Length must be 1..{MAX_BODY_BYTES}, got {n}")
            image, instruction, key, inputs = parse_act_request(self.rfile.read(n))
            action, done = self.server.act(image, instruction, key, inputs)
        except BadRequestError as exc:
            self.server.counters["rejected"] += 1
            log.warning("rejected request (%d so far): %s", self.server.counters["rejected"], exc)
            self._send(400, str(exc))
            return
        except Exception as exc:  # the model failed: tell the client, keep serving
            self.server.counters["failed"] += 1
            log.exception("inference failed")
            self._send(500, f"inference failed: {exc}")
            return
        self.server.counters["served"] += 1
        self._send(200, json_numpy.dumps(action), {"X-VLA-Done": "1" if done else "0"})


def _parse_value(v: str) -> Any:
    try:
        return json.loads(v)
    except ValueError:
        return v


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="vla-ros serve", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backend", default="native", choices=sorted(BACKENDS))
    ap.add_argument("--path", help="checkpoint directory, preset:<name>, or (remote) a URL")
    ap.add_argument("--host", default="127.0.0.1", help="0.0.0.0 to serve other machines")
    ap.add_argument("--port", type=int, default=8000, help="0 picks a free port")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--dtype")
    ap.add_argument("--quantization", default="none", choices=["none", "8bit", "4bit"])
    ap.add_argument("--adapter", help="peft LoRA adapter directory")
    ap.add_argument("--merge-adapter", action="store_true")
    ap.add_argument("--unnorm-key")
    ap.add_argument("--center-crop", action="store_true", default=None)
    ap.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                    help="extra backend option (value parsed as JSON when possible)")
    args = ap.parse_args(argv)
    # Ctrl-C stops the server even when it was started with SIGINT ignored (a background job of a
    # non-interactive shell inherits SIG_IGN, and Python then installs no KeyboardInterrupt handler)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    options: dict[str, Any] = {}
    if args.backend != "debug":
        options.update(device=args.device, dtype=args.dtype, quantization=args.quantization, adapter=args.adapter,
                       merge_adapter=args.merge_adapter, unnorm_key=args.unnorm_key, center_crop=args.center_crop)
    for item in args.option:
        k, sep, v = item.partition("=")
        if not sep:
            ap.error(f"--option needs KEY=VALUE, got {item!r}")
        options[k] = _parse_value(v)
    policy = load_policy(args.backend, args.path, **{k: v for k, v in options.items() if v is not None})
    server = PolicyServer(policy, args.host, args.port)
    print(f"serving {policy.metadata.model_id} on {server.url} (POST /act)", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
        policy.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
