#!/usr/bin/env python3
"""Extract the openAPIV3Schema of a CustomResourceDefinition into a compact JSON file.

Usage:
    python3 extract.py CRD.yaml [CRD.yaml ...] [--kind KIND] [--version VERSION] [--out-dir DIR]

Each input may be a multi-document YAML stream (e.g. Istio's crd-all.gen.yaml); every
CustomResourceDefinition in it is considered, filtered by --kind when given (repeatable).
Use "-" to read a single stream from stdin, e.g.

    git --git-dir=... show TAG:path/to/crd.yaml | python3 extract.py - --kind EnvoyFilter

For each selected CRD the version that is both served and the storage version is used
(or --version), and its schema is written to

    <out-dir>/<spec.group>/<kind lower-case>_<version>.json

with `description` fields stripped (only the annotation keyword of schema objects; a
property that happens to be *named* "description" is kept), keys sorted and compact
separators, to keep the vendored files small. Everything else (type, enum, required,
pattern, format, x-kubernetes-*, additionalProperties, oneOf/anyOf/allOf, ...) is kept.

Requires PyYAML.
"""

import argparse
import json
import os
import sys

import yaml

# Keys whose value is a map of <name> -> schema (the names are data, not keywords).
_SCHEMA_MAPS = ("properties", "patternProperties", "definitions", "$defs")


def strip_descriptions(node, names_level=False):
    """Return a copy of a JSON-schema tree without `description` annotations.

    names_level is True when `node` is a properties-like map, whose keys are field
    names (so a field called "description" must be kept).
    """
    if isinstance(node, dict):
        out = {}
        for key, value in node.items():
            if not names_level and key == "description" and isinstance(value, str):
                continue
            child_is_names = (not names_level) and key in _SCHEMA_MAPS
            out[key] = strip_descriptions(value, child_is_names)
        return out
    if isinstance(node, list):
        return [strip_descriptions(v) for v in node]
    return node


def pick_version(crd, wanted=None):
    versions = crd["spec"]["versions"]
    if wanted:
        for v in versions:
            if v["name"] == wanted:
                return v
        raise SystemExit(
            f"{crd['spec']['names']['kind']}: no version {wanted!r} "
            f"(have {[v['name'] for v in versions]})"
        )
    chosen = [v for v in versions if v.get("served") and v.get("storage")]
    if len(chosen) != 1:
        raise SystemExit(
            f"{crd['spec']['names']['kind']}: expected exactly one served+storage version, "
            f"found {[v['name'] for v in chosen]}"
        )
    return chosen[0]


def load_crds(path):
    stream = sys.stdin if path == "-" else open(path, encoding="utf-8")
    try:
        for doc in yaml.safe_load_all(stream):
            if isinstance(doc, dict) and doc.get("kind") == "CustomResourceDefinition":
                yield doc
    finally:
        if stream is not sys.stdin:
            stream.close()


def main(argv=None):
    here = os.path.dirname(os.path.abspath(__file__))
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("crds", nargs="+", help="CRD YAML file(s), or - for stdin")
    ap.add_argument("--kind", action="append", help="only these kinds (repeatable)")
    ap.add_argument("--version", help="use this version instead of the served+storage one")
    ap.add_argument("--out-dir", default=here, help="output root (default: this directory)")
    args = ap.parse_args(argv)

    kinds = set(args.kind or [])
    found = set()
    for path in args.crds:
        for crd in load_crds(path):
            kind = crd["spec"]["names"]["kind"]
            if kinds and kind not in kinds:
                continue
            version = pick_version(crd, args.version)
            schema = version["schema"]["openAPIV3Schema"]
            schema = strip_descriptions(schema)
            group = crd["spec"]["group"]
            out_dir = os.path.join(args.out_dir, group)
            os.makedirs(out_dir, exist_ok=True)
            out = os.path.join(out_dir, f"{kind.lower()}_{version['name']}.json")
            with open(out, "w", encoding="utf-8") as fh:
                fh.write(json.dumps(schema, separators=(",", ":"), sort_keys=True))
                fh.write("\n")
            found.add(kind)
            print(f"{out}: {os.path.getsize(out)} bytes", file=sys.stderr)
    missing = kinds - found
    if missing:
        raise SystemExit(f"kind(s) not found: {sorted(missing)}")


if __name__ == "__main__":
    main()
