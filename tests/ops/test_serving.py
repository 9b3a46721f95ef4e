"""Serving a registered model with MLflow's own server: tiny stage-1/2 checkpoints are
registered in a temporary store, ``mlflow models serve -m models:/ssp-avss@champion
--env-manager local`` is started on 127.0.0.1, and a clip of the generated benchmark is
posted (as frames + WAV, and as an MP4). The masks must be the frame size, name the
registered classes and equal ``ssp predict``'s segmentation of the same inputs; bad
requests get HTTP 400 with the reason while the server keeps answering. The server's
process group is killed and its port checked free whatever happens (slow: 20-30 s, most of
it the server's start). A fast test runs MLflow's scoring app in-process (FastAPI's test
client) for every request format and bad request."""

from __future__ import annotations

import base64
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from ssp.data.avsbench import class_names, load_records
from ssp.data.synthetic import SynthConfig, generate_dataset
from ssp.eval.predict import load_models, logmel_per_frame, read_frames, run_models
from ssp.models import SSPConfig, SSPModel
from ssp.models.checkpoint import save_weights
from ssp.params import DataParams, FlowParams
from ssp.preprocess.flow import flow_masks
from tests.eval.test_predict import write_clip
from tests.ports import free_port

REPO = Path(__file__).resolve().parents[2]
STARTUP_S = 120  # a cold start (imports, model load) on a busy 2-core machine


def _port_is_free(port: int) -> bool:
    """Nobody listens on ``port`` (SO_REUSEADDR: connections in TIME_WAIT do not count)."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # a process of another user reuses the id: not ours any more
        return False
    return True


def _stop(proc: subprocess.Popen) -> None:
    """SIGTERM to the server's whole process group (the mlflow CLI and its uvicorn child),
    SIGKILL to whatever is left after 15 s."""
    pgid = proc.pid  # start_new_session: the group's id is the leader's pid
    for sig, grace in ((signal.SIGTERM, 15.0), (signal.SIGKILL, 10.0)):
        if not _group_alive(pgid):
            break
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, sig)
        deadline = time.monotonic() + grace
        while _group_alive(pgid) and time.monotonic() < deadline:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=0.2)
    proc.wait(timeout=10)


def _post(url: str, body: bytes | dict) -> tuple[int, dict]:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"}, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}")


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """The tiny generated benchmark, one of its clips and random-init checkpoints whose
    stage-2 model has the benchmark's classes."""
    root = tmp_path_factory.mktemp("serving")
    data = generate_dataset(SynthConfig.from_params(DataParams(seed=1, size="tiny")), root / "data", progress=False)
    names = class_names(data)
    record = next(r for r in load_records(data) if r.subset == "v1m")
    torch.manual_seed(0)
    save_weights(root / "s1.safetensors", SSPModel(SSPConfig.tiny(1, num_points=64)), {"epoch": 1})
    config = SSPConfig.tiny(2, num_points=64, num_classes=len(names), pre_mask=True)
    save_weights(root / "s2.safetensors", SSPModel(config), {"epoch": 1})
    return {"root": root, "data": data, "names": names, "record": record}


def _register(tiny, tmp_path, monkeypatch) -> None:
    """The tiny stage-1 and stage-2 models as the champions of one key."""
    from ssp.ops.registry import register_checkpoint

    monkeypatch.setenv("SSP_MODEL_CACHE", str(tmp_path / "cache"))
    root = tiny["root"]
    key = {"data_fingerprint": "0123456789abcdef", "profile": "demo"}
    register_checkpoint(None, root / "s1.safetensors", 1, 0.5, **key)
    registered = register_checkpoint(None, root / "s2.safetensors", 2, 0.4, class_names=tiny["names"], **key)
    assert registered.servable and registered.champion


@pytest.fixture
def server(tiny, mlflow_store, tmp_path, monkeypatch):
    """``mlflow models serve`` of ``models:/ssp-avss@champion`` on a free port; yields its
    URL. Always: the process group is killed and the port checked free."""
    _register(tiny, tmp_path, monkeypatch)
    port = free_port()
    log = open(tmp_path / "server.log", "wb")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MLFLOW_SCORING_SERVER_REQUEST_TIMEOUT": "60"}
    # the CLI starts `uvicorn` by name: the venv's, even when the venv is not activated
    env["PATH"] = f"{os.path.dirname(sys.executable)}{os.pathsep}{env.get('PATH', '')}"
    # and `ssp` of this checkout, whatever is installed (the server imports ssp.eval.serving)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    command = [sys.executable, "-m", "mlflow", "models", "serve", "-m", "models:/ssp-avss@champion"]
    command += ["--env-manager", "local", "-h", "127.0.0.1", "-p", str(port), "-w", "1"]
    proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + STARTUP_S
        while True:
            if proc.poll() is not None:
                pytest.fail(f"the server exited ({proc.returncode}):\n{(tmp_path / 'server.log').read_text()[-3000:]}")
            with contextlib.suppress(OSError):
                with urllib.request.urlopen(f"{url}/ping", timeout=2) as response:
                    if response.status == 200:
                        break
            if time.monotonic() > deadline:
                pytest.fail(f"no /ping answer in {STARTUP_S} s:\n{(tmp_path / 'server.log').read_text()[-3000:]}")
            time.sleep(0.3)
        yield url
    finally:
        _stop(proc)
        log.close()
        assert not _group_alive(proc.pid), "a process of the server's group survived"
        assert _port_is_free(port), f"port {port} still taken after the server stopped"


def _expected(tiny, frames, audio_path, fps: float = 1.0):
    """``ssp predict``'s segmentation of the same inputs, in this process."""
    stage1, main = load_models(tiny["root"] / "s2.safetensors", tiny["root"] / "s1.safetensors", None, None, "cpu")
    logmel = logmel_per_frame(audio_path, len(frames), fps)
    return [
        c
        for c, _ in run_models(
            stage1, main, frames, logmel, flow_masks(frames, FlowParams()), {"a1": "", "a2": []}, "cpu"
        )
    ]


def _check_result(result, frames, names, expected):
    height, width = frames[0].shape[:2]
    assert result["frames"] == len(frames) and result["frame_size"] == [height, width]
    assert result["model"]["champion_alias"] == "champion-demo-01234567" and result["model"]["stage"] == 2
    assert result["inputs"]["flow"]["method"] == "dis" and result["inputs"]["prompts"]["a2"] == []
    seen = set()
    for i, frame in enumerate(result["per_frame"]):
        mask = cv2.imdecode(np.frombuffer(base64.b64decode(frame["mask_png"]), np.uint8), cv2.IMREAD_UNCHANGED)
        assert mask.shape == (height, width) and mask.dtype == np.uint8 and mask.max() < len(names)
        assert (mask == expected[i]).mean() >= 0.999  # the same model, loader and predict loop as ssp predict
        present = {c["index"]: c for c in frame["classes"]}
        assert sorted(present) == np.unique(mask).tolist()
        for index, entry in present.items():
            assert entry["name"] == names[index]  # the names registered with the model
            assert entry["pixel_share"] == pytest.approx((mask == index).mean(), abs=1e-6)
        seen |= set(present) - {0}
    assert [c["index"] for c in result["classes_in_clip"]] == sorted(seen)
    assert [c["name"] for c in result["classes_in_clip"]] == [names[c] for c in sorted(seen)]


def _bad_requests(record) -> list[tuple[dict, str]]:
    frames_b64 = [_b64(p.read_bytes()) for p in record.frame_paths]
    audio_b64 = _b64(record.audio_path.read_bytes())
    other_size = _b64(cv2.imencode(".png", np.zeros((20, 30, 3), np.uint8))[1].tobytes())
    too_small = _b64(cv2.imencode(".png", np.zeros((8, 8, 3), np.uint8))[1].tobytes())
    return [
        ({"inputs": {"frames": frames_b64}}, "missing field 'audio'"),
        ({"inputs": {"audio": audio_b64}}, "missing field 'frames'"),
        ({"inputs": {"frames": ["%%%"], "audio": audio_b64}}, "'frames'[0]: not valid base64"),
        ({"inputs": {"frames": [_b64(b"not an image")], "audio": audio_b64}}, "'frames'[0]: cannot decode"),
        ({"inputs": {"frames": frames_b64[:1], "audio": _b64(b"RIFF....")}}, "'audio': cannot decode audio"),
        ({"inputs": {"video": _b64(b"not a video")}}, "'video': cannot open as a video"),
        ({"inputs": {"frames": [*frames_b64[:1], other_size], "audio": audio_b64}}, "frames differ in size"),
        ({"inputs": {"frames": [too_small], "audio": audio_b64}}, "each side must be in"),
        ({"inputs": {"frames": frames_b64, "audio": audio_b64, "fps": -1}}, "'fps' must be a number"),
        ({"inputs": {"frames": frames_b64, "audio": audio_b64, "colour": "red"}}, "unknown field"),
        ({"inputs": {"frames": frames_b64, "audio": audio_b64, "prompts": "dog"}}, "'prompts' must be an object"),
        ({"inputs": {"video": _b64(b"x"), "frames": frames_b64, "audio": audio_b64}}, "not both"),
        ({"inputs": [{"video": _b64(b"x")}] * 9}, "at most 8"),
        ({"inputs": {"video": _b64(b"x"), "seconds": 1000}}, "'seconds' must be a number in (0, 64]"),
        ({"inputs": [{"frames": frames_b64, "audio": audio_b64}, {"frames": frames_b64}]}, "clip 1: missing field"),
    ]


def test_scoring_app_answers_every_format_and_refuses_bad_requests(tiny, mlflow_store, tmp_path, monkeypatch):
    """MLflow's scoring app in this process (what `mlflow models serve` runs), on the
    registered champion: clips as `inputs` (one or a list) and DataFrame records, the
    client's prompts, and a 400 with the reason for each bad request."""
    import mlflow.pyfunc
    from fastapi.testclient import TestClient
    from mlflow.pyfunc.scoring_server import init

    _register(tiny, tmp_path, monkeypatch)
    client = TestClient(init(mlflow.pyfunc.load_model("models:/ssp-avss@champion")))
    record, names = tiny["record"], tiny["names"]
    for body, reason in _bad_requests(record):
        response = client.post("/invocations", json=body)
        assert response.status_code == 400, (reason, response.status_code, response.text[-300:])
        assert response.json()["error_code"] == "INVALID_PARAMETER_VALUE" and reason in response.json()["message"]

    clip = {
        "frames": [_b64(p.read_bytes()) for p in record.frame_paths[:2]],
        "audio": _b64(record.audio_path.read_bytes()),
    }
    frames = read_frames(record.frame_paths[:2])
    expected = _expected(tiny, frames, record.audio_path)
    asked = {**clip, "prompts": {"a1": "A dog barks.", "a2": ["dog", " "]}}
    for body in ({"inputs": [clip, asked]}, {"dataframe_records": [clip, asked]}):
        response = client.post("/invocations", json=body)
        assert response.status_code == 200, response.text[-500:]
        plain, prompted = response.json()["predictions"]
        _check_result(plain, frames, names, expected)
        assert plain["inputs"]["prompts"]["source"].startswith("none")
        assert prompted["inputs"]["prompts"] == {"a1": "A dog barks.", "a2": ["dog"], "source": "request"}
        assert prompted["frames"] == 2 and len(prompted["per_frame"]) == 2


@pytest.mark.slow
def test_served_champion_answers_clips_and_refuses_bad_requests(tiny, server, tmp_path):
    """`mlflow models serve` itself: bad requests (missing field, undecodable media, wrong
    sizes, not JSON) get 400 with the reason, then the server still answers clips."""
    record, names = tiny["record"], tiny["names"]
    reasons = ("missing field 'audio'", "'frames'[0]: cannot decode", "frames differ in size")
    for body, reason in (b for b in _bad_requests(record) if b[1] in reasons):
        status, answer = _post(f"{server}/invocations", body)
        assert status == 400 and answer["error_code"] == "INVALID_PARAMETER_VALUE", (reason, status, answer)
        assert reason in answer["message"], (reason, answer["message"][-300:])
    status, _ = _post(f"{server}/invocations", b"{not json")
    assert status == 400

    # the server still answers: a clip of the generated benchmark as frames + WAV ...
    body = {"frames": [_b64(p.read_bytes()) for p in record.frame_paths], "audio": _b64(record.audio_path.read_bytes())}
    status, answer = _post(f"{server}/invocations", {"inputs": body})
    assert status == 200, answer
    frames = read_frames(record.frame_paths)
    [result] = answer["predictions"]
    _check_result(result, frames, names, _expected(tiny, frames, record.audio_path))

    # ... and an MP4 (3 s at 1 frame/s) as a DataFrame record
    clip = tmp_path / "clip.mp4"
    write_clip(clip)
    status, answer = _post(f"{server}/invocations", {"dataframe_records": [{"video": _b64(clip.read_bytes())}]})
    assert status == 200, answer
    [result] = answer["predictions"]
    assert result["frames"] == 3 and result["frame_size"] == [72, 96]
