#!/usr/bin/python3
"""A Mattermost REST API v4 stand-in for tests: it checks every request the way the v4 API
reference documents it and answers the way the server does.

    mattermost-standin.py PORT [MAX_POST_SIZE [MAX_FILE_SIZE [ANNOUNCE_FILE_LIMIT]]]

ANNOUNCE_FILE_LIMIT 0: the client configuration leaves MaxFileSize out (a client then
learns the limit from 413 answers only).

Directory (fixed): users alice, bob and carol (`<name>@example.com`), bots `jira-bot`
(token `jira-token`) and `splunk-bot` (token `splunk-token`), team `ops` with channel
`alerts` (both bots are members), incoming webhook `/hooks/hook123`.

API (every /api/v4 request needs `Authorization: Bearer <bot token>`, else 401):
  GET  /api/v4/users/me, /api/v4/users/email/{email}, /api/v4/users/username/{name}
  GET  /api/v4/config/client?format=old            (MaxPostSize, MaxFileSize as strings)
  GET  /api/v4/teams/name/{team}/channels/name/{channel}
  POST /api/v4/channels/direct   ["<id>", "<id>"]  (the caller must be one of them)
  POST /api/v4/files             multipart: `channel_id` and `files` parts with a filename;
                                 413 past MAX_FILE_SIZE; the caller must be in the channel
  GET  /api/v4/posts/{id}        a post (404 when unknown or deleted)
  GET  /api/v4/channels/{id}/posts?since=|page=&per_page=   a PostList, newest first
  POST /api/v4/posts             {channel_id, message, file_ids?, root_id?, props?,
                                 pending_post_id?}: the post made with the same
                                 pending_post_id within 30 s is the answer; at most
                                 5 file_ids, uploaded by the caller into that channel and not
                                 attached before; message at most MAX_POST_SIZE characters;
                                 root_id a post of the same channel
  POST /hooks/{key}              {text, channel?, username?, icon_url?, props?} -> 200 "ok"

A request that breaks the documented contract is answered 400 and recorded as a violation.

Test control (not Mattermost):
  POST /_test/faults  [{"method", "path" (prefix), "status", "skip", "times", "headers"}]:
                      answer `status` to the matching requests after `skip` of them pass,
                      `times` times
  GET  /_test/log         every API request: {method, path, bot, json | fields + files}
  GET  /_test/posts       every post created (with the creating bot and channel)
  GET  /_test/violations  what broke the contract
  POST /_test/limits      {"MaxPostSize": n}: the limit from now on
  POST /_test/users       {"names": [...]}: more users (`<name>@example.com`)
  POST /_test/settings    {"ShowEmailAddress", "RestrictedView", "Invisible": [names],
                           "EnableFileAttachments", "MaxImageResolution", "PluginRejects":
                           [name endings], "PendingTTL": seconds the pending_post_id cache
                           keeps a post (30; 0: as if that long had passed)}
  POST /_test/delete-post {"id"}: a user deleted that post (it stays, with delete_at)
  faults with "after": true: the request is done, then the fault is answered (a lost answer);
                      with "pass": true: the request is served, with the fault's headers
"""
import email.parser
import email.policy
import json
import secrets
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlsplit, parse_qs

LOCK = threading.Lock()
MAX_POST_SIZE = 16383
MAX_FILE_SIZE = 1024 * 1024
ANNOUNCE_FILE_LIMIT = True


def new_id():
    """A 26-character id as Mattermost makes them (lower-case base32)."""
    return "".join(secrets.choice("ybndrfg8ejkmcpqxot1uwisza345h769") for _ in range(26))


def user(name, bot=False):
    return {"id": new_id(), "username": name, "email": f"{name}@example.com",
            "is_bot": bot, "roles": "system_user", "delete_at": 0}


USERS = {u["username"]: u for u in (user("alice"), user("bob"), user("carol"),
                                    user("jira-bot", True), user("splunk-bot", True))}
TOKENS = {"jira-token": "jira-bot", "splunk-token": "splunk-bot"}
TEAM = {"id": new_id(), "name": "ops", "display_name": "Ops"}
CHANNELS = {}  # id -> channel, with "members": set of user ids
ALERTS = {"id": new_id(), "team_id": TEAM["id"], "name": "alerts", "display_name": "Alerts",
          "type": "O", "members": {USERS["jira-bot"]["id"], USERS["splunk-bot"]["id"]}}
CHANNELS[ALERTS["id"]] = ALERTS
FILES = {}  # id -> {name, size, channel_id, user_id, attached}
POSTS = []
LOG = []
VIOLATIONS = []
FAULTS = []
# Server settings the tests change (POST /_test/settings): PrivacySettings.ShowEmailAddress;
# a bot whose view of users is restricted (403 for unknown addresses too); users the bots
# may not see; FileSettings.EnableFileAttachments and MaxImageResolution; file name endings
# a plugin's FileWillBeUploaded hook rejects.
SETTINGS = {"ShowEmailAddress": True, "RestrictedView": False, "Invisible": [],
            "EnableFileAttachments": True, "MaxImageResolution": 33177600,
            "PluginRejects": [], "PendingTTL": 30}
# pending_post_id -> the post made with it, and when (the server's 30 s dedup cache).
PENDING = {}


def public(channel):
    return {k: v for k, v in channel.items() if k != "members"}


class Problem(Exception):
    """An error answer; `error_id` is the server's error id (the `id` field)."""
    def __init__(self, status, message, violation=True, error_id="api.standin.error"):
        super().__init__(message)
        self.status, self.message, self.violation = status, message, violation
        self.error_id = error_id


def png_size(data):
    """A PNG's width and height from its IHDR chunk, or None."""
    if data[:8] != b"\x89PNG\r\n\x1a\n" or data[12:16] != b"IHDR":
        return None
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


def is_id(value):
    return isinstance(value, str) and len(value) == 26 and value.isalnum()


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def send(self, status, body, headers=(), raw=None):
        data = raw if raw is not None else json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "text/plain" if raw is not None else "application/json")
        self.send_header("Content-Length", str(len(data)))
        for name, value in headers:
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)

    def error(self, status, message, headers=(), error_id="api.standin.error"):
        self.send(status, {"id": error_id, "message": message,
                           "request_id": new_id(), "status_code": status, "is_oauth": False},
                  headers)

    def do_GET(self):
        self.handle_request("GET")

    def do_POST(self):
        self.handle_request("POST")

    def do_PUT(self):
        self.handle_request("PUT")

    def do_DELETE(self):
        self.handle_request("DELETE")

    def handle_request(self, method):
        url = urlsplit(self.path)
        path = url.path
        length = int(self.headers.get("Content-Length") or 0)
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            body = self.read_chunked()
        else:
            body = self.rfile.read(length)
        try:
            if path.startswith("/_test/"):
                return self.control(method, path, body)
            with LOCK:
                fault = self.fault(method, path)
            if fault and fault[2] is None:
                status, headers, _ = fault
                with LOCK:
                    LOG.append({"method": method, "path": path, "fault": status,
                                "at": time.time()})
                if status == 429:
                    # The rate limiter's own answer (throttled): plain text.
                    return self.send(429, None, headers, raw=b"limit exceeded\n")
                return self.error(status, "injected fault", headers)
            if path.startswith("/hooks/"):
                return self.hook(method, path, body)
            if not path.startswith("/api/v4/"):
                raise Problem(404, f"no such path {path}")
            if path == "/api/v4/system/ping" and method == "GET":
                # The health check: no session needed (API v4 reference, "Check system health").
                return self.send(200, {"status": "OK", "ActiveSearchBackend": "database"})
            bot = self.authenticate()
            entry = {"method": method, "path": path, "bot": bot["username"], "at": time.time()}
            status, answer = self.api(method, path, parse_qs(url.query), body, bot, entry)
            if fault and fault[2] == "pass":
                # Served, with the fault's headers (X-Ratelimit-Remaining: 0 ...).
                entry["headers"] = dict(fault[1])
                with LOCK:
                    LOG.append(entry)
                return self.send(status, answer, fault[1])
            if fault:
                # Done, but the answer is lost on the way (a proxy's 502, a timeout).
                entry["fault"] = fault[0]
                with LOCK:
                    LOG.append(entry)
                return self.error(fault[0], "injected fault after the request was done",
                                  fault[1])
            with LOCK:
                LOG.append(entry)
            self.send(status, answer)
        except Problem as p:
            if p.violation:
                with LOCK:
                    VIOLATIONS.append(f"{method} {path}: {p.message}")
            self.error(p.status, p.message, error_id=p.error_id)

    def read_chunked(self):
        data = b""
        while True:
            size = int(self.rfile.readline().strip().split(b";")[0], 16)
            if size == 0:
                self.rfile.readline()
                return data
            data += self.rfile.read(size)
            self.rfile.readline()

    def fault(self, method, path):
        for f in FAULTS:
            if f["method"] == method and path.startswith(f["path"]) and f["times"] > 0:
                if f["skip"] > 0:
                    f["skip"] -= 1
                    return None
                f["times"] -= 1
                mode = "after" if f.get("after") else "pass" if f.get("pass") else None
                return f["status"], list(f.get("headers", {}).items()), mode
        return None

    def control(self, method, path, body):
        with LOCK:
            if path == "/_test/faults" and method == "POST":
                for f in json.loads(body):
                    f.setdefault("skip", 0)
                    f.setdefault("times", 1)
                    FAULTS.append(f)
                return self.send(200, {"ok": True})
            if path == "/_test/log":
                return self.send(200, LOG)
            if path == "/_test/posts":
                return self.send(200, POSTS)
            if path == "/_test/violations":
                return self.send(200, VIOLATIONS)
            if path == "/_test/users" and method == "POST":
                for name in json.loads(body)["names"]:
                    USERS.setdefault(name, user(name))
                return self.send(200, {"ok": True})
            if path == "/_test/users":
                return self.send(200, USERS)
            if path == "/_test/settings" and method == "POST":
                SETTINGS.update(json.loads(body))
                return self.send(200, {"ok": True})
            if path == "/_test/delete-post" and method == "POST":
                # As the server: the post stays, marked deleted (DeleteAt, UpdateAt).
                post_id = json.loads(body)["id"]
                now = int(time.time() * 1000)
                for p in POSTS:
                    if p["id"] == post_id:
                        p["delete_at"] = p["update_at"] = now
                return self.send(200, {"ok": True})
            if path == "/_test/limits" and method == "POST":
                global MAX_POST_SIZE
                MAX_POST_SIZE = json.loads(body)["MaxPostSize"]
                return self.send(200, {"ok": True})
        raise Problem(404, "unknown control path", violation=False)

    def authenticate(self):
        header = self.headers.get("Authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme != "Bearer" or not token:
            raise Problem(401, "no bearer token")
        if token not in TOKENS:
            # A token the server does not know: its answer, not the client's mistake.
            raise Problem(401, "Invalid or expired session, please login again.",
                          violation=False)
        return USERS[TOKENS[token]]

    def json_body(self, body):
        if self.headers.get("Content-Type", "").split(";")[0].strip() != "application/json":
            raise Problem(400, "Content-Type must be application/json")
        try:
            return json.loads(body)
        except ValueError:
            raise Problem(400, "body is not JSON")

    def api(self, method, path, query, body, bot, entry):
        parts = [unquote(p) for p in path[len("/api/v4/"):].split("/")]
        if method == "GET":
            if body:
                raise Problem(400, "GET with a body")
            if parts == ["users", "me"]:
                return 200, bot
            if len(parts) == 3 and parts[:2] == ["users", "email"]:
                # As api4/user.go getUserByEmail: addresses hidden first, then the lookup,
                # then whether the caller may see the user.
                if not SETTINGS["ShowEmailAddress"]:
                    raise Problem(403, "Unable to get user by email.", violation=False,
                                  error_id="api.user.get_user_by_email.permissions.app_error")
                found = [u for u in USERS.values() if u["email"] == parts[2].lower()]
                if not found and SETTINGS["RestrictedView"]:
                    raise Problem(403, "You do not have the appropriate permissions.",
                                  violation=False, error_id="api.context.permissions.app_error")
                if not found:
                    raise Problem(404, "Unable to find the user.", violation=False,
                                  error_id="app.user.missing_account.const")
                if found[0]["username"] in SETTINGS["Invisible"]:
                    raise Problem(403, "You do not have the appropriate permissions.",
                                  violation=False, error_id="api.context.permissions.app_error")
                return 200, found[0]
            if len(parts) == 3 and parts[:2] == ["users", "username"]:
                if parts[2] not in USERS:
                    raise Problem(404, "Unable to find the user.", violation=False,
                                  error_id="app.user.missing_account.const")
                if parts[2] in SETTINGS["Invisible"]:
                    raise Problem(403, "You do not have the appropriate permissions.",
                                  violation=False, error_id="api.context.permissions.app_error")
                return 200, USERS[parts[2]]
            if len(parts) == 2 and parts[0] == "posts":
                with LOCK:
                    found = [p for p in POSTS if p["id"] == parts[1] and not p.get("delete_at")]
                if not found:
                    raise Problem(404, "Unable to find the post.", violation=False,
                                  error_id="app.post.get.app_error")
                return 200, {k: v for k, v in found[0].items()
                             if k not in ("bot", "files", "to", "channel")}
            if len(parts) == 3 and parts[0] == "channels" and parts[2] == "posts":
                return 200, self.channel_posts(parts[1], query, bot)
            if parts == ["config", "client"]:
                if query.get("format") != ["old"]:
                    raise Problem(501, "format=old is required")
                config = {"MaxPostSize": str(MAX_POST_SIZE), "Version": "9.11.0"}
                if ANNOUNCE_FILE_LIMIT:
                    config["MaxFileSize"] = str(MAX_FILE_SIZE)
                return 200, config
            if len(parts) == 6 and parts[0] == "teams" and parts[1] == "name" \
                    and parts[3:5] == ["channels", "name"]:
                for c in CHANNELS.values():
                    if parts[2] == TEAM["name"] and c.get("team_id") == TEAM["id"] \
                            and c["name"] == parts[5]:
                        if bot["id"] not in c["members"]:
                            raise Problem(403, "not a member", violation=False)
                        return 200, public(c)
                raise Problem(404, "Unable to find the channel.", violation=False)
        if method == "POST" and parts == ["channels", "direct"]:
            ids = self.json_body(body)
            entry["json"] = ids
            if not (isinstance(ids, list) and len(ids) == 2 and all(is_id(i) for i in ids)):
                raise Problem(400, "body must be an array of two user ids")
            if bot["id"] not in ids:
                raise Problem(403, "the caller must be one of the two users")
            known = {u["id"] for u in USERS.values()}
            if not all(i in known for i in ids):
                raise Problem(400, "unknown user id")
            name = "__".join(sorted(ids))
            with LOCK:
                for c in CHANNELS.values():
                    if c["name"] == name:
                        return 201, public(c)
                channel = {"id": new_id(), "team_id": "", "name": name, "type": "D",
                           "display_name": "", "members": set(ids)}
                CHANNELS[channel["id"]] = channel
            return 201, public(channel)
        if method == "POST" and parts == ["files"]:
            return self.upload(body, bot, entry)
        if method == "POST" and parts == ["posts"]:
            return self.post(self.json_body(body), bot, entry)
        raise Problem(404, f"no such API {method} {path}")

    def upload(self, body, bot, entry):
        content_type = self.headers.get("Content-Type", "")
        if not content_type.startswith("multipart/form-data") or "boundary=" not in content_type:
            raise Problem(400, "files must be multipart/form-data with a boundary")
        message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
            b"Content-Type: " + content_type.encode() + b"\r\nMIME-Version: 1.0\r\n\r\n" + body)
        fields, files = {}, []
        for part in message.iter_parts():
            disposition = part.get("Content-Disposition", "")
            if not disposition.startswith("form-data"):
                raise Problem(400, "a part without Content-Disposition: form-data")
            name, filename = part.get_param("name", header="content-disposition"), \
                part.get_filename()
            data = part.get_payload(decode=True) or b""
            if name == "files":
                if not filename:
                    raise Problem(400, "a files part without a filename")
                if "channel_id" not in fields:
                    # The server reads the form as a stream: the channel must come first.
                    raise Problem(400, "channel_id must come before the files")
                files.append((filename, data))
            elif name in ("channel_id", "client_ids"):
                fields[name] = data.decode()
            else:
                raise Problem(400, f"unknown multipart field {name!r}")
        entry["fields"] = fields
        entry["files"] = [{"name": n, "size": len(d)} for n, d in files]
        channel = CHANNELS.get(fields.get("channel_id", ""))
        if not channel:
            raise Problem(400, "channel_id missing or unknown")
        if bot["id"] not in channel["members"]:
            raise Problem(403, "the caller is not a member of the channel")
        if not files:
            raise Problem(400, "no files")
        if not SETTINGS["EnableFileAttachments"]:
            raise Problem(403, "File attachments have been disabled on this server.",
                          violation=False, error_id="api.file.attachments.disabled.app_error")
        if any(len(d) > MAX_FILE_SIZE for _, d in files):
            raise Problem(413, "Unable to upload file. File is too large.", violation=False,
                          error_id="api.file.upload_file.too_large_detailed.app_error")
        for name, data in files:
            size = png_size(data)
            if size and size[0] * size[1] > SETTINGS["MaxImageResolution"]:
                raise Problem(400, f"Unable to upload image file. File is too large: {name}",
                              violation=False,
                              error_id="api.file.upload_file.large_image_detailed.app_error")
            if any(name.endswith(end) for end in SETTINGS["PluginRejects"]):
                raise Problem(400, f"File rejected by plugin. Reason: {name} is not allowed",
                              violation=False, error_id="app.upload.run_plugins_hook.rejected")
        infos = []
        with LOCK:
            for name, data in files:
                info = {"id": new_id(), "name": name, "size": len(data),
                        "user_id": bot["id"], "extension": name.rpartition(".")[2]}
                FILES[info["id"]] = dict(info, channel_id=channel["id"], attached=False,
                                         data=data.decode("latin-1"))
                infos.append(info)
        return 201, {"file_infos": infos, "client_ids": []}

    def post(self, body, bot, entry):
        entry["json"] = body
        if not isinstance(body, dict):
            raise Problem(400, "the post must be a JSON object")
        unknown = set(body) - {"channel_id", "message", "file_ids", "root_id", "props",
                               "pending_post_id"}
        if unknown:
            raise Problem(400, f"unknown post fields {sorted(unknown)}")
        channel = CHANNELS.get(body.get("channel_id"))
        if not is_id(body.get("channel_id")) or not channel:
            raise Problem(400, "channel_id missing or unknown")
        if bot["id"] not in channel["members"]:
            raise Problem(403, "the caller is not a member of the channel")
        message = body.get("message", "")
        file_ids = body.get("file_ids", [])
        if not isinstance(message, str) or not isinstance(file_ids, list):
            raise Problem(400, "message must be a string and file_ids an array")
        if len(message) > MAX_POST_SIZE:
            # The server's answer (model.Post.IsValid), e.g. after its limit was lowered.
            raise Problem(400, f"message longer than {MAX_POST_SIZE} characters",
                          violation=False,
                          error_id="model.post.is_valid.message_length.app_error")
        if not message and not file_ids:
            raise Problem(400, "an empty post")
        if len(file_ids) > 5:
            raise Problem(400, "more than 5 file_ids")
        if "props" in body and not isinstance(body["props"], dict):
            raise Problem(400, "props must be an object")
        root = body.get("root_id", "")
        pending = body.get("pending_post_id", "")
        with LOCK:
            seen = PENDING.get(pending)
            if pending and seen and time.time() - seen[1] < SETTINGS["PendingTTL"]:
                # The server's dedup cache (app/post.go deduplicateCreatePost): the post
                # made with this pending_post_id within 30 s is the answer.
                return 201, seen[0]
            if root and not any(p["id"] == root and p["channel_id"] == channel["id"]
                                and not p["root_id"] and not p.get("delete_at")
                                for p in POSTS):
                # A root deleted meanwhile, or in another channel (CreatePostAsUser).
                raise Problem(400, "Invalid RootId parameter.", violation=False,
                              error_id="api.post.create_post.root_id.app_error")
            for f in file_ids:
                info = FILES.get(f)
                if not info or info["user_id"] != bot["id"] or info["channel_id"] != channel["id"]:
                    raise Problem(400, f"file {f} was not uploaded by the caller to this channel")
                if info["attached"]:
                    raise Problem(400, f"file {f} is attached to another post")
            for f in file_ids:
                FILES[f]["attached"] = True
            post = {"id": new_id(), "create_at": int(time.time() * 1000), "user_id": bot["id"],
                    "channel_id": channel["id"], "root_id": root, "message": message,
                    "file_ids": file_ids, "props": body.get("props", {}), "type": "",
                    "pending_post_id": pending, "update_at": int(time.time() * 1000),
                    "delete_at": 0, "original_id": ""}
            if pending:
                PENDING[pending] = (post, time.time())
            POSTS.append(dict(post, bot=bot["username"],
                              files=[FILES[f]["name"] for f in file_ids],
                              to=sorted(u["username"] for u in USERS.values()
                                        if u["id"] in channel["members"] and not u["is_bot"]),
                              channel=channel["name"]))
        return 201, post

    def channel_posts(self, channel_id, query, bot):
        """GET /channels/{id}/posts: a PostList, newest first (`since` in ms: every post
        made after it; else `page` and `per_page`, at most 200)."""
        channel = CHANNELS.get(channel_id)
        if not is_id(channel_id) or not channel:
            raise Problem(404, "Unable to find the channel.", violation=False)
        if bot["id"] not in channel["members"]:
            raise Problem(403, "You do not have the appropriate permissions.",
                          violation=False, error_id="api.context.permissions.app_error")
        known = {"since", "page", "per_page", "before", "after"}
        if set(query) - known:
            raise Problem(400, f"unknown query parameters {sorted(set(query) - known)}")
        with LOCK:
            posts = [p for p in POSTS if p.get("channel_id") == channel_id]
        posts.sort(key=lambda p: p["create_at"], reverse=True)
        if "since" in query:
            # Posts changed since then (deleted ones included), 1000 at most.
            since = int(query["since"][0])
            posts = [p for p in posts if p["update_at"] > since][:1000]
        else:
            per_page = min(int(query.get("per_page", ["60"])[0]), 200)
            page = int(query.get("page", ["0"])[0])
            posts = posts[page * per_page:(page + 1) * per_page]
        keys = ("id", "create_at", "update_at", "delete_at", "user_id", "channel_id",
                "root_id", "original_id", "message", "file_ids", "props", "type",
                "pending_post_id")
        return {"order": [p["id"] for p in posts],
                "posts": {p["id"]: {k: p.get(k) for k in keys} for p in posts},
                "next_post_id": "", "prev_post_id": ""}

    def hook(self, method, path, body):
        if method != "POST" or path != "/hooks/hook123":
            raise Problem(404, "unknown webhook")
        payload = self.json_body(body)
        if not isinstance(payload, dict) or not isinstance(payload.get("text"), str):
            raise Problem(400, "a webhook payload needs text")
        allowed = {"text", "channel", "username", "icon_url", "icon_emoji", "attachments",
                   "props", "type"}
        unknown = set(payload) - allowed
        if unknown:
            raise Problem(400, f"unknown webhook fields {sorted(unknown)}")
        if "type" in payload and not str(payload["type"]).startswith("custom_"):
            raise Problem(400, "type must start with custom_")
        with LOCK:
            LOG.append({"method": method, "path": path, "json": payload})
            POSTS.append({"id": new_id(), "bot": "webhook", "message": payload["text"],
                          "channel": payload.get("channel", ""), "files": [], "root_id": ""})
        self.send(200, None, raw=b"ok")


def main():
    global MAX_POST_SIZE, MAX_FILE_SIZE, ANNOUNCE_FILE_LIMIT
    port = int(sys.argv[1])
    if len(sys.argv) > 2:
        MAX_POST_SIZE = int(sys.argv[2])
    if len(sys.argv) > 3:
        MAX_FILE_SIZE = int(sys.argv[3])
    if len(sys.argv) > 4:
        ANNOUNCE_FILE_LIMIT = sys.argv[4] != "0"
    ThreadingHTTPServer(("127.0.0.1", port), Handler).serve_forever()


if __name__ == "__main__":
    main()
