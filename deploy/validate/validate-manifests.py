#!/usr/bin/env python3
"""Validate rendered Kubernetes manifests offline, strictly.

Usage: validate-manifests.py [--kubernetes-version 1.30] FILE [FILE ...]

Every object in the YAML streams must validate:
  * core kinds (Deployment, Service, HorizontalPodAutoscaler, ...) against the
    Kubernetes OpenAPI schemas that PyPI's kubernetes-validate ships (strict: an
    unknown field is an error);
  * custom resources (Istio, kgateway, Envoy Gateway, Gateway API, Prometheus
    Operator) against the CRD schemas vendored in crd-schemas/ beside this script,
    made strict the way the API server's field validation is: an object schema that
    lists its properties admits no others unless it says
    x-kubernetes-preserve-unknown-fields.
An object of a kind with neither schema is an error, not a warning. Prints one line
per object; exits 1 if any failed.
"""

import argparse
import copy
import json
import pathlib
import sys

import jsonschema
import kubernetes_validate
import yaml

SCHEMAS = pathlib.Path(__file__).resolve().parent / "crd-schemas"


def strict(node):
    """A copy of a CRD schema in which listed properties are the only ones allowed."""
    if isinstance(node, list):
        return [strict(n) for n in node]
    if not isinstance(node, dict):
        return node
    out = {}
    for key, value in node.items():
        if key in ("properties", "patternProperties"):
            out[key] = {name: strict(schema) for name, schema in value.items()}
        else:
            out[key] = strict(value)
    if (
        "properties" in out
        and "additionalProperties" not in out
        and not out.get("x-kubernetes-preserve-unknown-fields")
    ):
        out["additionalProperties"] = False
    return out


def crd_schema(obj):
    api_version = str(obj.get("apiVersion", ""))
    if "/" not in api_version:
        return None
    group, version = api_version.split("/", 1)
    path = SCHEMAS / group / f"{str(obj.get('kind', '')).lower()}_{version}.json"
    if not path.is_file():
        return None
    schema = json.loads(path.read_text())
    # Every object has these; some CRDs (Istio's) leave them out of their schema.
    root = schema.setdefault("properties", {})
    root.setdefault("apiVersion", {"type": "string"})
    root.setdefault("kind", {"type": "string"})
    root.setdefault("metadata", {"type": "object", "x-kubernetes-preserve-unknown-fields": True})
    return strict(schema)


def describe(obj):
    meta = obj.get("metadata") or {}
    ns = meta.get("namespace")
    name = meta.get("name", "?")
    return f"{obj.get('kind', '?')} {ns + '/' if ns else ''}{name} ({obj.get('apiVersion', '?')})"


def validate(obj, version):
    """None when `obj` is valid, else why not."""
    schema = crd_schema(obj)
    if schema is not None:
        validator = jsonschema.Draft7Validator(schema)
        errors = sorted(validator.iter_errors(obj), key=lambda e: list(e.absolute_path))
        if errors:
            return "; ".join(
                f"{'.'.join(str(p) for p in e.absolute_path) or '<root>'}: {e.message}"
                for e in errors[:5]
            )
        return None
    try:
        kubernetes_validate.validate(copy.deepcopy(obj), version, strict=True)
    except kubernetes_validate.ValidationError as e:
        path = ".".join(str(p) for p in e.path)
        return f"{path or '<root>'}: {e.message}"
    except kubernetes_validate.SchemaNotFoundError:
        return "no schema: neither a Kubernetes kind nor a vendored CRD schema"
    return None


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kubernetes-version", default="1.30")
    parser.add_argument("files", nargs="+")
    args = parser.parse_args()
    failed = 0
    checked = 0
    for name in args.files:
        text = sys.stdin.read() if name == "-" else pathlib.Path(name).read_text()
        for obj in yaml.safe_load_all(text):
            if not obj:
                continue
            checked += 1
            problem = validate(obj, args.kubernetes_version)
            if problem:
                failed += 1
                print(f"FAIL {name}: {describe(obj)}: {problem}")
            else:
                print(f"ok   {name}: {describe(obj)}")
    print(f"{checked} objects, {failed} failed (Kubernetes {args.kubernetes_version})")
    if checked == 0:
        print("no objects to validate")
        return 1
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
