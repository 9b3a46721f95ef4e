import json
import os

import pytest

from ssp.cli import main as cli_main
from ssp.errors import SSPError
from ssp.ops.fingerprint import tree_digest


def test_digest_follows_content_not_timestamps(tmp_path):
    root = tmp_path / "flow"
    (root / "v1").mkdir(parents=True)
    (root / "v1" / "0.png").write_bytes(b"abc")
    (root / "v1" / "1.png").write_bytes(b"defg")
    first = tree_digest(root)
    assert first["files"] == 2 and first["bytes"] == 7
    os.utime(root / "v1" / "0.png", (1, 1))  # touched, same bytes
    assert tree_digest(root) == first
    (root / "v1" / "0.png").write_bytes(b"abd")  # same size, other content
    assert tree_digest(root)["md5"] != first["md5"]
    (root / "v1" / "0.png").write_bytes(b"abc")
    (root / "v1" / "1.png").rename(root / "v1" / "2.png")  # a renamed file counts
    assert tree_digest(root)["md5"] != first["md5"]


def test_cli_writes_one_json_and_names_a_missing_path(tmp_path, capsys):
    (tmp_path / "a.json").write_text("{}")
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "x").write_text("x")
    out = tmp_path / "fp.json"
    assert cli_main(["fingerprint", str(tmp_path / "a.json"), str(tmp_path / "d"), "--out", str(out)]) == 0
    written = json.loads(out.read_text())
    assert set(written) == {str(tmp_path / "a.json"), str(tmp_path / "d")}
    assert written[str(tmp_path / "d")]["files"] == 1
    assert cli_main(["fingerprint", str(tmp_path / "nope"), "--out", str(tmp_path / "o.json")]) == 2
    assert "nope: does not exist" in capsys.readouterr().err
    with pytest.raises(SSPError):
        tree_digest(tmp_path / "nope")
