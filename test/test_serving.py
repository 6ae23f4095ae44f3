"""`vla-ros serve` at its edges (issue #20): every bad field a 400 with the reason, bounded bodies, instructions
and nesting, stalled connections timed out, and one slow client never holding up the others.

The server runs in-process on 127.0.0.1 with an ephemeral port and the debug backend; every socket has a
timeout, so a server that does not answer fails the test instead of hanging it. The model-backed protocol
tests (same action through every backend, unnorm_key switching) live in test_core_backends.py.
"""

from __future__ import annotations

import contextlib
import json
import socket
import threading
from collections.abc import Iterator

import json_numpy
import numpy as np
import pytest

from vla_ros.backends import load_policy
from vla_ros.config import load_yaml
from vla_ros.serving import PolicyServer, ServerLimits, build_parser

IMAGE = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
SOCKET_TIMEOUT_S = 20.0  # far above any answer here; only a server that never answers reaches it
LIMITS = ServerLimits(max_body_bytes=1 << 20, request_timeout_s=1.0)


@contextlib.contextmanager
def _serving(limits: ServerLimits) -> Iterator[PolicyServer]:
    server = PolicyServer(load_policy("debug"), "127.0.0.1", 0, limits=limits)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(SOCKET_TIMEOUT_S)


@pytest.fixture
def server() -> Iterator[PolicyServer]:
    with _serving(LIMITS) as running:
        yield running


def _connect(server: PolicyServer) -> socket.socket:
    return socket.create_connection(server.server_address[:2], timeout=SOCKET_TIMEOUT_S)


def _read_response(sock: socket.socket) -> tuple[int, str]:
    """(status, body) of one response; status 0 when the server closed without answering."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            return 0, data.decode(errors="replace")
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    status = int(lines[0].split()[1])
    if status == 100:  # "100 Continue": the real answer follows
        return _read_response_after(sock, rest)
    length = next((int(v) for k, _, v in (ln.partition(":") for ln in lines[1:]) if k.lower() == "content-length"),
                  0)
    while len(rest) < length:
        chunk = sock.recv(65536)
        if not chunk:
            break
        rest += chunk
    return status, rest[:length].decode(errors="replace")


def _read_response_after(sock: socket.socket, pending: bytes) -> tuple[int, str]:
    class _Prefixed:
        def __init__(self) -> None:
            self.pending = pending

        def recv(self, n: int) -> bytes:
            if self.pending:
                out, self.pending = self.pending, b""
                return out
            return sock.recv(n)

    return _read_response(_Prefixed())  # type: ignore[arg-type]


def _request(body: bytes, content_length: str | None = None, extra_headers: str = "") -> bytes:
    length = str(len(body)) if content_length is None else content_length
    return (f"POST /act HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            f"Content-Length: {length}\r\n{extra_headers}\r\n").encode() + body


def _post(server: PolicyServer, body: bytes, content_length: str | None = None) -> tuple[int, str]:
    with _connect(server) as sock:
        sock.sendall(_request(body, content_length))
        return _read_response(sock)


def _good(**changes) -> bytes:
    return json_numpy.dumps({"image": IMAGE, "instruction": "put the bowl on the plate", **changes}).encode()


def test_a_valid_request_is_answered(server):
    status, text = _post(server, _good())
    assert status == 200 and np.asarray(json_numpy.loads(text)).shape == (7,)


@pytest.mark.parametrize(("length", "reason"), [
    ("abc", "Content-Length"), ("-5", "Content-Length"), ("+5", "Content-Length"), ("1_0", "Content-Length"),
    ("0", "Content-Length"), ("", "Content-Length"),
])
def test_bad_content_length_is_a_400(server, length, reason):
    status, text = _post(server, b"{}", content_length=length)
    assert status == 400 and reason in text, text


def test_a_body_over_the_bound_is_refused_before_it_is_sent(server):
    """Content-Length over the bound: answered at once from the headers, the body never read."""
    with _connect(server) as sock:
        sock.sendall(_request(b"", content_length=str(LIMITS.max_body_bytes + 1)))
        status, text = _read_response(sock)  # without sending a byte of the body
    assert status == 413 and str(LIMITS.max_body_bytes) in text
    with _connect(server) as sock:  # curl's "Expect: 100-continue" gets the refusal instead of "100 Continue"
        sock.sendall(_request(b"", content_length=str(48 << 20), extra_headers="Expect: 100-continue\r\n"))
        status, text = _read_response(sock)
    assert status == 413
    assert server.counters["rejected"] == 2


def _nested(depth: int) -> str:
    return "[" * depth + "1" + "]" * depth


@pytest.mark.parametrize(("payload", "reason"), [
    ('{"image": ' + _nested(5000) + ', "instruction": "go"}', "nested"),
    ('{"image": [], "instruction": "go", "x": ' + _nested(LIMITS.max_json_depth) + "}", "nested"),
    ('{"encoded": ' + json.dumps('{"image": ' + _nested(5000) + ', "instruction": "go"}') + "}", "nested"),
    ('{"encoded": 5}', "encoded"),
    ('{"image": [[[1, 2, 3]], [[1, 2]]], "instruction": "go"}', "image"),  # ragged
    ('{"image": [[["a", "b", "c"]]], "instruction": "go"}', "image"),
    ('{"image": {"__numpy__": "AAAA", "dtype": "|u1", "shape": [7, 7, 3]}, "instruction": "go"}', "json-numpy"),
    ('{"image": {"__numpy__": "", "dtype": "|u1", "shape": []}, "instruction": "go"}', "json-numpy"),
    ('{"image": {"__numpy__": "AAAA"}, "instruction": "go"}', "json-numpy"),
    ('{"image": {"__numpy__": "AAAA", "dtype": "|O", "shape": [1]}, "instruction": "go"}', "json-numpy"),
    ('{"image": 7, "instruction": "go"}', "image"),
    ('[1, 2]', "object"),
    ('{"image": [[[1, 2, 3]]], "instruction": 5}', "instruction"),
])
def test_malformed_fields_are_a_400_with_the_reason(server, payload, reason):
    status, text = _post(server, payload.encode())
    assert status == 400 and reason in text, text


def test_proprio_and_camera_fields_are_validated(server):
    for proprio, reason in [([[1.0, 2.0], [3.0]], "proprio"), (["a", "b"], "proprio"), ([1.0, None], "proprio"),
                            ([float("nan")], "NaN"), ({"x": 1}, "proprio"), (True, "proprio")]:
        status, text = _post(server, _good(proprio=proprio))
        assert status == 400 and reason in text, (proprio, text)
    status, text = _post(server, _good(wrist_image=[[1, 2, 3]]))
    assert status == 400 and "wrist_image" in text
    for key in (5, "k" * 1000):
        status, text = _post(server, _good(unnorm_key=key))
        assert status == 400 and "unnorm_key" in text


def test_instruction_rules_are_the_nodes():
    """Same validation and the same default bound as vla_policy_node (config/policy_node.yaml)."""
    node_default = load_yaml("policy_node.yaml")["vla_policy_node"]["ros__parameters"]["max_instruction_chars"]
    assert ServerLimits().max_instruction_chars == node_default
    assert build_parser().parse_args([]).max_instruction_chars == node_default


@pytest.mark.parametrize(("instruction", "reason"), [
    ("x" * 1_000_000, "too_long"), ("x" * (LIMITS.max_instruction_chars + 1), "too_long"),
    ("open\x00door", "nul"), ("pick \u202eit", "bidi_control"), ("\u200b\u200b", "zero_width_only"),
    ("go\x85", "control_character"), ("", "non-empty"), ("   ", "non-empty"),
])
def test_bad_instructions_are_a_400_with_the_reason(instruction, reason):
    limits = ServerLimits(max_body_bytes=4 << 20, request_timeout_s=1.0)
    with _serving(limits) as server:
        status, text = _post(server, _good(instruction=instruction))
        assert status == 400 and reason in text, text[:200]
        # a lone surrogate (JSON "\ud800") is not valid UTF-8
        body = _good().replace(b'"put the bowl on the plate"', b'"put \\ud800 down"')
        status, text = _post(server, body)
        assert status == 400 and "invalid_utf8" in text, text


def test_stalled_connections_are_closed(server):
    with _connect(server) as idle:  # connects and sends nothing
        assert idle.recv(1024) == b""  # closed by the server after request_timeout_s, not by our timeout
    with _connect(server) as stalled:  # half a body, then silence
        stalled.sendall(_request(b'{"image": ', content_length="1000"))
        status, text = _read_response(stalled)
    assert status == 408 and "timed out" in text


def test_a_slow_client_does_not_hold_up_others():
    """A client stuck in its body does not delay another client's request: it is answered meanwhile."""
    with _serving(ServerLimits(max_body_bytes=1 << 20, request_timeout_s=SOCKET_TIMEOUT_S)) as server:
        body = _good()
        with _connect(server) as slow:
            slow.sendall(_request(body[:100], content_length=str(len(body))))
            status, _ = _post(server, _good())
            assert status == 200  # answered while `slow` is still inside its body
            slow.sendall(body[100:])
            status, _ = _read_response(slow)
        assert status == 200


def test_many_concurrent_clients_are_all_answered_and_counted():
    with _serving(ServerLimits(max_body_bytes=1 << 20, request_timeout_s=5.0)) as server:
        results: list[int] = []
        lock = threading.Lock()

        def client(server: PolicyServer = server, results: list[int] = results, lock=lock) -> None:
            status, _ = _post(server, _good())
            with lock:
                results.append(status)

        threads = [threading.Thread(target=client) for _ in range(40)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(SOCKET_TIMEOUT_S)
        assert results == [200] * 40
        assert server.counters["served"] == 40
        assert server.request_queue_size >= 128  # a burst of connects is queued, not refused


def test_serve_options_reach_the_limits():
    args = build_parser().parse_args(["--backend", "debug", "--max-body-mib", "2", "--max-instruction-chars", "64",
                                      "--max-json-depth", "6", "--request-timeout-s", "3", "--backlog", "256"])
    limits = ServerLimits.from_args(args)
    assert limits == ServerLimits(max_body_bytes=2 << 20, max_instruction_chars=64, max_json_depth=6,
                                  request_timeout_s=3.0, backlog=256)
    defaults = ServerLimits.from_args(build_parser().parse_args([]))
    assert defaults == ServerLimits()
    assert 2 * len(json_numpy.dumps({"image": np.zeros((512, 512, 3), np.uint8)})) < defaults.max_body_bytes


@pytest.mark.parametrize(("text", "depth"), [
    (b"", 0), (b"1", 0), (b"[]", 1), (b'{"a": [[1], [2, [3]]]}', 4),
    (b'{"instruction": "put [[[[it]]]] {{down}}"}', 1),  # brackets in a string do not nest
    (b'{"s": "a \\" [[[ still a string", "t": [1]}', 2),  # an escaped quote does not end the string
    (b'{"s": "ends with a backslash \\\\", "t": [[1]]}', 3),  # an escaped backslash does not escape the quote
    (b'{"s": "\\\\\\" [[", "t": []}', 2),  # three backslashes: the quote is escaped
])
def test_json_depth_counts_only_structure(text, depth):
    from vla_ros.act_request import json_depth

    assert json_depth(text) == depth
    if text:
        json.loads(text)  # the cases are valid JSON
