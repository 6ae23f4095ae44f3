"""``serve``: any backend behind OpenVLA's ``deploy.py`` HTTP protocol, so one GPU host can serve robots.

``POST /act`` with JSON ``{"image": <json-numpy HxWx3 uint8>, "instruction": str, "unnorm_key"?: str}`` (or
deploy.py's double-encoded ``{"encoded": "<json>"}``) answers the un-normalised action as a json-numpy array, with
the policy's done flag in the ``X-VLA-Done`` header. Models with further inputs (``extra_images`` and
``proprio_layout`` in ``/metadata``) also take ``"<camera>_image"`` (e.g. ``"wrist_image"``) and ``"proprio"``
fields (json-numpy arrays); OpenVLA's clients never send them and need not. ``GET /metadata`` returns the
checkpoint's conventions and ``GET /health`` the request counters.

Every field is checked: a bad request gets status 400 with the reason (413 for a body over ``--max-body-mib``,
refused from its Content-Length before it is read; 408 for a body slower than ``--request-timeout-s``) and is
counted; idle or stalled connections are closed after ``--request-timeout-s``. Instructions follow
vla_policy_node's rules and length bound. Each connection has its own thread that reads and parses its request,
so a client slow to send holds up nobody; only the model calls are serialised (a lock), so a single GPU is never
shared by two forward passes. Parsing holds the interpreter, though: others wait while a body is parsed,
~0.6 s for an 8 MiB nested-list image on a loaded 2-core CPU (json-numpy's base64 parses ~20x faster), which is
what ``--max-body-mib`` bounds.

    vla-ros serve --backend native --path ckpt/ --host 0.0.0.0 --port 8000 --quantization 4bit
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import signal
import sys
import threading
import time
from dataclasses import asdict
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import json_numpy
import numpy as np

from vla_ros.act_request import (
    DEFAULT_BACKLOG,
    DEFAULT_MAX_BODY_BYTES,
    DEFAULT_MAX_JSON_DEPTH,
    DEFAULT_REQUEST_TIMEOUT_S,
    BadRequestError,
    ServerLimits,
    node_max_instruction_chars,
    parse_act_request,
)
from vla_ros.backends import BACKENDS, load_policy
from vla_ros.controller import RejectionLog
from vla_ros.policy import Policy

log = logging.getLogger("vla_ros.serve")


class PolicyServer(ThreadingHTTPServer):
    """One thread per connection reads and parses its request; only the model call is serialised (``lock``)."""

    daemon_threads = True

    def __init__(self, policy: Policy, host: str = "127.0.0.1", port: int = 8000, limits: ServerLimits | None = None):
        self.policy = policy
        self.limits = limits or ServerLimits()
        self.request_queue_size = self.limits.backlog  # read by server_activate() in super().__init__
        self.lock = threading.Lock()
        self.counters = {"served": 0, "rejected": 0, "failed": 0}
        self._counters_lock = threading.Lock()
        self.rejections = RejectionLog(log.warning)  # one line per reason and burst, not per request
        super().__init__((host, port), _Handler)

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}"

    def handle_error(self, request, client_address) -> None:
        if isinstance(sys.exc_info()[1], (ConnectionError, TimeoutError)):  # a client that left or stalled
            log.debug("connection from %s ended: %s", client_address, sys.exc_info()[1])
        else:
            log.exception("error serving %s", client_address)

    def count(self, name: str, rejection: str = "") -> None:
        with self._counters_lock:
            self.counters[name] += 1
            if rejection:
                self.rejections.reject("request", rejection)

    def health(self) -> dict[str, Any]:
        with self._counters_lock:
            return {"ok": True, **self.counters}

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

    def setup(self) -> None:
        self.timeout = self.server.limits.request_timeout_s  # an idle or stalled connection is closed
        super().setup()

    def log_message(self, fmt: str, *args) -> None:  # route through logging, not stderr
        log.debug("%s " + fmt, self.address_string(), *args)

    def _send(self, status: int, body: str, headers: dict[str, str] | None = None, close: bool = False) -> None:
        data = body.encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json" if status == 200 else "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        if close:  # a body left unread would be taken for the next request
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        self.wfile.write(data)

    def _refuse(self, exc: BadRequestError, close: bool) -> None:
        self.server.count("rejected", str(exc))
        self._send(exc.status, str(exc), close=close)

    def _content_length(self) -> int:
        """The body's length from the headers, or BadRequestError (413 over the bound: refused unread)."""
        if self.headers.get("Transfer-Encoding"):
            raise BadRequestError("Transfer-Encoding is not supported: send the body with a Content-Length")
        values = {v.strip() for v in self.headers.get_all("Content-Length") or []}
        if len(values) != 1:
            raise BadRequestError(f"need one Content-Length header, got {sorted(values)[:3]}")
        text = values.pop()
        if not (text.isascii() and text.isdigit()):
            raise BadRequestError(f"Content-Length must be a decimal byte count, got {text[:40]!r}")
        n, bound = int(text), self.server.limits.max_body_bytes
        if n == 0:
            raise BadRequestError(f"Content-Length must be 1..{bound}, got 0 (an empty body)")
        if n > bound:
            raise BadRequestError(f"body of {n} bytes (Content-Length) exceeds this server's bound of {bound} bytes "
                                  "(vla-ros serve --max-body-mib)", status=413)
        return n

    def _read_body(self, n: int) -> bytes:
        """``n`` bytes within ``request_timeout_s`` for the whole body, so a client dripping bytes is cut off too."""
        deadline = time.monotonic() + self.server.limits.request_timeout_s
        body = bytearray()
        while len(body) < n:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"{len(body)} of {n} body bytes within {self.server.limits.request_timeout_s} s")
            self.connection.settimeout(left)
            chunk = self.rfile.read1(min(n - len(body), 2**20))
            if not chunk:
                raise ConnectionError(f"the client closed after {len(body)} of {n} body bytes")
            body += chunk
        self.connection.settimeout(self.timeout)
        return bytes(body)

    def handle_expect_100(self) -> bool:
        """Refuse a bad or too large body before the client sends it (curl asks first for bodies over 1 MiB)."""
        if self.command == "POST":
            try:
                self._content_length()
            except BadRequestError as exc:
                self._refuse(exc, close=True)
                return False
        return super().handle_expect_100()

    def do_GET(self) -> None:
        if self.path == "/metadata":
            self._send(200, json.dumps(self.server.metadata()))
        elif self.path == "/health":
            self._send(200, json.dumps(self.server.health()))
        else:
            self._send(404, f"unknown path {self.path}; use POST /act, GET /metadata, GET /health")

    def do_POST(self) -> None:
        if self.path.rstrip("/") != "/act":
            self._send(404, f"unknown path {self.path}; use POST /act", close=True)
            return
        try:
            body = self._read_body(self._content_length())
        except BadRequestError as exc:
            self._refuse(exc, close=True)
            return
        except (TimeoutError, ConnectionError) as exc:  # stalled or gone: free the thread, tell a stalled one
            self.server.count("rejected", f"request timed out or cut: {exc}")
            self.close_connection = True
            with contextlib.suppress(OSError):
                self._send(408, f"request timed out: {exc}", close=True)
            return
        try:
            image, instruction, key, inputs = parse_act_request(body, self.server.limits)
            action, done = self.server.act(image, instruction, key, inputs)
        except BadRequestError as exc:
            self._refuse(exc, close=False)
            return
        except Exception as exc:  # the model failed: tell the client, keep serving
            self.server.count("failed")
            log.exception("inference failed")
            self._send(500, f"inference failed: {exc}")
            return
        self.server.count("served")
        self._send(200, json_numpy.dumps(action), {"X-VLA-Done": "1" if done else "0"})


def _parse_value(v: str) -> Any:
    try:
        return json.loads(v)
    except ValueError:
        return v


def build_parser() -> argparse.ArgumentParser:
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
    ap.add_argument("--max-body-mib", type=float, default=DEFAULT_MAX_BODY_BYTES / 2**20,
                    help="larger request bodies are refused before reading (a 512 px image: 1 MiB json-numpy, "
                         "4 MiB as nested lists)")
    ap.add_argument("--max-instruction-chars", type=int, default=node_max_instruction_chars(),
                    help="longer instructions are refused (default: vla_policy_node's, config/policy_node.yaml)")
    ap.add_argument("--max-json-depth", type=int, default=DEFAULT_MAX_JSON_DEPTH, help="deepest JSON nesting")
    ap.add_argument("--request-timeout-s", type=float, default=DEFAULT_REQUEST_TIMEOUT_S,
                    help="an idle or stalled connection, or a body slower than this, is closed")
    ap.add_argument("--backlog", type=int, default=DEFAULT_BACKLOG, help="listen queue of pending connections")
    return ap


def main(argv: list[str] | None = None) -> int:
    ap = build_parser()
    args = ap.parse_args(argv)
    try:
        limits = ServerLimits.from_args(args)
    except ValueError as exc:
        ap.error(str(exc))
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
    server = PolicyServer(policy, args.host, args.port, limits)
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
