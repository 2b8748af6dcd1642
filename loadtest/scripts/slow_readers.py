#!/usr/bin/env python3
"""Memory under slow readers, and after the burst (issue #8 item 5).

Starts nothing itself: point it at a running gateway (its client port, its HTTP API, its
PID). It connects CLIENTS clients that authenticate and then never read, pushes PUSHES
pushes of SIZE bytes to each through the push API, waits until the gateway has closed them
all as slow consumers (bounded), then samples the gateway's RSS every second for AFTER
seconds. Prints one JSON line: RSS before, at the peak, right after the closes, and at the
end, with the time the closes took.

    python3 loadtest/scripts/slow_readers.py --tcp 127.0.0.1:7300 --http 127.0.0.1:7380 --pid PID
"""
import argparse, base64, hashlib, hmac, json, socket, struct, sys, time, urllib.request

from benchlib import hello, metric, rss_kib, token

def post(http, path, body):
    req = urllib.request.Request(f"http://{http}{path}", data=json.dumps(body).encode(),
                                 headers={"content-type": "application/json"})
    return json.loads(urllib.request.urlopen(req, timeout=30).read())

def main():
    a = argparse.ArgumentParser()
    a.add_argument("--tcp", required=True)
    a.add_argument("--http", required=True)
    a.add_argument("--pid", type=int, required=True)
    a.add_argument("--secret", default="holdfast-dev-secret")
    a.add_argument("--clients", type=int, default=200)
    a.add_argument("--pushes", type=int, default=40)
    a.add_argument("--size", type=int, default=60000)
    a.add_argument("--after", type=int, default=60)
    args = a.parse_args()
    host, port = args.tcp.split(":")
    before = rss_kib(args.pid)
    socks = []
    for i in range(args.clients):
        s = socket.create_connection((host, int(port)))
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        s.sendall(hello(token(args.secret, f"slow{i}")))
        socks.append(s)
    time.sleep(0.5)  # the AUTH_OKs arrive; the clients never read again
    payload = "x" * args.size
    users = [f"slow{i}" for i in range(args.clients)]
    peak = before
    for _ in range(args.pushes):
        post(args.http, "/v1/push/users", {"users": users, "payload": payload, "ack": False})
        peak = max(peak, rss_kib(args.pid))
    start = time.time()
    deadline = start + 120
    while time.time() < deadline and metric(args.http, "holdfast_gateway_connections_established") > 0:
        peak = max(peak, rss_kib(args.pid))
        time.sleep(0.5)
    closed_after = time.time() - start
    at_close = rss_kib(args.pid)
    samples = []
    for _ in range(args.after):
        time.sleep(1)
        samples.append(rss_kib(args.pid))
    for s in socks:
        s.close()
    print(json.dumps({"rss_before_kib": before, "rss_peak_kib": peak, "rss_at_close_kib": at_close,
                      "rss_end_kib": samples[-1] if samples else at_close,
                      "closes_took_s": round(closed_after, 1),
                      "rss_series_kib": samples[::10]}))

if __name__ == "__main__":
    sys.exit(main())
