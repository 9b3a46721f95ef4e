"""``ssp weights``: resolve every pretrained weights spec of a params file, optionally pin it.

Run it once where there is network (or after ``huggingface-cli download``) before a
paper-profile run: it fetches each spec into the Hugging Face cache, prints the commit
and the sha256 of every file, and fails with the param's name when one cannot be found
-- minutes before a GPU job would. ``--pin`` writes the resolved commits into the
profile file (``conf/profile/{profile}.yaml``), replacing ``org/name`` or
``org/name@main`` by ``org/name@<commit>``, comments kept.
"""

from __future__ import annotations

import argparse
import json
import logging
import re
from pathlib import Path
from typing import Any

from ssp.errors import DataError, SSPError
from ssp.fileio import write_text
from ssp.hub import HUB_FILES, resolve_weights
from ssp.params import CONF_DIR, Params, add_params_arguments, stage_params

log = logging.getLogger(__name__)


def weight_specs(params: Params) -> dict[str, str]:
    """{param: spec} for every weights param that is set (``prompts.model`` only for the hf
    backend: for openai it is a served model's name, not weights)."""
    out = {}
    for key in HUB_FILES:  # every params key that names pretrained weights
        section, name = key.split(".")
        value = getattr(getattr(params, section), name, None)
        if key == "prompts.model" and params.prompts.backend != "hf":
            continue
        if value:
            out[key] = str(value)
    return out


def resolve_all(params: Params) -> dict[str, dict[str, Any]]:
    """{param: ResolvedWeights.to_dict()}; every failure reported together."""
    resolved, problems = {}, []
    for key, spec in weight_specs(params).items():
        try:
            resolved[key] = resolve_weights(spec, key).to_dict()
        except DataError as err:
            problems.append(str(err))
    if problems:
        raise SSPError("cannot resolve pretrained weights:\n  " + "\n  ".join(problems))
    return resolved


def pin(profile_file: Path, resolved: dict[str, dict[str, Any]]) -> tuple[list[str], list[str]]:
    """Pin each unpinned hub spec on its own key's line of ``profile_file`` (``key: spec`` in the
    param's section; comments and every other line kept). Returns (changes, specs that are
    unpinned but not written in the profile, e.g. from conf/config.yaml or --set)."""
    lines = profile_file.read_text().splitlines(keepends=True)
    changes, elsewhere = [], []
    for what, record in resolved.items():
        if record["source"] != "hub" or not record["revision"]:
            continue
        pinned = f"{record['repo_id']}@{record['revision']}"
        if record["spec"] == pinned:
            continue
        section, key = what.split(".")
        line_no = _key_line(lines, section, key, record["spec"])
        if line_no is None:
            elsewhere.append(f"{what} = {record['spec']}")
            continue
        lines[line_no] = lines[line_no].replace(record["spec"], pinned, 1)
        changes.append(f"{what}: {record['spec']} -> {pinned}")
    if changes:
        write_text(profile_file, "".join(lines))
    return changes, elsewhere


def _key_line(lines: list[str], section: str, key: str, spec: str) -> int | None:
    """Index of the ``  key: spec`` line inside top-level ``section:`` (None: not there)."""
    inside = False
    pattern = re.compile(rf"^\s+{re.escape(key)}:\s*['\"]?{re.escape(spec)}['\"]?\s*(#.*)?$")
    for i, line in enumerate(lines):
        if re.match(r"^\S", line):
            inside = line.split(":", 1)[0].strip() == section
        elif inside and pattern.match(line.rstrip("\n")):
            return i
    return None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_params_arguments(parser, example="model.vggish_weights=/models/vggish-10086976.pth")
    parser.add_argument(
        "--pin",
        action="store_true",
        help="write the resolved commits into conf/profile/<profile>.yaml (beside --params)",
    )
    parser.add_argument("--json", type=Path, default=None, help="also write the resolved records to this file")


def main(args: argparse.Namespace) -> int:
    params = stage_params(args)
    resolved = resolve_all(params)
    if not resolved:
        print("no pretrained weights named in these params (random init / packaged defaults)")
    for key, record in resolved.items():
        where = f"{record['repo_id']}@{record['revision']}" if record["source"] == "hub" else record["path"]
        print(f"{key}: {where} ({len(record['files'])} files)")
        for name, digest in record["files"].items():
            print(f"    {digest}  {name}")
    if args.json:
        write_text(args.json, json.dumps(resolved, indent=2) + "\n")
    if args.pin:
        profile_file = Path(args.params).parent / CONF_DIR / "profile" / f"{params.profile}.yaml"
        if not profile_file.is_file():
            raise DataError(profile_file, "no such profile file to pin")
        changes, elsewhere = pin(profile_file, resolved)
        for change in changes:
            log.info("pinned %s in %s", change, profile_file)
        for spec in elsewhere:
            log.warning("%s is not pinned and not written in %s: pin it where it is set", spec, profile_file)
        if changes:
            log.info("now run `ssp params --profile %s` to compose params.yaml again", params.profile)
    return 0
