#!/usr/bin/python3
"""An Identity v3 stand-in for tests: password authentication as Keystone does it, backed by
a real Swift's tempauth.

    keystone-standin.py PORT SWIFT_PORT

POST /v3/auth/tokens with the Identity v3 password body, scoped to a project by name and
domain (or by id), is answered like Keystone answers it: 201, the token in X-Subject-Token,
and a JSON body with `expires_at` and a catalog whose `object-store` service lists public,
internal and admin endpoints in region RegionOne. The token and endpoint are a real tempauth
token and storage URL of the Swift on SWIFT_PORT, so Swift accepts them. Known user: `mailer`
in domain `Default`, password `secret`, project `mail` in domain `Default` (id `p-mail`).
Anything else in the body is refused as Keystone refuses it (400 for a malformed body, 401 for
wrong credentials). GET /count answers how many tokens were issued.
"""
import json
import sys
import urllib.request
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

USER, USER_DOMAIN, PASSWORD = "mailer", "Default", "secret"
PROJECT, PROJECT_DOMAIN, PROJECT_ID = "mail", "Default", "p-mail"
ISSUED = 0


def swift_token(swift_port):
    request = urllib.request.Request(
        f"http://127.0.0.1:{swift_port}/auth/v1.0",
        headers={"X-Auth-User": "test:tester", "X-Auth-Key": "testing"},
    )
    with urllib.request.urlopen(request) as response:
        return response.headers["X-Auth-Token"], response.headers["X-Storage-Url"]


def problem(body):
    """None when `body` is a valid v3 password request for the known user, else (status, why)."""
    try:
        auth = body["auth"]
        identity = auth["identity"]
        if identity["methods"] != ["password"]:
            return 400, "only the password method is supported here"
        user = identity["password"]["user"]
        scope = auth["scope"]["project"]
    except (KeyError, TypeError):
        return 400, "malformed request body"
    if "name" in user and "domain" not in user:
        return 400, "a user given by name needs a domain"
    domain = user.get("domain", {})
    if user.get("name") != USER or domain.get("name", domain.get("id")) != USER_DOMAIN \
            or user.get("password") != PASSWORD:
        return 401, "The request you have made requires authentication."
    if "id" in scope:
        if scope["id"] != PROJECT_ID:
            return 401, "unknown project"
    else:
        pdomain = scope.get("domain", {})
        if scope.get("name") != PROJECT or pdomain.get("name", pdomain.get("id")) != PROJECT_DOMAIN:
            return 401, "unknown project"
    return None


class Handler(BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def reply(self, status, body, headers=()):
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for name, value in headers:
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        if self.path == "/count":
            self.reply(200, {"issued": ISSUED})
        else:
            self.reply(404, {"error": {"code": 404, "message": "not found"}})

    def do_POST(self):
        global ISSUED
        if self.path.rstrip("/") != "/v3/auth/tokens":
            return self.reply(404, {"error": {"code": 404, "message": "not found"}})
        if self.headers.get("Content-Type", "").split(";")[0] != "application/json":
            return self.reply(415, {"error": {"code": 415, "message": "send JSON"}})
        length = int(self.headers.get("Content-Length", 0))
        try:
            body = json.loads(self.rfile.read(length))
        except ValueError:
            return self.reply(400, {"error": {"code": 400, "message": "not JSON"}})
        wrong = problem(body)
        if wrong:
            status, message = wrong
            title = "Unauthorized" if status == 401 else "Bad Request"
            return self.reply(status, {"error": {"code": status, "message": message, "title": title}})
        token, storage_url = swift_token(self.server.swift_port)
        ISSUED += 1
        now = datetime.now(timezone.utc)
        endpoints = [
            {"id": f"e-{interface}", "interface": interface, "region": "RegionOne",
             "region_id": "RegionOne", "url": storage_url}
            for interface in ("public", "internal", "admin")
        ]
        self.reply(201, {"token": {
            "methods": ["password"],
            "user": {"id": "u-mailer", "name": USER, "domain": {"id": "default", "name": USER_DOMAIN}},
            "project": {"id": PROJECT_ID, "name": PROJECT, "domain": {"id": "default", "name": PROJECT_DOMAIN}},
            "roles": [{"id": "r-member", "name": "member"}],
            "issued_at": now.isoformat().replace("+00:00", "Z"),
            "expires_at": (now + timedelta(hours=1)).isoformat().replace("+00:00", "Z"),
            "catalog": [
                {"type": "identity", "name": "keystone", "id": "s-identity", "endpoints": []},
                {"type": "object-store", "name": "swift", "id": "s-swift", "endpoints": endpoints},
            ],
        }}, headers=[("X-Subject-Token", token)])


def main():
    port, swift_port = int(sys.argv[1]), int(sys.argv[2])
    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    server.swift_port = swift_port
    server.serve_forever()


if __name__ == "__main__":
    main()
