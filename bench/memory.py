"""Clients for bench/memory.sh: idle connections, a burst of large messages, one huge message.

    memory.py idle PORT COUNT SECONDS     COUNT connections that each read the greeting, then
                                          stay open SECONDS; prints "greeted N"
    memory.py burst PORT COUNT MB         COUNT clients at once, each one message of MB megabytes
                                          (with SIZE) to ours@example.com and a relayed
                                          recipient; prints "accepted N of COUNT" and the refusals
    memory.py one PORT MIB                one message of MIB mebibytes (less 1 KiB, for the
                                          trace lines within max_message_size); prints its reply
"""
import resource
import smtplib
import socket
import sys
import threading
import time


def body_of(size):
    line = b"line %08d of a large message under load\r\n"
    return b"".join(line % i for i in range(size // len(line % 0) + 1))[:size]


def idle(port, count, seconds):
    resource.setrlimit(resource.RLIMIT_NOFILE, (count + 1000, count + 1000))
    socks = [socket.create_connection(("127.0.0.1", port)) for _ in range(count)]
    greeted = 0
    for s in socks:
        s.settimeout(60)
        if s.recv(512).startswith(b"220"):
            greeted += 1
    print("greeted", greeted, flush=True)
    time.sleep(seconds)


def burst(port, count, mb):
    body = body_of(mb * 1000 * 1000)
    results = []

    def one(i):
        msg = b"Subject: load %d\r\n\r\n" % i + body
        try:
            with smtplib.SMTP("127.0.0.1", port, timeout=600) as s:
                s.ehlo("load.test")
                s.sendmail("load@example.org",
                           ["ours@example.com", "elsewhere%d@elsewhere.example" % i],
                           msg, mail_options=["SIZE=%d" % len(msg)])
            results.append(None)
        except smtplib.SMTPException as e:
            results.append(repr(e)[:100])

    threads = [threading.Thread(target=one, args=(i,)) for i in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    refused = [r for r in results if r is not None]
    print("accepted", len(results) - len(refused), "of", count, *refused[:3])


def one(port, mib):
    head = b"Subject: big\r\n\r\n"
    # MIB mebibytes in all, so that 50 stays within the default max_message_size.
    msg = head + body_of((mib << 20) - len(head) - 1024)
    with smtplib.SMTP("127.0.0.1", port, timeout=600) as s:
        print("refused:", s.sendmail("a@example.org", ["ours@example.com"], msg) or "none")


if __name__ == "__main__":
    mode, port = sys.argv[1], int(sys.argv[2])
    args = [int(a) for a in sys.argv[3:]]
    {"idle": idle, "burst": burst, "one": one}[mode](port, *args)
