"""Load for bench/soak: holds N keep-alive TLS connections to the gate and runs a mixed workload.

    soak-client.py --port 18443 --tokens tokens.txt --connections 10000 --rate 200 \
                   --duration 1800 --stats stats.json

- Held connections: opened in parallel (500 at a time), each sends one authenticated request
  and is then kept open; every 30-60 s it sends another one (so it stays a live keep-alive
  connection; the gate closes a connection idle for longer than `header_read_timeout`). A held
  connection that fails is counted and reopened.
- Mixed workload: `--rate` requests per second in total from 32 workers on keep-alive
  connections: 70 % list pipelines (200), 10 % a denied or unknown-operation POST (403),
  5 % a bad token (401), 5 % an ambiguous path (400), 5 % no route (404), 5 % a new TLS
  connection per request (churn).
- Every 5 s the counters go to `--stats` as JSON: held connections, requests and statuses,
  errors (transport failures, 5xx, unexpected statuses).

Standard library only (asyncio + ssl).
"""

import argparse
import asyncio
import json
import random
import ssl
import time

parser = argparse.ArgumentParser()
parser.add_argument("--host", default="127.0.0.1")
parser.add_argument("--port", type=int, default=18443)
parser.add_argument("--tokens", required=True)
parser.add_argument("--connections", type=int, default=10000)
parser.add_argument("--rate", type=float, default=200)
parser.add_argument("--duration", type=float, default=1800)
parser.add_argument("--stats", required=True)
args = parser.parse_args()

TOKENS = [t for t in open(args.tokens).read().split() if t]
CONTEXT = ssl.create_default_context()
CONTEXT.check_hostname = False
CONTEXT.verify_mode = ssl.CERT_NONE
CONTEXT.set_alpn_protocols(["http/1.1"])

stats = {
    "held": 0,
    "held_opened": 0,
    "held_reopened": 0,
    "requests": 0,
    "statuses": {},
    "errors": {},
}


def error(kind):
    stats["errors"][kind] = stats["errors"].get(kind, 0) + 1


def request(method, path, token, close=False):
    head = f"{method} {path} HTTP/1.1\r\nHost: localhost:{args.port}\r\n"
    if token:
        head += f"Authorization: Bearer {token}\r\n"
    if method == "POST":
        head += "Content-Type: application/json\r\nContent-Length: 2\r\n"
    if close:
        head += "Connection: close\r\n"
    body = "{}" if method == "POST" else ""
    return (head + "\r\n" + body).encode()


async def exchange(reader, writer, data, timeout=30):
    """Sends one request and reads one response; returns the status."""
    writer.write(data)
    await writer.drain()
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout)
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        if ":" in line:
            name, value = line.split(":", 1)
            headers[name.strip().lower()] = value.strip()
    if "content-length" in headers:
        await asyncio.wait_for(reader.readexactly(int(headers["content-length"])), timeout)
    elif headers.get("transfer-encoding", "").lower() == "chunked":
        while True:
            size = int((await asyncio.wait_for(reader.readline(), timeout)).split(b";")[0], 16)
            await asyncio.wait_for(reader.readexactly(size + 2), timeout)
            if size == 0:
                break
    stats["requests"] += 1
    stats["statuses"][str(status)] = stats["statuses"].get(str(status), 0) + 1
    if status >= 500:
        error(f"status {status}")
    return status


async def connect():
    return await asyncio.wait_for(
        asyncio.open_connection(args.host, args.port, ssl=CONTEXT, server_hostname="localhost"),
        30,
    )


LIST = "/ws/contoso/pipelines?api-version=2020-12-01"


async def held_connection(index, opened, deadline):
    first = True
    while time.monotonic() < deadline:
        try:
            reader, writer = await connect()
        except Exception:
            error("held connect")
            await asyncio.sleep(1)
            continue
        try:
            await exchange(reader, writer, request("GET", LIST, TOKENS[index % len(TOKENS)]))
            if first:
                stats["held_opened"] += 1
                opened.release()
                first = False
            else:
                stats["held_reopened"] += 1
            stats["held"] += 1
            try:
                while time.monotonic() < deadline:
                    await asyncio.sleep(random.uniform(30, 60))
                    await exchange(reader, writer, request("GET", LIST, TOKENS[index % len(TOKENS)]))
            finally:
                stats["held"] -= 1
        except Exception as e:
            error(f"held: {type(e).__name__}")
        finally:
            writer.close()
    if first:
        opened.release()


MIX = [
    (70, "GET", LIST, True, 200),
    (10, "POST", "/ws/contoso/unknownThing/x", True, 403),
    (5, "GET", LIST, False, 401),
    (5, "GET", "/ws/contoso/pipelines/%2e%2e/secrets", True, 400),
    (5, "GET", "/nowhere/pipelines", True, 404),
]


async def worker(number, interval, deadline):
    reader = writer = None
    next_at = time.monotonic() + random.uniform(0, interval)
    while time.monotonic() < deadline:
        await asyncio.sleep(max(0.0, next_at - time.monotonic()))
        next_at += interval
        token = TOKENS[random.randrange(len(TOKENS))]
        if random.random() < 0.05:
            # Churn: a new TLS connection for one request.
            try:
                r, w = await connect()
                await exchange(r, w, request("GET", LIST, token, close=True))
                w.close()
            except Exception as e:
                error(f"churn: {type(e).__name__}")
            continue
        roll = random.uniform(0, 95)
        for weight, method, path, good_token, expected in MIX:
            if roll < weight:
                break
            roll -= weight
        try:
            if writer is None:
                reader, writer = await connect()
            status = await exchange(
                reader, writer, request(method, path, token if good_token else "not.a.token")
            )
            if status != expected and status < 500:
                error(f"{method} {path}: {status} (expected {expected})")
        except Exception as e:
            error(f"worker: {type(e).__name__}")
            if writer is not None:
                writer.close()
            reader = writer = None


async def report(deadline):
    while True:
        with open(args.stats + ".tmp", "w") as out:
            json.dump(stats, out)
        import os

        os.replace(args.stats + ".tmp", args.stats)
        if time.monotonic() >= deadline:
            return
        await asyncio.sleep(5)


async def main():
    started = time.monotonic()
    deadline = started + args.duration
    reporter = asyncio.create_task(report(deadline + 5))
    opened = asyncio.Semaphore(500)
    held = []
    for index in range(args.connections):
        await opened.acquire()
        held.append(asyncio.create_task(held_connection(index, opened, deadline)))
    # Wait until every held connection made its first request.
    for _ in range(500):
        await opened.acquire()
    stats["held_ready_after_s"] = round(time.monotonic() - started, 1)
    workers = [
        asyncio.create_task(worker(n, 32 / args.rate, deadline)) for n in range(32)
    ]
    await asyncio.gather(*workers, *held)
    await reporter


asyncio.run(main())
