"""The hostile HTTP requests of issue 16, as raw bytes: what an attacker on the network can send.

Each probe is a method, a path and a body; tests send them to a server or a gateway of their own
(``send``) and check the outcome that export/SECURITY.md lists for it.
"""

from __future__ import annotations

import http.client
import json
import socket
from dataclasses import dataclass

MODEL = "adaptive_diffusion"
INFER = f"/v2/models/{MODEL}/infer"


@dataclass(frozen=True)
class Probe:
    name: str
    method: str
    path: str
    body: bytes = b""
    headers: tuple[tuple[str, str], ...] = ()


def _infer_body(*inputs: dict) -> bytes:
    return json.dumps({"inputs": list(inputs)}).encode()


def _prompt(text: str = "a cat", rows: int = 1) -> dict:
    return {"name": "prompt", "datatype": "BYTES", "shape": [rows, 1], "data": [text] * rows}


def nested_json(depth: int = 60_000) -> Probe:
    """``data`` nested ``depth`` deep on a non-BYTES input: Triton 2.51's recursive JSON walk overflows
    its stack (a segfault; fixed upstream by iterative parsing, server commit f46557b, Triton 2.58)."""
    data = "[" * depth + "1" + "]" * depth
    body = ('{"inputs":[{"name":"prompt","datatype":"BYTES","shape":[1,1],"data":["a cat"]},'
            '{"name":"seed","datatype":"INT64","shape":[1,1],"data":' + data + "}]}").encode()
    return Probe(f"JSON data nested {depth} deep", "POST", INFER, body)


def huge_shape(exponent: int = 36) -> Probe:
    """A 168-byte request declaring a non-BYTES input of 2**exponent elements: 2.51 allocates the
    declared size from JSON before checking the shape (2**36: std::bad_alloc, abort)."""
    body = _infer_body(_prompt(), {"name": "seed", "datatype": "INT64", "shape": [1, 2**exponent], "data": [1]})
    return Probe(f"INT64 input declared [1, 2^{exponent}]", "POST", INFER, body)


def big_body(megabytes: int) -> Probe:
    """One prompt of ``megabytes`` MiB: refused by the model's 16 KiB cap, after the bytes crossed
    into the Python backend's shared memory."""
    return Probe(f"{megabytes} MiB prompt", "POST", INFER, _infer_body(_prompt("x" * (megabytes << 20))))


def component_infer(component: str = "unet_teacher") -> Probe:
    """A component model called directly, past every check of the BLS."""
    body = _infer_body({"name": "input_ids", "datatype": "INT64", "shape": [16, 77], "data": [0] * (16 * 77)})
    return Probe(f"direct call of {component}", "POST", f"/v2/models/{component}/infer", body)


def send(hostport: str, probe: Probe, timeout: float = 60.0) -> tuple[int, bytes]:
    """The status and body the server answers; status 0 when the connection broke with no answer.

    Raw socket, so a server that answers before the body is sent (413) and closes is still heard, and
    a ``Transfer-Encoding: chunked`` probe is sent as real chunks.
    """
    host, port = hostport.rsplit(":", 1)
    headers = {"Host": hostport, "Content-Type": "application/json", "Connection": "close", **dict(probe.headers)}
    body = probe.body
    if headers.get("Transfer-Encoding") == "chunked":
        body = (b"%x\r\n" % len(body) + body + b"\r\n" if body else b"") + b"0\r\n\r\n"
    elif body or probe.method == "POST":
        headers["Content-Length"] = str(len(body))
    head = f"{probe.method} {probe.path} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers.items()) + "\r\n"
    try:
        sock = socket.create_connection((host, int(port)), timeout=timeout)
    except OSError:
        return 0, b""
    with sock:
        try:
            sock.sendall(head.encode() + body)
        except OSError:  # the server answered early and closed: read what it said
            pass
        try:
            response = http.client.HTTPResponse(sock)
            response.begin()
            return response.status, response.read()
        except (OSError, http.client.HTTPException):
            return 0, b""
