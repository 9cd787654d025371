#!/usr/bin/env python3
"""Writes the test-derived seeds of fuzz/corpus/ again (see docs/fuzzing.md).

- manifest_parse: the manifests in the unit tests of crates/core/src/manifest.rs;
- canon_request, imds_validate: the requests below (canon.rs's bypass table and the
  IMDS endpoints), in the targets' request format;
- access_rules_parse, pod_index_parse: the rules and pods files in the tests of
  crates/core/src/access.rs and pods.rs, and the examples of docs/proxy.md.

Overwrites `test-*` files and the request seeds; other files (the examples, the
`regress-*` inputs that once found bugs) are left alone.
"""

import json
import os
import re

ROOT = os.path.dirname(os.path.abspath(__file__))
CORE = os.path.join(ROOT, "..", "crates", "core", "src")


def read(*path):
    with open(os.path.join(*path), encoding="utf-8") as f:
        return f.read()


def tests_of(path):
    text = read(path)
    return text[text.index("mod tests"):] if "mod tests" in text else ""


def literals(text):
    """Rust string literals: r#"..."# and "..." (escapes read as JSON's)."""
    for m in re.finditer(r'r#"((?:.|\n)*?)"#|"((?:[^"\\\n]|\\.)*)"', text):
        if m.group(1) is not None:
            yield m.group(1)
        else:
            try:
                yield json.loads('"' + m.group(2) + '"')
            except ValueError:
                pass


def write(target, items):
    d = os.path.join(ROOT, "corpus", target)
    os.makedirs(d, exist_ok=True)
    for i, s in enumerate(dict.fromkeys(items)):
        ext = "json" if s.lstrip().startswith(("{", "[")) else "yaml"
        with open(os.path.join(d, f"test-{i:02}.{ext}"), "w", encoding="utf-8") as f:
            f.write(s)


def manifests():
    tests = tests_of(os.path.join(CORE, "manifest.rs"))
    if not tests:  # split into a folder
        tests = "".join(
            tests_of(os.path.join(CORE, "manifest", f))
            for f in sorted(os.listdir(os.path.join(CORE, "manifest")))
            if f.endswith(".rs")
        )
    pat = r'let (?:text|doc|json) = ("(?:[^"\\]|\\.)*"|r#"(?:.|\n)*?"#);'
    for m in re.finditer(pat, tests):
        lit = m.group(1)
        yield lit[3:-2] if lit.startswith("r#") else json.loads(lit)


T = "/metadata/identity/oauth2/token"
Q = "api-version=2018-02-01&resource=https%3A%2F%2Fmanagement.azure.com%2F"
KUBELET = "2D7B9C41-6E83-4F1A-B5C2-8A9E0F3D1C67"
MI = "/subscriptions/s/resourceGroups/rg/providers/Microsoft.ManagedIdentity/userAssignedIdentities/kv"
OK = "\nMetadata: true"
REQUESTS = {
    "token": f"GET {T}?{Q}{OK}",
    "token-client-id": f"GET {T}?{Q}&client_id={KUBELET}{OK}",
    "token-two-selectors": f"GET {T}?{Q}&client_id={KUBELET}&mi_res_id={MI}{OK}",
    "token-empty-selector": f"GET {T}?{Q}&client_id=&mi_res_id={MI}{OK}",
    "token-msi-res-id": f"GET {T}?api-version=2018-02-01&resource=https://vault.azure.net&msi_res_id={MI}{OK}",
    "token-trailing-slash": f"GET {T}/?{Q}{OK}",
    "token-double-slash": f"GET /metadata//identity/oauth2/token?{Q}{OK}",
    "token-dot-dot": f"GET /metadata/instance/../identity/oauth2/token?{Q}{OK}",
    "token-case": f"GET /Metadata/Identity/OAuth2/Token?{Q}{OK}",
    "token-encoded-slash": f"GET /metadata/identity%2foauth2/token?{Q}{OK}",
    "token-encoded-dot": f"GET /metadata/identity/%2E%2E/identity/oauth2/token?{Q}{OK}",
    "token-double-encoding": f"GET /metadata/identity/oauth2/%2574oken?{Q}{OK}",
    "token-escaped-letter": f"GET /metadata/identity/oauth2/%74oken?{Q}{OK}",
    "token-backslash": f"GET /metadata/identity%5coauth2%5ctoken?{Q}{OK}",
    "token-bad-escape": f"GET /metadata/identity/oauth2/token%zz?{Q}{OK}",
    "token-semicolon": f"GET /metadata/identity/oauth2/token;x=y?{Q}{OK}",
    "token-fragment": f"GET /metadata/identity/oauth2/token?{Q}#frag{OK}",
    "token-absolute": f"GET http://169.254.169.254:80{T}?{Q}{OK}",
    "token-other-host": f"GET http://evil.example{T}?{Q}{OK}",
    "token-userinfo": f"GET http://169.254.169.254@evil{T}?{Q}{OK}",
    "token-repeated": f"GET {T}?api-version=2018-02-01&resource=https://a/&%72esource=https://b/{OK}",
    "token-upper-names": f"GET {T}?API-VERSION=2018-02-01&RESOURCE=https://management.azure.com/{OK}",
    "token-empty-pieces": f"GET {T}?api-version=2018-02-01&&resource=https://management.azure.com/&{OK}",
    "token-query-semicolon": f"GET {T}?api-version=2018-02-01;resource=https://management.azure.com/{OK}",
    "token-value-plus": f"GET {T}?api-version=2018-02-01&resource=https://a/+x{OK}",
    "token-unknown-param": f"GET {T}?{Q}&principal_id=x{OK}",
    "token-forwarded": f"GET {T}?{Q}{OK}\nX-Forwarded-For: 10.0.0.1",
    "instance": f"GET /metadata/instance?api-version=2021-02-01{OK}",
    "instance-leaf-text": f"GET /metadata/instance/compute/vmId?api-version=2021-02-01&format=text{OK}",
    "instance-bad-format": f"GET /metadata/instance?api-version=2021-02-01&format=xml{OK}",
    "instance-no-version": "GET /metadata/instance\nmetadata: true\nMetadata: true",
    "instance-old-version": f"GET /metadata/instance?api-version=2017-03-01{OK}",
    "versions": "GET /metadata/versions\nMetadata: false",
    "attested": f"GET /metadata/attested/document?api-version=2020-09-01{OK}",
    "identity-info": f"GET /metadata/identity/info?api-version=2018-02-01{OK}",
    "scheduled-events-post": f"POST /metadata/scheduledevents?api-version=2020-07-01{OK}",
    "loadbalancer": f"GET /metadata/loadbalancer?api-version=2020-10-01{OK}",
    "put-instance": f"PUT /metadata/instance?api-version=2021-02-01{OK}",
    "asterisk": f"OPTIONS *{OK}",
    "unknown-path": f"GET /metadata/nothing?api-version=2021-02-01{OK}",
}


def main():
    write("manifest_parse", manifests())

    for target in ("canon_request", "imds_validate"):
        d = os.path.join(ROOT, "corpus", target)
        os.makedirs(d, exist_ok=True)
        for name, text in REQUESTS.items():
            with open(os.path.join(d, f"{name}.txt"), "w", encoding="utf-8") as f:
                f.write(text + "\n")

    docs = re.findall(r"```yaml\n((?:.|\n)*?)```", read(ROOT, "..", "docs", "proxy.md"))
    tests = tests_of(os.path.join(CORE, "access.rs"))
    rules = [s for s in literals(tests) if "rules" in s and ("name" in s or s.strip() in ("rules: []", "{}"))]
    write("access_rules_parse", rules + [b for b in docs if "rules:" in b][:1])

    tests = tests_of(os.path.join(CORE, "pods.rs"))
    short = ("", "pods:", "42", "pods: 42", "[{")
    pods = [
        s
        for s in literals(tests)
        if len(s) > 1 and ("namespace" in s or "items" in s or "metadata" in s or s.strip() in short)
    ]
    write("pod_index_parse", pods + [b for b in docs if "- ip:" in b][:1])


if __name__ == "__main__":
    main()
