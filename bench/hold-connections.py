"""Opens N keep-alive TLS connections to the gate, sends one authenticated request on each (so
each is a fully set-up HTTP/1.1 connection), holds them all open, and prints the gate's resident
memory (VmRSS, kB) at that moment. Used by bench/run: `hold-connections.py HOST PORT N PID`."""

import socket
import ssl
import sys

host, port, count, pid = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
token = open(sys.argv[5] if len(sys.argv) > 5 else "/dev/null").read().strip()
context = ssl.create_default_context()
context.check_hostname = False
context.verify_mode = ssl.CERT_NONE
request = f"GET /ws/contoso/pipelines?api-version=2020-12-01 HTTP/1.1\r\nHost: {host}\r\n"
if token:
    request += f"Authorization: Bearer {token}\r\n"
request = (request + "\r\n").encode()
held = []
for _ in range(count):
    conn = context.wrap_socket(socket.create_connection((host, port)), server_hostname=host)
    conn.sendall(request)
    conn.recv(65536)
    held.append(conn)
with open(f"/proc/{pid}/status") as status:
    rss = next(line.split()[1] for line in status if line.startswith("VmRSS"))
print(rss)
for conn in held:
    conn.close()
