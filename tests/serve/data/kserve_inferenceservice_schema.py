"""How kserve_inferenceservice_schema.json was made (run by hand, not by the tests): the openAPIV3Schema of KServe's
InferenceService CRD (v1beta1), pruned to the fields deploy/inferenceservice*.yaml use.

    python tests/serve/data/kserve_inferenceservice_schema.py CRD_YAML COMMIT

CRD_YAML: config/crd/full/serving.kserve.io_inferenceservices.yaml of github.com/kserve/kserve at COMMIT. Every
object on the manifests' paths keeps all its property names (so a misspelt or unknown field is still caught); the
schemas of properties no manifest uses are replaced by {} (anything), which keeps the copy small (the CRD is 2 MB).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import yaml

HERE = Path(__file__).parent
ROOT = HERE.parents[2]
MANIFESTS = sorted((ROOT / "deploy").glob("inferenceservice*.yaml"))
UNUSED = {"description": "pruned: not used by deploy/inferenceservice*.yaml"}


def prune(schema: dict, values: list) -> dict:
    """`schema` with the sub-schemas no value in `values` reaches replaced by UNUSED."""
    schema = {key: value for key, value in schema.items() if key != "description"}
    if "properties" in schema:
        kept = {}
        for name, sub in schema["properties"].items():
            used = [v[name] for v in values if isinstance(v, dict) and name in v]
            kept[name] = prune(sub, used) if used else UNUSED
        schema["properties"] = kept
    if isinstance(schema.get("additionalProperties"), dict):
        used = [x for v in values if isinstance(v, dict) for k, x in v.items() if k not in schema.get("properties", {})]
        schema["additionalProperties"] = prune(schema["additionalProperties"], used) if used else UNUSED
    if isinstance(schema.get("items"), dict):
        used = [x for v in values if isinstance(v, list) for x in v]
        schema["items"] = prune(schema["items"], used) if used else UNUSED
    return schema


def main(crd_path: str, commit: str) -> None:
    crd = yaml.safe_load(Path(crd_path).read_text())
    version = next(v for v in crd["spec"]["versions"] if v["name"] == "v1beta1")
    manifests = [yaml.safe_load(path.read_text()) for path in MANIFESTS]
    schema = prune(version["schema"]["openAPIV3Schema"], manifests)
    document = {"source": {"repository": "https://github.com/kserve/kserve", "commit": commit,
                           "path": "config/crd/full/serving.kserve.io_inferenceservices.yaml",
                           "part": "spec.versions[name=v1beta1].schema.openAPIV3Schema, pruned by "
                                   "tests/serve/data/kserve_inferenceservice_schema.py to the fields of "
                                   + ", ".join(f"deploy/{p.name}" for p in MANIFESTS)},
                "openAPIV3Schema": schema}
    (HERE / "kserve_inferenceservice_schema.json").write_text(json.dumps(document, indent=1, sort_keys=True) + "\n")


if __name__ == "__main__":
    main(*sys.argv[1:])
