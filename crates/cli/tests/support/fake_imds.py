#!/usr/bin/env python3
"""A small fake Azure IMDS / WireServer for the probe's black-box tests.

It only ever binds 127.0.0.1 and is started by the tests INSIDE a network namespace of
their own (only loopback), next to the probe. One port per behaviour:

  18080  an open IMDS: 400 without `Metadata: true`, the instance document, tokens
         (resource https://vault.azure.net -> 429; resource https://error.invalid/ -> 500;
         unknown client_id -> 400 "Identity not found")
  18081  the imdsguard filtering proxy: 403 with the imdsguard denial on every request
  18082  accepts connections and never answers
  18083  a listener whose accept queue is full: connections time out
  18084  nothing listens: connections are refused
  18085  resets every connection once the request arrives
  18086  an open IMDS on a VM with several user-assigned identities and no system-assigned
         one: as 18080, but a token request without identity selector gets 400
         "Multiple user assigned identities exist"
  18090  WireServer: goal state XML (needs `x-ms-version`)
  18091  HostGAPlugin: vmSettings JSON

Usage: fake_imds.py DIR   (writes DIR/ready when listening, logs requests to
DIR/requests.jsonl, header names in lower case). The token it hands out is $FAKE_IMDS_TOKEN.
"""

import json
import os
import socket
import struct
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

HOST = "127.0.0.1"
DIR = sys.argv[1]
TOKEN = os.environ.get("FAKE_IMDS_TOKEN", "opaque-token")
KUBELET = "aaaaaaaa-0000-4000-8000-000000000001"
LOG_LOCK = threading.Lock()
MULTIPLE = ("Multiple user assigned identities exist, please specify the clientId / "
            "resourceId of the identity in the token request")

INSTANCE = {
    "compute": {
        "azEnvironment": "AzurePublicCloud",
        "location": "westeurope",
        "name": "aks-nodepool1-12345678-vmss_0",
        "osProfile": {
            "adminUsername": "azureuser",
            "computerName": "aks-nodepool1-12345678-vmss000000",
            "disablePasswordAuthentication": "true",
        },
        "publicKeys": [
            {"keyData": "ssh-rsa AAAAB3NzaFAKEKEYMATERIAL", "path": "/home/azureuser/.ssh/authorized_keys"}
        ],
        "resourceGroupName": "MC_rg-prod_aks-prod_westeurope",
        "subscriptionId": "00000000-1111-4222-8333-444444444444",
        "vmScaleSetName": "aks-nodepool1-12345678-vmss",
        "customData": "",
        "userData": "I2Nsb3VkLWNvbmZpZyBzZWNyZXQ=",
        "tags": f"aks-managed-kubeletIdentityClientID:{KUBELET};aks-managed-poolName:nodepool1",
        "tagsList": [
            {"name": "aks-managed-kubeletIdentityClientID", "value": KUBELET},
            {"name": "aks-managed-poolName", "value": "nodepool1"},
        ],
    },
    "network": {"interface": []},
}

DENIAL = {
    "error": "imdsguard_denied",
    "imdsguard": {
        "decision": "deny",
        "rule": "deny-all-pods",
        "reason": "pods may not reach IMDS on this node",
        "help": "ask the platform team for an exception",
    },
}

GOALSTATE = """<?xml version="1.0" encoding="utf-8"?>
<GoalState><Version>2012-11-30</Version><Incarnation>3</Incarnation>
<Machine><ExpectedState>Started</ExpectedState></Machine>
<Container><ContainerId>11111111-2222-3333-4444-555555555555</ContainerId></Container>
</GoalState>"""

VMSETTINGS = {
    "hostGAPluginVersion": "1.0.8.143",
    "extensionGoalStates": [
        {"name": "Microsoft.AKS.Compute.AKS.Linux.AKSNode", "settings": [
            {"protectedSettings": "MIIBFAKEENCRYPTED", "publicSettings": "{}"}]},
    ],
}


def log(port, handler):
    headers = {k.lower(): v for k, v in handler.headers.items()}
    entry = {"port": port, "path": handler.path, "headers": headers}
    with LOG_LOCK, open(os.path.join(DIR, "requests.jsonl"), "a") as f:
        f.write(json.dumps(entry) + "\n")


def handler_for(port):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):
            pass

        def send(self, status, body, content_type="application/json"):
            data = body if isinstance(body, bytes) else (
                body.encode() if isinstance(body, str) else json.dumps(body).encode())
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self):
            log(port, self)
            url = urlsplit(self.path)
            query = parse_qs(url.query)
            if port == 18081:
                return self.send(403, DENIAL)
            if port == 18090:
                if self.headers.get("x-ms-version") is None:
                    return self.send(400, "missing x-ms-version", "text/plain")
                return self.send(200, GOALSTATE, "text/xml")
            if port == 18091:
                return self.send(200, VMSETTINGS)
            # 18080 and 18086: an open IMDS.
            if self.headers.get("Metadata") != "true":
                return self.send(400, {"error": "Bad request. Required metadata header not specified"})
            if self.headers.get("X-Forwarded-For") is not None:
                return self.send(400, {"error": "X-Forwarded-For is not allowed"})
            if "api-version" not in query:
                return self.send(400, {"error": "Bad request. api-version is invalid or was not specified in the request."})
            if url.path == "/metadata/instance":
                return self.send(200, INSTANCE)
            if url.path == "/metadata/identity/oauth2/token":
                resource = query.get("resource", [""])[0]
                client_id = query.get("client_id", [None])[0]
                if not resource:
                    return self.send(400, {"error": "invalid_resource", "error_description": "no resource"})
                selectors = ("client_id", "object_id", "msi_res_id", "mi_res_id")
                if port == 18086 and not any(query.get(s, [""])[0] for s in selectors):
                    return self.send(400, {"error": "invalid_request", "error_description": MULTIPLE})
                if resource == "https://vault.azure.net":
                    return self.send(429, {"error": "too_many_requests", "error_description": "throttled"})
                if resource == "https://error.invalid/":
                    return self.send(500, {"error": "unknown", "error_description": "token service failed"})
                if client_id is not None and client_id != KUBELET:
                    return self.send(400, {"error": "invalid_request", "error_description": "Identity not found"})
                now = int(time.time())
                return self.send(200, {
                    "access_token": TOKEN, "refresh_token": "", "expires_in": "3599",
                    "expires_on": str(now + 3599), "not_before": str(now), "resource": resource,
                    "token_type": "Bearer", "client_id": KUBELET,
                })
            return self.send(404, {"error": "Not found"})

    return Handler


def serve_http(port):
    server = ThreadingHTTPServer((HOST, port), handler_for(port))
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()


def listener(port, backlog=16):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((HOST, port))
    s.listen(backlog)
    return s


def hang(port):
    s = listener(port)
    held = []

    def loop():
        while True:
            conn, _ = s.accept()
            held.append(conn)  # never answered, never closed

    threading.Thread(target=loop, daemon=True).start()


def full_backlog(port):
    # listen(0) holds one connection in the accept queue; nobody accepts, so once it is
    # full the kernel drops further SYNs and connections time out.
    s = listener(port, 0)
    fillers = []
    for _ in range(3):
        c = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        c.setblocking(False)
        try:
            c.connect((HOST, port))
        except BlockingIOError:
            pass
        fillers.append(c)
    time.sleep(0.1)
    return s, fillers


def reset(port):
    s = listener(port)

    def kill(conn):
        # Wait for the request (or the client's close), then reset: like a filter that
        # injects a RST once it sees the HTTP request.
        try:
            conn.recv(1)
        finally:
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            conn.close()

    def loop():
        while True:
            conn, _ = s.accept()
            threading.Thread(target=kill, args=(conn,), daemon=True).start()

    threading.Thread(target=loop, daemon=True).start()


def main():
    for port in (18080, 18081, 18086, 18090, 18091):
        serve_http(port)
    hang(18082)
    keep = full_backlog(18083)
    reset(18085)
    with open(os.path.join(DIR, "ready"), "w") as f:
        f.write("ready\n")
    try:
        while True:
            time.sleep(3600)
    finally:
        del keep


if __name__ == "__main__":
    main()
