"""HTTP/2 requests to a SPIFFE Workload API socket from implementations
that are not h2's: Python's h2 (hyper-h2, with its own header validation
turned off, so it sends what it is told) and grpcio (grpc-core).

Usage: h2_probe.py SOCKET

Each case is one FetchJWTSVID call. The "served" ones differ only in
:authority, as gRPC clients on Unix sockets send it; the "refused" ones each
break one rule of HTTP/2 (RFC 9113 section 8) that h2 enforces. Prints one
JSON list: per case its name, whether it is meant to be served, the
:status, grpc-status, the stream's reset code (None if not reset), whether
the connection was ended with GOAWAY and its code, whether it was closed
before the stream ended, and the size of the answer's message.
"""

import json
import socket
import sys
import urllib.parse

import grpc
import h2.config
import h2.connection
import h2.events
import h2.exceptions

PATH = "/SpiffeWorkloadAPI/FetchJWTSVID"


def message(audience):
    """JWTSVIDRequest {audience: [audience]} as a gRPC length-prefixed message."""
    field = audience.encode()
    body = b"\x0a" + bytes([len(field)]) + field
    return b"\x00" + len(body).to_bytes(4, "big") + body


def headers(authority, path=PATH):
    out = [(":method", "POST"), (":scheme", "http"), (":path", path)]
    if authority is not None:
        out.append((":authority", authority))
    out += [
        ("content-type", "application/grpc"),
        ("te", "trailers"),
        ("workload.spiffe.io", "true"),
    ]
    return out


def call(sock_path, name, served, request_headers):
    result = {
        "name": name,
        "served": served,
        "status": None,
        "grpc_status": None,
        "reset": None,
        "goaway": None,
        "closed": False,
        "message_bytes": 0,
    }
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(10)
    sock.connect(sock_path)
    conn = h2.connection.H2Connection(
        h2.config.H2Configuration(
            client_side=True,
            validate_outbound_headers=False,
            normalize_outbound_headers=False,
            validate_inbound_headers=False,
        )
    )
    conn.initiate_connection()
    stream = conn.get_next_available_stream_id()
    conn.send_headers(stream, request_headers, end_stream=False)
    conn.send_data(stream, message("probe"), end_stream=True)
    sock.sendall(conn.data_to_send())
    done = False
    can_send = True
    while not done:
        try:
            data = sock.recv(65536)
        except (socket.timeout, ConnectionResetError):
            result["closed"] = True
            break
        if not data:
            result["closed"] = True
            break
        try:
            events = conn.receive_data(data)
        except h2.exceptions.ProtocolError as e:
            result["goaway"] = "client-side: " + str(e)
            break
        for event in events:
            if isinstance(event, h2.events.ResponseReceived):
                fields = dict(event.headers)
                result["status"] = fields.get(b":status", b"").decode()
                if b"grpc-status" in fields:  # a trailers-only answer
                    result["grpc_status"] = fields[b"grpc-status"].decode()
            elif isinstance(event, h2.events.DataReceived):
                result["message_bytes"] += len(event.data)
                conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            elif isinstance(event, h2.events.TrailersReceived):
                fields = dict(event.headers)
                result["grpc_status"] = fields.get(b"grpc-status", b"").decode()
            elif isinstance(event, h2.events.StreamReset):
                result["reset"] = int(event.error_code)
                done = True
            elif isinstance(event, h2.events.StreamEnded):
                done = True
            elif isinstance(event, h2.events.ConnectionTerminated):
                result["goaway"] = int(event.error_code)
                done = True
        pending = conn.data_to_send()
        if pending and not done and can_send:
            try:
                sock.sendall(pending)
            except (BrokenPipeError, ConnectionResetError):
                # The server has ended the connection (e.g. after a GOAWAY)
                # before taking our SETTINGS ack: read what it sent before
                # closing, and the close itself.
                can_send = False
    sock.close()
    return result


def grpcio_call(sock_path, authority):
    """FetchJWTSVID through grpc-core, with :authority forced to `authority`
    (grpc-java sends the raw socket path)."""
    from spiffe._proto import workload_pb2, workload_pb2_grpc

    options = [("grpc.default_authority", authority)]
    with grpc.insecure_channel("unix:" + sock_path, options=options) as channel:
        stub = workload_pb2_grpc.SpiffeWorkloadAPIStub(channel)
        try:
            answer = stub.FetchJWTSVID(
                workload_pb2.JWTSVIDRequest(audience=["probe"]),
                metadata=[("workload.spiffe.io", "true")],
                timeout=10,
            )
            return {"grpc_status": "0", "svids": len(answer.svids)}
        except grpc.RpcError as e:
            return {"grpc_status": str(e.code()), "details": e.details()}


def main():
    sock_path = sys.argv[1]
    encoded = urllib.parse.quote(sock_path, safe="")
    good = headers("localhost")
    cases = [
        ("authority: percent-encoded socket path (grpc-core)", True, headers(encoded)),
        ("authority: raw socket path (grpc-java, Bazel)", True, headers(sock_path)),
        ("authority: localhost (grpc-go)", True, headers("localhost")),
        ("authority: absent", True, headers(None)),
        ("no :method", False, [h for h in good if h[0] != ":method"]),
        ("no :scheme", False, [h for h in good if h[0] != ":scheme"]),
        ("no :path", False, [h for h in good if h[0] != ":path"]),
        ("empty :path", False, headers("localhost", path="")),
        ("malformed :path", False, headers("localhost", path="/a b")),
        ("malformed :scheme", False, [(":scheme", "ht tp") if h[0] == ":scheme" else h for h in good]),
        (":status in a request", False, good[:3] + [(":status", "200")] + good[3:]),
        ("unknown pseudo-header", False, good[:3] + [(":foo", "bar")] + good[3:]),
        ("pseudo-header after a regular one", False, good[:3] + [("x-a", "b"), (":authority", "localhost")] + good[4:]),
        ("duplicate :path", False, good[:3] + [(":path", PATH)] + good[3:]),
        ("connection-specific header", False, good + [("connection", "keep-alive")]),
        ("te other than trailers", False, [("te", "gzip") if h[0] == "te" else h for h in good]),
        ("uppercase header name", False, good + [("X-Upper", "1")]),
    ]
    results = [call(sock_path, name, served, hs) for name, served, hs in cases]
    for authority in (sock_path, encoded, "localhost"):
        outcome = grpcio_call(sock_path, authority)
        outcome.update({"name": "grpcio, authority " + authority, "served": True, "grpcio": grpc.__version__})
        results.append(outcome)
    print(json.dumps(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
