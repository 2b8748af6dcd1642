#!/usr/bin/env python3
"""Idle memory per connection, TLS beside plain TCP (issue #12 item 1).

For each N and each transport it starts a fresh release gateway (2 workers, heartbeats of
10 minutes so nothing expires during the run), reads its VmRSS with no connection, opens N
connections one after the other (TLS 1.3 with ALPN holdfast/1, trusting a throw-away
self-signed certificate made with `openssl`; or plain TCP), sends a HELLO on each and reads
its AUTH_OK, waits until `holdfast_gateway_connections_established` says N and 5 s more,
reads VmRSS again, and prints one JSON line: (after - before) / N is the gateway's
user-space cost of one idle authenticated connection. The client sockets stay open, idle,
until the measurement is taken.

With `--hb-secs S` it then measures CPU per heartbeat: for S seconds the client sends a PING
on each connection in turn (waiting for its PONG, at most `--hb-rate` per second), and the
gateway's CPU time (utime + stime from /proc) over the window is divided by the PINGs
answered. The figure includes everything the gateway does meanwhile (wheel ticks, metrics),
so it is an upper bound; compare transports, not absolute numbers.

    cargo build --release -p holdfast-gateway
    python3 loadtest/scripts/tls_idle_memory.py --n 5000,15000
    python3 loadtest/scripts/tls_idle_memory.py --n 5000 --hb-secs 30

One client process holds N sockets: stay under the open-file limit (20,000 here).
"""
import argparse, base64, hashlib, hmac, json, os, socket, ssl, struct, subprocess, sys
import tempfile, time, urllib.request

from benchlib import hello, metric, rss_kib, token

def read_exact(s, n):
    out = b""
    while len(out) < n:
        chunk = s.recv(n - len(out))
        if not chunk:
            raise EOFError("closed")
        out += chunk
    return out

def cpu_ticks(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime + stime, in clock ticks

PING = struct.pack(">IBBI", 0, 4, 0, 7)

def heartbeats(pid, socks, secs, rate):
    hz = os.sysconf("SC_CLK_TCK")
    start_cpu, start = cpu_ticks(pid), time.time()
    done, i = 0, 0
    while time.time() - start < secs:
        s = socks[i % len(socks)]
        i += 1
        s.sendall(PING)
        head = read_exact(s, 10)
        length, typ = struct.unpack(">IB", head[:5])
        if length:
            read_exact(s, length)
        if typ != 5:
            raise RuntimeError(f"frame type {typ}, not PONG")
        done += 1
        behind = done / rate - (time.time() - start)
        if behind > 0:
            time.sleep(behind)
    took = time.time() - start
    cpu_s = (cpu_ticks(pid) - start_cpu) / hz
    return {"hb": done, "hb_per_s": round(done / took), "gateway_cpu_s": round(cpu_s, 2),
            "cpu_us_per_hb": round(cpu_s * 1e6 / done, 1)}

def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]

def make_cert(d):
    cert, key = os.path.join(d, "cert.pem"), os.path.join(d, "key.pem")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
                    "-nodes", "-keyout", key, "-out", cert, "-days", "1", "-subj", "/CN=localhost",
                    "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"],
                   check=True, capture_output=True)
    return cert, key

def start_gateway(binary, cert, key):
    tcp, tls, http = free_port(), free_port(), free_port()
    sets = [f"listen.addr=127.0.0.1:{tcp}", f"tls.addr=127.0.0.1:{tls}", f"http.addr=127.0.0.1:{http}",
            f"tls.cert={cert}", f"tls.key={key}", "node.workers=2",
            "heartbeat.max_ms=600000", "heartbeat.default_ms=600000"]
    args = [binary]
    for s in sets:
        args += ["--set", s]
    env = dict(os.environ, RUST_LOG="warn")
    p = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env, text=True)
    line = p.stdout.readline()
    if "ready" not in line:
        p.kill()
        raise RuntimeError(f"gateway did not start: {line!r}")
    return p, tcp, tls, f"127.0.0.1:{http}"

def run(binary, cert, transport, n, secret, hb_secs, hb_rate):
    p, tcp, tls, http = start_gateway(binary, cert[0], cert[1])
    try:
        time.sleep(1)
        before = rss_kib(p.pid)
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_3
        ctx.load_verify_locations(cert[0])
        ctx.set_alpn_protocols(["holdfast/1"])
        socks = []
        started = time.time()
        for i in range(n):
            raw = socket.create_connection(("127.0.0.1", tls if transport == "tls" else tcp))
            s = ctx.wrap_socket(raw, server_hostname="localhost") if transport == "tls" else raw
            s.sendall(hello(token(secret, f"m{i}")))
            head = read_exact(s, 10)
            length, typ = struct.unpack(">IB", head[:5])
            read_exact(s, length)
            if typ != 2:
                raise RuntimeError(f"connection {i}: frame type {typ}, not AUTH_OK")
            socks.append(s)
        took = time.time() - started
        deadline = time.time() + 60
        while metric(http, "holdfast_gateway_connections_established") < n and time.time() < deadline:
            time.sleep(0.5)
        time.sleep(5)
        after = rss_kib(p.pid)
        established = metric(http, "holdfast_gateway_connections_established")
        handshakes = metric(http, "holdfast_gateway_tls_handshakes_total")
        result = {"transport": transport, "n": n, "established": int(established),
                  "tls_handshakes": int(handshakes), "connect_s": round(took, 1),
                  "rss_before_kib": before, "rss_after_kib": after,
                  "bytes_per_conn": round((after - before) * 1024 / n)}
        if hb_secs > 0:
            result.update(heartbeats(p.pid, socks, hb_secs, hb_rate))
        for s in socks:
            s.close()
        return result
    finally:
        p.kill()
        p.wait()

def main():
    a = argparse.ArgumentParser()
    a.add_argument("--bin", default="target/release/holdfast-gateway")
    a.add_argument("--n", default="5000,15000")
    a.add_argument("--transports", default="tcp,tls")
    a.add_argument("--secret", default="holdfast-dev-secret")
    a.add_argument("--hb-secs", type=float, default=0)
    a.add_argument("--hb-rate", type=float, default=2000)
    args = a.parse_args()
    with tempfile.TemporaryDirectory() as d:
        cert = make_cert(d)
        for n in [int(x) for x in args.n.split(",")]:
            for t in args.transports.split(","):
                print(json.dumps(run(args.bin, cert, t, n, args.secret, args.hb_secs, args.hb_rate)),
                      flush=True)

if __name__ == "__main__":
    sys.exit(main())
