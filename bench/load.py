#!/usr/bin/env python3
"""Load generator and checker for bench/load.sh (standard library only).

    load.py send PORT SESSIONS SECONDS RECORD     keep SESSIONS SMTP sessions busy for
        SECONDS, each sending unique messages one after another on one connection (a new
        one after a failure); writes one JSON line per message to RECORD: its id, the
        SHA-256 of its bytes, the reply (or the error) and the latency.
    load.py check RECORD maildir DIR              checks what a Maildir's cur/ holds
    load.py check RECORD swift AUTHURL CONTAINER  checks what a Swift container's cur/ holds
    load.py check RECORD none                     only the figures (a sink stores nothing)
        against RECORD: every message answered 250 is stored exactly once with its bytes
        (the stored object ends with them; swiftdrop's trace headers and Postfix's Received
        line come before); prints the figures as JSON and exits 1 when a 250 was lost,
        damaged or stored twice.
"""

import hashlib
import json
import os
import re
import smtplib
import sys
import threading
import time
import urllib.request
import uuid

SIZES = [800, 3000, 20000, 120000]


def body(msg_id, size):
    head = (
        f"From: load@example.org\r\nTo: ops@example.com\r\nMessage-ID: <{msg_id}@load.test>\r\n"
        f"Subject: load {msg_id}\r\n\r\n"
    )
    line = f"{msg_id} the quick brown fox jumps over the lazy dog 0123456789\r\n"
    text = head + line * max(1, (size - len(head)) // len(line))
    return text.encode()


def send(port, sessions, seconds, record):
    end = time.monotonic() + seconds
    out = open(record, "w")
    lock = threading.Lock()

    def worker(n):
        client = None
        i = 0
        while time.monotonic() < end:
            msg_id = uuid.uuid4().hex
            data = body(msg_id, SIZES[(n + i) % len(SIZES)])
            i += 1
            started = time.monotonic()
            try:
                if client is None:
                    client = smtplib.SMTP("127.0.0.1", port, timeout=200)
                    client.ehlo("load.test")
                # smtplib dot-stuffs on the wire; the bytes stored are these.
                refused = client.sendmail("load@example.org", ["ops@example.com"], data)
                reply = "250" if not refused else f"refused {refused}"
            except smtplib.SMTPResponseException as e:
                reply = f"{e.smtp_code} {e.smtp_error.decode(errors='replace')}"
                client = close(client)
            except (OSError, smtplib.SMTPException) as e:
                reply = f"error {type(e).__name__}: {e}"
                client = close(client)
                time.sleep(0.2)
            row = {
                "id": msg_id,
                "sha256": hashlib.sha256(data).hexdigest(),
                "size": len(data),
                "reply": reply,
                "ms": round((time.monotonic() - started) * 1000),
            }
            with lock:
                out.write(json.dumps(row) + "\n")
        close(client)

    def close(client):
        if client is not None:
            try:
                client.quit()
            except (OSError, smtplib.SMTPException):
                pass
        return None

    started = time.monotonic()
    threads = [threading.Thread(target=worker, args=(n,), daemon=True) for n in range(sessions)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(seconds + 400)
    with lock:
        # The rate is over the time until the last message ended, not the time asked for.
        out.write(json.dumps({"elapsed": round(time.monotonic() - started, 3)}) + "\n")
        out.close()


def maildir_objects(root):
    cur = os.path.join(root, "cur")
    for name in os.listdir(cur):
        with open(os.path.join(cur, name), "rb") as f:
            yield name, f.read()


def swift_objects(authurl, container):
    request = urllib.request.Request(
        authurl, headers={"X-Auth-User": "test:tester", "X-Auth-Key": "testing"}
    )
    with urllib.request.urlopen(request) as r:
        token, url = r.headers["X-Auth-Token"], r.headers["X-Storage-Url"]
    # A container listing can lag behind the writes under load: list until it stops growing.
    names, previous = swift_names(url, token, container), None
    while names != previous:
        time.sleep(3)
        previous, names = names, swift_names(url, token, container)
    for name in names:
        get = urllib.request.Request(
            f"{url}/{container}/{urllib.parse.quote(name)}", headers={"X-Auth-Token": token}
        )
        with urllib.request.urlopen(get) as r:
            yield name, r.read()


def swift_names(url, token, container):
    names, marker = [], ""
    while True:
        listing = urllib.request.Request(
            f"{url}/{container}?prefix=cur/&format=json&marker={urllib.parse.quote(marker)}",
            headers={"X-Auth-Token": token},
        )
        with urllib.request.urlopen(listing) as r:
            page = json.load(r)
        if not page:
            break
        names += [o["name"] for o in page]
        marker = page[-1]["name"]
    return names


def check(record, kind, *where):
    rows = [json.loads(line) for line in open(record)]
    elapsed = next((r["elapsed"] for r in rows if "elapsed" in r), None)
    rows = [r for r in rows if "id" in r]
    sent = {row["id"]: row for row in rows}
    readers = {"maildir": maildir_objects, "swift": swift_objects, "none": lambda: []}
    objects = readers[kind](*where)
    found = {}
    for name, data in objects:
        m = re.search(rb"Message-ID: <([0-9a-f]{32})@load\.test>", data)
        if m is None:
            continue
        found.setdefault(m.group(1).decode(), []).append(data)
    ok = [r for r in rows if r["reply"].startswith("250")]
    lost, damaged, twice = [], [], []
    for row in ok if kind != "none" else []:
        copies = found.get(row["id"], [])
        if not copies:
            lost.append(row["id"])
            continue
        if len(copies) > 1:
            twice.append(row["id"])
        for data in copies:
            tail = data[-row["size"]:]
            if hashlib.sha256(tail).hexdigest() != row["sha256"]:
                damaged.append(row["id"])
    without_250 = [i for i in found if i in sent and not sent[i]["reply"].startswith("250")]
    latencies = sorted(r["ms"] for r in ok) or [0]
    replies = {}
    for r in rows:
        key = r["reply"][:9] if r["reply"][0].isdigit() else r["reply"].split(":")[0]
        replies[key] = replies.get(key, 0) + 1
    figures = {
        "messages": len(rows),
        "elapsed": elapsed,
        "answered_250": len(ok),
        "bytes_250": sum(r["size"] for r in ok),
        "replies": replies,
        "stored_objects": sum(len(c) for c in found.values()),
        "lost_250": len(lost),
        "damaged": len(damaged),
        "stored_twice_after_250": len(twice),
        "stored_without_250": len(without_250),
        "p50_ms": latencies[len(latencies) // 2],
        "p99_ms": latencies[min(len(latencies) - 1, len(latencies) * 99 // 100)],
    }
    print(json.dumps(figures))
    if lost or damaged or twice:
        print(f"LOST {lost[:5]} DAMAGED {damaged[:5]} TWICE {twice[:5]}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    if sys.argv[1] == "send":
        send(int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4]), sys.argv[5])
    elif sys.argv[1] == "check":
        check(sys.argv[2], *sys.argv[3:])
    else:
        sys.exit(__doc__)
