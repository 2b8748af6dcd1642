"""What the Python benchmark scripts beside this file share: development tokens, the raw
HELLO frame, and reading a gateway's RSS and metrics. Import it from a script in this
folder (`from benchlib import ...`); Python puts a script's own folder on its path."""

import base64, hashlib, hmac, json, struct, time, urllib.request


def b64(b):
    return base64.urlsafe_b64encode(b).rstrip(b"=")


def token(secret, user):
    """An HS256 development token for `user`, valid for an hour."""
    head = b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    body = b64(json.dumps({"sub": user, "exp": int(time.time()) + 3600}).encode())
    sig = b64(hmac.new(secret.encode(), head + b"." + body, hashlib.sha256).digest())
    return head + b"." + body + b"." + sig


def hello(tok):
    """A HELLO frame: versions [1], capabilities 0, heartbeat 0 (the gateway's default),
    max_frame 0, platform 5, the token, device "" and app version ""."""
    body = struct.pack(">BHIIIB", 1, 1, 0, 0, 0, 5) + struct.pack(">H", len(tok)) + tok + b"\x00\x00"
    return struct.pack(">IBBI", len(body), 1, 0, 0) + body


def rss_kib(pid):
    """The process's resident set, in KiB (`VmRSS`)."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def metric(http, name):
    """One unlabelled sample of the gateway's `/metrics` on `http` (host:port)."""
    text = urllib.request.urlopen(f"http://{http}/metrics", timeout=10).read().decode()
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return 0.0
