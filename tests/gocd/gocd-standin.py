#!/usr/bin/python3
"""A GoCD server stand-in for tests: the two endpoints mail2alert's gocd manager reads, as
GoCD serves them, behind HTTP basic auth.

    gocd-standin.py PORT USER PASSWORD

  GET /go/api/config/pipeline_groups  JSON: [{"name": group, "pipelines": [{"name": ...,
                                      "label": "${COUNT}", "materials": [], "stages": []}]}]
  GET /go/cctray.xml                  <Projects> with one <Project> per stage and per job
                                      ("<pipeline> :: <stage>", "... :: <job>")

Either answers 401 with `WWW-Authenticate: Basic realm="GoCD"` without the right
`Authorization: Basic` header, and 404 for any other path.

Test control (not GoCD):
  POST /_test/groups   {"group": ["pipeline", ...], ...}: the groups from now on
  POST /_test/cctray   [{"name": "p :: s", "lastBuildStatus": "Success", "lastBuildTime": "..."}]
  POST /_test/down     {"down": true}: answer 503 to GoCD requests until set false
  GET  /_test/log      every GoCD request: {"path", "authorized"}
"""
import base64
import json
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from xml.sax.saxutils import quoteattr

LOCK = threading.Lock()
STATE = {"groups": {}, "cctray": [], "down": False, "log": []}


class Handler(BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def answer(self, status, body, content_type="application/json", headers=()):
        data = body.encode() if isinstance(body, str) else body
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        for name, value in headers:
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)

    def authorized(self):
        expected = "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
        return self.headers.get("Authorization") == expected

    def do_GET(self):
        if self.path == "/_test/log":
            with LOCK:
                return self.answer(200, json.dumps(STATE["log"]))
        authorized = self.authorized()
        with LOCK:
            STATE["log"].append({"path": self.path, "authorized": authorized})
            down = STATE["down"]
            groups = dict(STATE["groups"])
            cctray = list(STATE["cctray"])
        if self.path not in ("/go/api/config/pipeline_groups", "/go/cctray.xml"):
            return self.answer(404, '{"message": "not found"}')
        if not authorized:
            return self.answer(401, '{"message": "You are not authenticated!"}',
                               headers=[("WWW-Authenticate", 'Basic realm="GoCD"')])
        if down:
            return self.answer(503, "GoCD is starting up", "text/plain")
        if self.path == "/go/api/config/pipeline_groups":
            body = [{"name": g, "pipelines": [
                {"name": p, "label": "${COUNT}", "materials": [], "stages": []} for p in ps]}
                for g, ps in groups.items()]
            return self.answer(200, json.dumps(body))
        projects = "".join(
            "<Project name=%s activity=\"Sleeping\" lastBuildStatus=%s lastBuildLabel=\"1\" "
            "lastBuildTime=%s webUrl=\"http://gocd.test/go/pipelines\" />\n"
            % (quoteattr(p["name"]), quoteattr(p["lastBuildStatus"]), quoteattr(p["lastBuildTime"]))
            for p in cctray)
        xml = '<?xml version="1.0" encoding="utf-8"?>\n<Projects>\n' + projects + "</Projects>\n"
        return self.answer(200, xml, "application/xml; charset=utf-8")

    def do_POST(self):
        length = int(self.headers.get("Content-Length", "0"))
        body = json.loads(self.rfile.read(length) or b"null")
        with LOCK:
            if self.path == "/_test/groups":
                STATE["groups"] = body
            elif self.path == "/_test/cctray":
                STATE["cctray"] = body
            elif self.path == "/_test/down":
                STATE["down"] = bool(body["down"])
            else:
                return self.answer(404, "{}")
        return self.answer(200, "{}")


if __name__ == "__main__":
    PORT, USER, PASSWORD = int(sys.argv[1]), sys.argv[2], sys.argv[3]
    ThreadingHTTPServer(("127.0.0.1", PORT), Handler).serve_forever()
