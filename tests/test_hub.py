"""ssp.hub: weights specs (local path, hub id at a revision, URL) resolved offline from a
hub-cache layout, with the sha256 of every file read."""

from __future__ import annotations

import hashlib
import logging

import pytest

from ssp.errors import DataError
from ssp.hub import parse_hub_spec, resolve_weights, url_cache_path
from tests.standins import hub_cache_entry


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return tmp_path / "hf"


def _repo(folder):
    (folder / "config.json").write_text('{"model_type": "x"}')
    (folder / "model.safetensors").write_bytes(b"weights")
    (folder / "pytorch_model.bin").write_bytes(b"a pickled copy")


def test_spec_forms():
    assert parse_hub_spec("org/name@" + "a" * 40) == ("org/name", "a" * 40)
    assert parse_hub_spec("hub:org/name") == ("org/name", None)
    assert parse_hub_spec("org/name@v1.0") == ("org/name", "v1.0")
    for local in ("/abs/path", "./rel", "~/w", "weights/vggish.pth", "a/b/c", "just-a-name"):
        assert parse_hub_spec(local) is None, local


def test_hub_id_at_a_commit_resolves_from_the_cache_with_digests(cache):
    spec = hub_cache_entry(cache, "org/name", _repo, revision="c" * 40)
    resolved = resolve_weights(spec, "model.mask2former_weights")
    assert (resolved.source, resolved.repo_id, resolved.revision) == ("hub", "org/name", "c" * 40)
    # the param's file patterns: the pickled duplicate is neither fetched nor recorded
    assert resolved.files == {
        "config.json": hashlib.sha256(b'{"model_type": "x"}').hexdigest(),
        "model.safetensors": hashlib.sha256(b"weights").hexdigest(),
    }
    assert resolved.file("model.safetensors").read_bytes() == b"weights"
    assert resolved.to_dict()["path"] == str(resolved.path)


def test_floating_spec_resolves_to_the_commit_it_points_at_and_warns(cache, caplog):
    spec = hub_cache_entry(cache, "org/name", _repo)
    commit = spec.split("@")[1]
    with caplog.at_level(logging.WARNING, logger="ssp.hub"):
        resolved = resolve_weights("org/name", "model.text_model")
    assert resolved.revision == commit
    assert f"org/name@{commit}" in caplog.text and "not pinned" in caplog.text


def test_missing_weights_name_the_param_and_the_spec(cache, tmp_path):
    with pytest.raises(DataError, match=r"model.clip_model: org/absent@.*HF_HUB_OFFLINE is set.*huggingface-cli"):
        resolve_weights("org/absent@" + "d" * 40, "model.clip_model")
    with pytest.raises(DataError, match="read as a hub id because no local path .*weights/x exists"):
        resolve_weights("weights/x", "flow.weights")
    with pytest.raises(DataError, match=r"vggish.pth: model.vggish_weights: weights not found"):
        resolve_weights(str(tmp_path / "vggish.pth"), "model.vggish_weights")
    with pytest.raises(DataError, match="no weights given"):
        resolve_weights("", "flow.weights")


def test_local_file_and_folder(tmp_path):
    (tmp_path / "w.pth").write_bytes(b"state")
    resolved = resolve_weights(str(tmp_path / "w.pth"), "model.vggish_weights")
    assert resolved.source == "local" and resolved.files == {"w.pth": hashlib.sha256(b"state").hexdigest()}
    _repo(tmp_path)
    folder = resolve_weights(str(tmp_path), "model.mask2former_weights")
    assert set(folder.files) == {"config.json", "model.safetensors", "pytorch_model.bin", "w.pth"}


def test_url_spec_is_read_from_where_its_download_is_kept(cache):
    url = "https://example.org/releases/vggish-10086976.pth"
    with pytest.raises(DataError, match="not downloaded yet and HF_HUB_OFFLINE is set"):
        resolve_weights(url, "model.vggish_weights")
    path = url_cache_path(url)
    path.parent.mkdir(parents=True)
    path.write_bytes(b"vggish")
    resolved = resolve_weights(url, "model.vggish_weights")
    assert resolved.source == "url" and resolved.path == path
    assert resolved.files == {"vggish-10086976.pth": hashlib.sha256(b"vggish").hexdigest()}
