"""One HTTP/1.1 request over a Unix socket, from Python's standard library
only (the booted-system test runs it inside the container, where nothing
else of ours is installed).

Usage: uds_http.py SOCKET METHOD PATH [JSON-BODY]

Prints one JSON object: {"status": int, "body": parsed JSON or text}, or
{"error": "..."} when the socket cannot be reached (e.g. EACCES), exit 0
either way: the test judges the answer.
"""

import http.client
import json
import socket
import sys


class UnixConnection(http.client.HTTPConnection):
    def __init__(self, path):
        super().__init__("localhost", timeout=30)
        self.unix_path = path

    def connect(self):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(30)
        sock.connect(self.unix_path)
        self.sock = sock


def main():
    path, method, target = sys.argv[1:4]
    body = sys.argv[4] if len(sys.argv) > 4 else None
    connection = UnixConnection(path)
    headers = {"content-type": "application/json"} if body is not None else {}
    try:
        connection.request(method, target, body=body, headers=headers)
        answer = connection.getresponse()
        text = answer.read().decode("utf-8", "replace")
    except OSError as e:
        print(json.dumps({"error": f"{type(e).__name__}: {e}"}))
        return 0
    try:
        parsed = json.loads(text)
    except ValueError:
        parsed = text
    print(json.dumps({"status": answer.status, "body": parsed}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
