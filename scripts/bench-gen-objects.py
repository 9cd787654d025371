#!/usr/bin/env python3
"""Objects for the controller and agent benchmarks (scripts/bench-controller.sh,
scripts/bench-agent-watch.sh), one JSON object a line, ready for `kubectl create -f`.

  bench-gen-objects.py namespaces PREFIX FROM COUNT
      Namespaces PREFIX-FROM .. PREFIX-(FROM+COUNT-1), with team/env labels.
  bench-gen-objects.py pods PREFIX NAMESPACES PODS [NODES]
      PODS Pods spread round-robin over the namespaces PREFIX-0 .. PREFIX-(NAMESPACES-1);
      with NODES, pod i gets spec.nodeName node-(i % NODES) (else none).
  bench-gen-objects.py status PODS_FILE
      For each pod of PODS_FILE its status (phase Running, podIP/podIPs from its index),
      for `kubectl replace --subresource=status -f`.

The pods have the shape of a Deployment's pods (owner ReplicaSet, labels, two
containers with env, resources, probes, volume mounts; annotations), about 2 KB of JSON
each, so what a client lists and keeps is near what a real cluster's pods weigh.
"""

import json
import sys


def namespaces(prefix, start, count):
    for i in range(start, start + count):
        yield {
            "apiVersion": "v1",
            "kind": "Namespace",
            "metadata": {
                "name": f"{prefix}-{i}",
                "labels": {"team": f"team-{i % 50}", "env": ["prod", "staging", "dev"][i % 3]},
            },
        }


def pod(prefix, i, n_ns, nodes):
    ns = f"{prefix}-{i % n_ns}"
    app = f"app-{(i // n_ns) % 5}"
    name = f"{app}-7d9f8b6c4-{i:06d}"
    p = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "namespace": ns,
            "labels": {
                "app": app,
                "app.kubernetes.io/name": app,
                "app.kubernetes.io/part-of": f"svc-{i % 7}",
                "pod-template-hash": "7d9f8b6c4",
            },
            "annotations": {
                "kubectl.kubernetes.io/restartedAt": "2026-11-20T10:00:00Z",
                "prometheus.io/scrape": "true",
                "prometheus.io/port": "9090",
            },
            "ownerReferences": [
                {
                    "apiVersion": "apps/v1",
                    "kind": "ReplicaSet",
                    "name": f"{app}-7d9f8b6c4",
                    "uid": f"00000000-0000-4000-8000-{i % 1000000:012d}",
                    "controller": True,
                    "blockOwnerDeletion": True,
                }
            ],
        },
        "spec": {
            "serviceAccountName": "default",
            "automountServiceAccountToken": False,
            "containers": [
                {
                    "name": "main",
                    "image": f"registry.example.com/{app}:1.{i % 20}.3",
                    "args": ["--listen=:8080", "--metrics=:9090", "--log-level=info"],
                    "ports": [
                        {"name": "http", "containerPort": 8080},
                        {"name": "metrics", "containerPort": 9090},
                    ],
                    "env": [
                        {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
                        {"name": "POD_NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
                        {"name": "GOMAXPROCS", "value": "2"},
                        {"name": "OTEL_EXPORTER_OTLP_ENDPOINT", "value": "http://otel-collector.observability:4317"},
                    ],
                    "resources": {
                        "requests": {"cpu": "100m", "memory": "128Mi"},
                        "limits": {"cpu": "1", "memory": "512Mi"},
                    },
                    "readinessProbe": {"httpGet": {"path": "/readyz", "port": 8080}, "periodSeconds": 10},
                    "livenessProbe": {"httpGet": {"path": "/healthz", "port": 8080}, "periodSeconds": 20},
                    "volumeMounts": [{"name": "config", "mountPath": "/etc/app", "readOnly": True}],
                },
                {
                    "name": "sidecar",
                    "image": "registry.example.com/log-shipper:3.2.1",
                    "resources": {"requests": {"cpu": "10m", "memory": "32Mi"}},
                },
            ],
            "volumes": [{"name": "config", "configMap": {"name": f"{app}-config"}}],
        },
    }
    if nodes:
        p["spec"]["nodeName"] = f"node-{i % nodes}"
    return p


def pods(prefix, n_ns, count, nodes):
    for i in range(count):
        yield pod(prefix, i, n_ns, nodes)


def statuses(path):
    with open(path) as f:
        for k, line in enumerate(f):
            p = json.loads(line)
            ip = f"10.{244 + k // 65000}.{(k // 250) % 256}.{k % 250 + 2}"
            yield {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {"name": p["metadata"]["name"], "namespace": p["metadata"]["namespace"]},
                "status": {
                    "phase": "Running",
                    "podIP": ip,
                    "podIPs": [{"ip": ip}],
                    "hostIP": "10.224.0.4",
                },
            }


def main(argv):
    out = sys.stdout
    if argv[1] == "namespaces":
        gen = namespaces(argv[2], int(argv[3]), int(argv[4]))
    elif argv[1] == "pods":
        gen = pods(argv[2], int(argv[3]), int(argv[4]), int(argv[5]) if len(argv) > 5 else 0)
    elif argv[1] == "status":
        gen = statuses(argv[2])
    else:
        sys.exit(__doc__)
    for o in gen:
        out.write(json.dumps(o, separators=(",", ":")))
        out.write("\n")


if __name__ == "__main__":
    main(sys.argv)
