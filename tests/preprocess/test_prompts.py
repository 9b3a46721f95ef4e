"""`ssp prompts`: questions, A2 parsing, answer cache / resume, and the backends
(scripted OpenAI-compatible server on 127.0.0.1, tiny random LLaVA built in tmp_path, a
MiniCPM-o stand-in with its own code read from a hub-cache layout offline)."""

from __future__ import annotations

import argparse
import base64
import io
import json
import os
import shutil
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from PIL import Image

from ssp.cli import main
from ssp.data.avsbench import load_records
from ssp.data.synthetic import SynthConfig, generate_dataset, scene_answers
from ssp.errors import DataError, SSPError
from ssp.params import DataParams, PromptsParams
from ssp.preprocess.prompts.backends.scene import SceneBackend
from ssp.preprocess.prompts.questions import (
    QUESTION_1_VARIANTS,
    QUESTION_2,
    Questions,
    parse_nouns,
    sample_frame_indices,
)
from ssp.preprocess.prompts.stage import PromptsConfig, build_backend, run_prompts
from tests.avsbench_fixtures import write_semantic_dataset
from tests.standins import hub_cache_entry, minicpm_standin

VIDEOS = [{"uid": f"vid{i}", "subset": "v1m", "split": "train", "objects": ["dog"]} for i in range(4)]


@pytest.fixture
def dataset(tmp_path) -> Path:
    return write_semantic_dataset(tmp_path / "data", videos=VIDEOS, size=(32, 48))


def records_of(root):
    return sorted(load_records(root), key=lambda r: r.rel_dir)


def read_prompts(out: Path, record) -> dict:
    return json.loads((out / record.rel_dir / "prompts.json").read_text())


# --------------------------------------------------------------------------- questions, parsing


def test_questions_are_the_papers():
    assert QUESTION_1_VARIANTS["a"] == "Describe the video."
    assert QUESTION_1_VARIANTS["d"].endswith('for example: "a man plays a guitar".')
    assert QUESTION_1_VARIANTS["c"].endswith('with a format of "A NOUN VERB NOUN".')
    assert "NOUN word that potentially produce sound" in QUESTION_2
    versions = {Questions.from_variant(v).version for v in "abcd"}
    assert len(versions) == 4  # each variant has its own cache
    with pytest.raises(SSPError, match="unknown question variant"):
        Questions.from_variant("e")


@pytest.mark.parametrize(
    "answer, nouns",
    [
        ("piano, microphone, man.", ["piano", "microphone", "man"]),
        ("The piano and a man", ["piano", "man"]),
        ("Piano, piano, PIANO!", ["piano"]),
        ("Answer2: a dog; the cat\n- bird", ["dog", "cat", "bird"]),
        ("The sound-producing objects are: an electric guitar and drums.", ["electric guitar", "drums"]),
        ("piano, guitar, and man", ["piano", "guitar", "man"]),
        ('1. violin\n2. "The Cello"', ["violin", "cello"]),
        ("piano keyboard", ["piano keyboard"]),
        ("", []),
        (" , and . ", []),
    ],
)
def test_parse_nouns(answer, nouns):
    assert parse_nouns(answer) == nouns


@pytest.mark.parametrize(
    "n, k, expected",
    [
        (5, 4, [0, 1, 3, 4]),
        (10, 4, [0, 3, 6, 9]),
        (5, 1, [2]),
        (3, 8, [0, 1, 2]),
        (5, 5, [0, 1, 2, 3, 4]),
    ],
)
def test_sample_frame_indices(n, k, expected):
    assert sample_frame_indices(n, k) == expected


# --------------------------------------------------------------------------- the stage, with a fake backend


class FakeBackend:
    """Scripted answers; counts questions; can simulate a crash (KeyboardInterrupt,
    like a kill) or a per-video failure."""

    name = "fake"
    model = "fake-model"
    cache_key = "fake-model"
    settings = {"frames_per_video": 2}
    parallel = True

    def __init__(self, die_after: int | None = None, fail_uids=()):
        self.asked: list[tuple[str, str]] = []
        self.die_after = die_after
        self.fail_uids = set(fail_uids)
        self.q1_seen: list[str] = []

    def _ask(self, record, which):
        if self.die_after is not None and len(self.asked) >= self.die_after:
            raise KeyboardInterrupt
        if record.uid in self.fail_uids:
            raise RuntimeError("model crashed")
        self.asked.append((record.uid, which))

    def answer_q1(self, record, questions):
        self._ask(record, "q1")
        self.q1_seen.append(questions.q1)
        return f"A dog barks in {record.uid}."

    def answer_q2(self, record, questions, a1):
        assert a1 == f"A dog barks in {record.uid}."
        self._ask(record, "q2")
        return "The dog, a ball and the dog."


def test_stage_writes_prompts_and_rerun_does_nothing(dataset, tmp_path):
    out = tmp_path / "prompts"
    records = records_of(dataset)
    backend = FakeBackend()
    summary = run_prompts(records, backend, PromptsConfig(out, "d"))
    assert (summary.videos, summary.asked, summary.written) == (4, 8, 4)
    p = read_prompts(out, records[0])
    assert p == {
        "a1": "A dog barks in vid0.",
        "a2": ["dog", "ball"],
        "a2_raw": "The dog, a ball and the dog.",
        "backend": "fake",
        "model": "fake-model",
        "revision": None,
        "question_variant": "d",
        "questions": {"q1": QUESTION_1_VARIANTS["d"], "q2": QUESTION_2},
    }
    q = Questions.from_variant("d")
    cached = json.loads((out / ".cache" / "fake" / "fake-model" / q.version / f"{records[0].rel_dir}.json").read_text())
    assert cached["a1"] == p["a1"] and cached["a2_raw"] == p["a2_raw"]

    # nothing changed: nothing asked, nothing rewritten
    again = run_prompts(records, FakeBackend(), PromptsConfig(out, "d"))
    assert (again.asked, again.written) == (0, 0)
    # outputs deleted but cache kept: rewritten from the cache, still nothing asked
    for r in records:
        (out / r.rel_dir / "prompts.json").unlink()
    third = run_prompts(records, FakeBackend(), PromptsConfig(out, "d", workers=3))
    assert (third.asked, third.written) == (0, 4)
    assert read_prompts(out, records[0]) == p


def test_killed_run_resumes_without_reasking(dataset, tmp_path):
    out = tmp_path / "prompts"
    records = records_of(dataset)
    dying = FakeBackend(die_after=3)  # vid0 Q1+Q2, vid1 Q1, then killed during vid1 Q2
    with pytest.raises(KeyboardInterrupt):
        run_prompts(records, dying, PromptsConfig(out, "d"))
    assert (out / records[0].rel_dir / "prompts.json").is_file()
    assert not (out / records[1].rel_dir / "prompts.json").exists()
    assert not list(out.rglob("*.tmp*"))  # no half-written file

    resumed = FakeBackend()
    summary = run_prompts(records, resumed, PromptsConfig(out, "d"))
    # vid1 only needs Q2 (its A1 was cached before the kill); vid2, vid3 both
    assert resumed.asked == [("vid1", "q2"), ("vid2", "q1"), ("vid2", "q2"), ("vid3", "q1"), ("vid3", "q2")]
    assert summary.written == 3
    assert read_prompts(out, records[1])["a1"] == "A dog barks in vid1."


def test_failed_videos_are_named_and_others_written(dataset, tmp_path):
    out = tmp_path / "prompts"
    records = records_of(dataset)
    with pytest.raises(SSPError) as err:
        run_prompts(records, FakeBackend(fail_uids={"vid1", "vid3"}), PromptsConfig(out, "d", workers=2))
    message = str(err.value)
    assert "2 of 4 failed" in message and "model crashed" in message
    assert records[1].rel_dir in message and records[3].rel_dir in message
    assert records[0].rel_dir not in message
    assert [(out / r.rel_dir / "prompts.json").is_file() for r in records] == [True, False, True, False]
    retry = FakeBackend()
    run_prompts(records, retry, PromptsConfig(out, "d"))
    assert sorted({uid for uid, _ in retry.asked}) == ["vid1", "vid3"]
    # another question variant that fails for vid1: its old (variant d) prompts do not stay behind
    with pytest.raises(SSPError, match=records[1].rel_dir):
        run_prompts(records, FakeBackend(fail_uids={"vid1"}), PromptsConfig(out_dir=out, question_variant="a"))
    assert [(out / r.rel_dir / "prompts.json").is_file() for r in records] == [True, False, True, True]
    assert read_prompts(out, records[0])["question_variant"] == "a"


def test_question_variant_changes_the_question_and_the_cache(dataset, tmp_path):
    out = tmp_path / "prompts"
    records = records_of(dataset)[:1]
    for variant in "abcd":
        backend = FakeBackend()
        run_prompts(records, backend, PromptsConfig(out_dir=out, question_variant=variant))
        assert backend.q1_seen == [QUESTION_1_VARIANTS[variant]]  # a new variant is asked again
        assert read_prompts(out, records[0])["question_variant"] == variant


def test_bad_frame_fails_the_video_naming_the_file(dataset, tmp_path):
    records = records_of(dataset)
    records[2].frame_paths[0].write_bytes(b"not a jpeg")
    from ssp.preprocess.prompts.questions import load_frames

    with pytest.raises(DataError, match="0.jpg"):
        load_frames(records[2], 2)


def test_none_backend_writes_empty_prompts(dataset, tmp_path):
    out = tmp_path / "prompts"
    records = records_of(dataset)
    summary = run_prompts(records, None, PromptsConfig(out, "d"))
    assert summary.written == 4 and summary.asked == 0
    p = read_prompts(out, records[3])
    assert (p["a1"], p["a2"], p["backend"]) == ("", [], "none")


def test_scene_backend_fails_clearly_without_scene_records(dataset, tmp_path):
    with pytest.raises(SSPError, match=r"scene\.json: missing: the scene backend needs"):
        run_prompts(records_of(dataset), SceneBackend(quality=1.0, seed=0), PromptsConfig(tmp_path / "p", "d"))
    assert not (tmp_path / "p" / records_of(dataset)[0].rel_dir / "prompts.json").exists()


@pytest.fixture(scope="module")
def synth_dataset(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("synth") / "data"
    config = SynthConfig.from_params(DataParams(size="tiny", image_size=32, seed=3))
    return generate_dataset(config, root, progress=False)


def test_scene_backend_answers_and_quality_knob(synth_dataset, tmp_path):
    records = records_of(synth_dataset)
    scenes = [json.loads((synth_dataset / r.rel_dir / "scene.json").read_text()) for r in records]
    out = tmp_path / "clean"
    summary = run_prompts(records, SceneBackend(quality=1.0, seed=0), PromptsConfig(out, "d", workers=2))
    assert summary.asked == 2 * len(records)
    for record, scene in zip(records, scenes):
        p = read_prompts(out, record)
        assert (p["a1"], p["a2"]) == (scene["answers"]["A1"], scene["answers"]["A2"])
        assert p["backend"] == "scene" and p["question_variant"] == "d"

    noisy_out = tmp_path / "noisy"
    run_prompts(records, SceneBackend(quality=0.2, seed=5), PromptsConfig(noisy_out, "d"))
    noisy = [read_prompts(noisy_out, r) for r in records]
    for p, scene in zip(noisy, scenes):
        a1, a2 = scene_answers(scene, 0.2, 5)
        assert (p["a1"], p["a2"]) == (a1, parse_nouns(", ".join(a2)))
    assert any(p["a2"] != s["answers"]["A2"] or p["a1"] != s["answers"]["A1"] for p, s in zip(noisy, scenes))
    # another quality is another cache entry; the same quality again asks nothing
    assert run_prompts(records, SceneBackend(quality=0.2, seed=5), PromptsConfig(noisy_out, "d")).asked == 0
    with pytest.raises(SSPError, match="quality"):
        SceneBackend(quality=1.5, seed=0)


def test_cli_scene_on_generated_data(synth_dataset, tmp_path):
    out = tmp_path / "p"
    params = tmp_path / "params.yaml"
    params.write_text("prompts:\n  backend: scene\n  quality: 0.5\n")
    argv = [
        "prompts",
        str(synth_dataset),
        "--out",
        str(out),
        "--params",
        str(params),
        "--set",
        "prompts.question_variant=c",
    ]
    assert main(argv) == 0
    files = sorted(out.rglob("prompts.json"))
    assert len(files) == len(load_records(synth_dataset))
    assert json.loads(files[0].read_text())["questions"]["q1"] == QUESTION_1_VARIANTS["c"]
    stamps = {f: f.stat().st_mtime_ns for f in files}
    assert main(argv) == 0  # up to date: nothing rewritten
    assert {f: f.stat().st_mtime_ns for f in files} == stamps


def test_cli_none_backend_and_clear_error(dataset, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("OPENAI_MODEL", raising=False)
    no_params = ["--params", os.devnull]
    assert (
        main(["prompts", str(dataset), "--out", str(tmp_path / "p"), *no_params, "--set", "prompts.backend=none"]) == 0
    )
    assert len(list((tmp_path / "p").rglob("prompts.json"))) == 4
    assert (
        main(["prompts", str(dataset), "--out", str(tmp_path / "q"), *no_params, "--set", "prompts.backend=openai"])
        == 2
    )
    assert "needs prompts.model" in capsys.readouterr().err


def test_build_backend_takes_every_knob_from_the_prompts_params(tiny_llava, monkeypatch):
    assert build_backend(PromptsParams(backend="none")) is None
    scene = build_backend(PromptsParams(backend="scene", quality=0.5, seed=3))
    assert isinstance(scene, SceneBackend) and scene.settings == {"quality": 0.5, "seed": 3}
    hf = build_backend(PromptsParams(backend="hf", model=str(tiny_llava), frames_per_video=2, max_new_tokens=9))
    assert (hf.config.frames_per_video, hf.config.max_new_tokens, hf.config.device) == (2, 9, "auto")
    assert hf.api == "chat_template" and hf.weights.source == "local"  # auto: no remote code in config.json
    assert hf.settings["weights"]["files_sha256"] and hf.settings["hf_api"] == "chat_template"
    # ssp predict's --device reaches the MLLM only when prompts.device is auto
    run_on = argparse.Namespace(device="cpu")
    assert build_backend(PromptsParams(backend="hf", model=str(tiny_llava)), run_on).config.device == "cpu"
    pinned = PromptsParams(backend="hf", model=str(tiny_llava), device="cuda:1")
    assert build_backend(pinned, run_on).config.device == "cuda:1"
    with pytest.raises(SSPError, match="prompts.model"):
        build_backend(PromptsParams(backend="hf"))
    with pytest.raises(SSPError, match="unknown prompts.hf_api"):
        build_backend(PromptsParams(backend="hf", model=str(tiny_llava), hf_api="generate"))
    with pytest.raises(SSPError, match="may not set max_new_tokens"):
        build_backend(PromptsParams(backend="hf", model=str(tiny_llava), chat_options={"max_new_tokens": 3}))
    with pytest.raises(DataError, match="prompts.model"):
        build_backend(PromptsParams(backend="hf", model="/nowhere/model"))
    with pytest.raises(SSPError, match="unknown backend"):
        build_backend(PromptsParams(backend="llm"))

    monkeypatch.setenv("SSP_TEST_KEY", "sk-secret")
    openai = build_backend(
        PromptsParams(
            backend="openai",
            model="served",
            base_url="http://10.0.0.1:9/v1",
            api_key_env="SSP_TEST_KEY",
            read_timeout=7.0,
            max_retries=1,
            give_up_after=0,
        )
    )
    assert (openai.config.base_url, openai.config.read_timeout, openai.config.max_retries) == (
        "http://10.0.0.1:9/v1",
        7.0,
        1,
    )
    assert openai.client.headers["Authorization"] == "Bearer sk-secret"
    assert "sk-secret" not in repr(openai.config)  # the key never shows in logs / params
    no_key = build_backend(PromptsParams(backend="openai", model="served", api_key_env=""))
    assert "Authorization" not in no_key.client.headers


def test_former_backend_flags_name_the_param_that_replaces_them(dataset, tmp_path, capsys):
    base = ["prompts", str(dataset), "--out", str(tmp_path / "p"), "--params", os.devnull]
    for flag, expected in [
        (["--trust-remote-code"], "--set prompts.trust_remote_code="),
        (["--base-url", "http://x/v1"], "--set prompts.base_url=http://x/v1"),
        (["--device", "cpu"], "--set prompts.device=cpu"),
        (["--read-timeout", "5"], "--set prompts.read_timeout=5"),
        (["--max-new-tokens", "64"], "--set prompts.max_new_tokens=64"),
        (["--api-key", "sk-x"], "prompts.api_key_env"),
    ]:
        with pytest.raises(SystemExit) as err:
            main([*base, *flag])
        assert err.value.code == 2
        assert expected in capsys.readouterr().err


# --------------------------------------------------------------------------- openai backend


class ScriptedServer(ThreadingHTTPServer):
    """OpenAI-compatible chat-completions server on 127.0.0.1 whose replies follow a
    script (one action per request, then "ok"). Records every request."""

    daemon_threads = True
    block_on_close = False

    def __init__(self, hang_s: float = 1.0):
        super().__init__(("127.0.0.1", 0), _Handler)
        self.script: list[str] = []
        self.requests: list[dict] = []
        self.headers_seen: list[dict] = []
        self.hang_s = hang_s
        self.lock = threading.Lock()

    def handle_error(self, request, client_address):
        pass  # a hung reply writes to a socket the client closed: expected


class _Handler(BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def _send(self, status: int, body: bytes, headers: dict | None = None):
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self):
        server: ScriptedServer = self.server
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        with server.lock:
            server.requests.append({"path": self.path, **body})
            server.headers_seen.append(dict(self.headers))
            action = server.script.pop(0) if server.script else "ok"
        if action == "hang":
            time.sleep(server.hang_s)
            action = "ok"
        if action == "ok":
            is_q2 = len(body["messages"]) == 3
            content = "piano, the Man and a dog." if is_q2 else "A man plays a piano."
            reply = {
                "id": "x",
                "object": "chat.completion",
                "choices": [{"index": 0, "message": {"role": "assistant", "content": content}}],
            }
            self._send(200, json.dumps(reply).encode())
        elif action == "malformed":
            self._send(200, b"{this is not json")
        elif action == "no-choices":
            self._send(200, b'{"object": "chat.completion"}')
        elif action == "429":
            self._send(429, b'{"error": "slow down"}', {"Retry-After": "0"})
        else:
            self._send(int(action), b'{"error": "scripted"}')


@pytest.fixture
def server():
    srv = ScriptedServer(hang_s=1.0)
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()


def openai_backend(server, **overrides):
    from ssp.preprocess.prompts.backends.openai import OpenAIBackend, OpenAIConfig

    config = OpenAIConfig(
        model="test-vlm",
        base_url=f"http://127.0.0.1:{server.server_port}/v1",
        frames_per_video=3,
        connect_timeout=1.0,
        read_timeout=0.3,
        max_retries=2,
        backoff=0.01,
    )
    for k, v in overrides.items():
        setattr(config, k, v)
    return OpenAIBackend(config)


def test_openai_retries_timeouts_malformed_and_resume(dataset, tmp_path, server):
    out = tmp_path / "prompts"
    records = records_of(dataset)
    server.script = [
        "500",
        "ok",
        "ok",  # vid0: Q1 500 then ok; Q2 ok
        "hang",
        "ok",
        "ok",  # vid1: Q1 times out then ok; Q2 ok
        "malformed",  # vid2: Q1 not JSON -> fails at once
        "ok",
        "503",
        "503",
        "503",  # vid3: Q1 ok; Q2 fails for good (3 attempts)
    ]
    with pytest.raises(SSPError) as err:
        run_prompts(records, openai_backend(server), PromptsConfig(out, "d"))
    message = str(err.value)
    assert "2 of 4 failed" in message
    line_vid2 = next(line for line in message.splitlines() if records[2].rel_dir in line)
    line_vid3 = next(line for line in message.splitlines() if records[3].rel_dir in line)
    assert "malformed reply (not JSON)" in line_vid2
    assert "HTTP 503" in line_vid3 and "gave up after 3 attempts" in line_vid3
    assert "a re-run asks only for the missing ones" in message
    assert len(server.requests) == 11 and server.script == []
    assert [(out / r.rel_dir / "prompts.json").is_file() for r in records] == [True, True, False, False]
    assert read_prompts(out, records[0])["a2"] == ["piano", "man", "dog"]

    # the request: frames as JPEG data URLs in the first user turn, A1 as the assistant turn
    q1_request, q2_request = server.requests[1], server.requests[2]
    assert q1_request["path"] == "/v1/chat/completions" and q1_request["model"] == "test-vlm"
    parts = q1_request["messages"][0]["content"]
    assert parts[0] == {"type": "text", "text": QUESTION_1_VARIANTS["d"]}
    urls = [p["image_url"]["url"] for p in parts[1:] if p["type"] == "image_url"]
    assert len(urls) == 3 and all(u.startswith("data:image/jpeg;base64,") for u in urls)
    image = Image.open(io.BytesIO(base64.b64decode(urls[0].split(",", 1)[1])))
    assert (image.format, image.size) == ("JPEG", (48, 32))
    assert q2_request["messages"][1] == {"role": "assistant", "content": "A man plays a piano."}
    assert q2_request["messages"][2] == {"role": "user", "content": QUESTION_2}

    # endpoint fixed: the re-run asks vid2 Q1+Q2 and vid3 Q2 only
    server.requests.clear()
    run_prompts(records, openai_backend(server), PromptsConfig(out, "d"))
    assert len(server.requests) == 3
    assert [len(r["messages"]) for r in server.requests] == [1, 3, 3]
    assert all((out / r.rel_dir / "prompts.json").is_file() for r in records)


@pytest.mark.parametrize(
    "script, requests, error",
    [
        (["400"], 1, "HTTP 400"),  # client error: no retry
        (["429", "ok"], 2, None),  # rate limit: retried (Retry-After honoured)
        (["no-choices"], 1, "no choices"),
        (["hang", "hang", "hang"], 3, "timed out"),  # read timeout on every attempt
    ],
)
def test_openai_retry_policy(dataset, tmp_path, server, script, requests, error):
    from ssp.preprocess.prompts.backends.openai import EndpointError

    record = records_of(dataset)[0]
    server.script = list(script)
    backend = openai_backend(server, max_retries=2)
    if error is None:
        assert backend.answer_q1(record, Questions.from_variant("d")) == "A man plays a piano."
    else:
        with pytest.raises(EndpointError, match=error):
            backend.answer_q1(record, Questions.from_variant("d"))
    assert len(server.requests) == requests


def test_openai_connection_refused_is_retried_then_named(dataset):
    import socket

    from ssp.preprocess.prompts.backends.openai import EndpointError, OpenAIBackend, OpenAIConfig

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    backend = OpenAIBackend(
        OpenAIConfig(
            model="m",
            frames_per_video=4,
            base_url=f"http://127.0.0.1:{port}/v1",
            connect_timeout=0.5,
            max_retries=1,
            backoff=0.01,
        )
    )
    with pytest.raises(EndpointError, match=r"connection error \(ConnectError.*gave up after 2 attempts"):
        backend.answer_q1(records_of(dataset)[0], Questions.from_variant("d"))


def test_openai_dead_endpoint_stops_asking(dataset, tmp_path, server):
    out = tmp_path / "prompts"
    records = records_of(dataset)
    server.script = ["500"] * 100
    backend = openai_backend(server, max_retries=1, give_up_after=2)
    with pytest.raises(SSPError) as err:
        run_prompts(records, backend, PromptsConfig(out, "d"))
    assert len(server.requests) == 4  # 2 videos x 2 attempts, then no more requests
    lines = str(err.value).splitlines()
    assert "4 of 4 failed" in lines[0]
    for record, expected in zip(records, ["gave up after 2", "gave up after 2", "not asked", "not asked"]):
        assert expected in next(line for line in lines if record.rel_dir in line)
    assert not list(out.rglob("prompts.json"))


def test_openai_settings_from_params_and_parallel_workers(dataset, tmp_path, server, monkeypatch, caplog):
    monkeypatch.setenv("OPENAI_BASE_URL", "http://127.0.0.1:1/v1")  # not read any more: a warning says so
    monkeypatch.setenv("SSP_TEST_KEY", "sk-test")
    prompts = PromptsParams(
        backend="openai",
        model="test-vlm",
        base_url=f"http://127.0.0.1:{server.server_port}/v1",
        api_key_env="SSP_TEST_KEY",
        read_timeout=2.0,
        frames_per_video=1,
    )
    backend = build_backend(prompts)
    assert backend.config.read_timeout == 2.0
    assert "$OPENAI_BASE_URL is set but not read" in caplog.text
    out = tmp_path / "prompts"
    summary = run_prompts(records_of(dataset), backend, PromptsConfig(out_dir=out, question_variant="b", workers=3))
    assert summary.asked == 8 and len(server.requests) == 8
    assert all(h.get("Authorization") == "Bearer sk-test" for h in server.headers_seen)
    assert {r["messages"][0]["content"][0]["text"] for r in server.requests} == {QUESTION_1_VARIANTS["b"]}
    recorded = json.loads((out / "prompts_summary.json").read_text())
    assert "asked" not in recorded  # run counts are not written: a no-op re-run leaves the folder as it was
    assert (recorded["backend"], recorded["model"], recorded["weights"], recorded["videos"]) == (
        "openai",
        "test-vlm",
        None,
        4,
    )


# --------------------------------------------------------------------------- hf backend (tiny random LLaVA)


@pytest.fixture(scope="module")
def tiny_llava(tmp_path_factory) -> Path:
    """A randomly initialised LLaVA (tiny CLIP vision tower + tiny Llama) with a word-level
    tokenizer trained here, saved like a hub model folder. No network."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import (
        CLIPVisionConfig,
        LlamaConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaImageProcessor,
        LlavaProcessor,
        PreTrainedTokenizerFast,
    )

    folder = tmp_path_factory.mktemp("tiny-llava")
    words = Tokenizer(models.WordLevel(unk_token="<unk>"))
    words.pre_tokenizer = pre_tokenizers.Whitespace()
    words.decoder = decoders.WordPiece()  # joins words with spaces
    corpus = [*QUESTION_1_VARIANTS.values(), QUESTION_2, "user assistant a man plays a piano", "dog guitar microphone"]
    words.train_from_iterator(
        corpus, trainers.WordLevelTrainer(special_tokens=["<unk>", "<pad>", "<s>", "</s>", "<image>"])
    )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=words,
        unk_token="<unk>",
        pad_token="<pad>",
        bos_token="<s>",
        eos_token="</s>",
        extra_special_tokens={"image_token": "<image>"},
    )
    chat_template = (
        "{% for m in messages %}{{ m['role'] }} "
        "{% for c in m['content'] %}{% if c['type'] == 'image' %}<image> {% else %}{{ c['text'] }} {% endif %}"
        "{% endfor %}{{ eos_token }} {% endfor %}{% if add_generation_prompt %}assistant {% endif %}"
    )
    processor = LlavaProcessor(
        image_processor=LlavaImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}),
        tokenizer=tokenizer,
        patch_size=8,
        vision_feature_select_strategy="full",
        num_additional_image_tokens=1,
        chat_template=chat_template,
        image_token="<image>",
    )
    config = LlavaConfig(
        vision_config=CLIPVisionConfig(
            hidden_size=16,
            intermediate_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            image_size=32,
            patch_size=8,
        ),
        text_config=LlamaConfig(
            vocab_size=len(tokenizer),
            hidden_size=16,
            intermediate_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            num_key_value_heads=2,
            max_position_embeddings=1024,
            pad_token_id=tokenizer.pad_token_id,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
        ),
        image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
        vision_feature_select_strategy="full",
        vision_feature_layer=-1,
    )
    torch.manual_seed(0)
    LlavaForConditionalGeneration(config).save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


def test_hf_backend_end_to_end_with_tiny_llava(dataset, tmp_path, tiny_llava, monkeypatch):
    from transformers import LlavaForConditionalGeneration

    from ssp.preprocess.prompts.backends.hf import HFBackend, HFConfig

    calls = []
    original_generate = LlavaForConditionalGeneration.generate

    def counting_generate(self, **inputs):
        calls.append(inputs)
        return original_generate(self, **inputs)

    monkeypatch.setattr(LlavaForConditionalGeneration, "generate", counting_generate)
    records = records_of(dataset)[:2]
    out = tmp_path / "prompts"
    config = HFConfig(model=str(tiny_llava), frames_per_video=2, max_new_tokens=6, device="cpu")
    summary = run_prompts(records, HFBackend(config), PromptsConfig(out, "d", workers=4))
    assert summary.asked == 4 and len(calls) == 4
    assert all(c["pixel_values"].shape[0] == 2 and c["max_new_tokens"] == 6 and c["do_sample"] is False for c in calls)

    from transformers import AutoProcessor

    tokenizer = AutoProcessor.from_pretrained(tiny_llava).tokenizer
    for i, record in enumerate(records):
        p = read_prompts(out, record)
        assert isinstance(p["a1"], str) and isinstance(p["a2"], list)
        assert p["a1"], "the tiny model should say something (greedy, seeded)"
        assert p["model"] == str(tiny_llava) and p["backend"] == "hf"
        q1_prompt = tokenizer.decode(calls[2 * i]["input_ids"][0], skip_special_tokens=True)
        q2_prompt = tokenizer.decode(calls[2 * i + 1]["input_ids"][0], skip_special_tokens=True)
        assert q1_prompt.endswith("assistant") and q1_prompt.count("assistant") == 1
        assert q2_prompt.endswith("assistant") and q2_prompt.count("assistant") == 2
        assert f"assistant {p['a1']}" in q2_prompt  # A1 is the assistant turn before Q2

    # a fresh run: everything cached, the model is neither loaded nor called
    backend = HFBackend(config)
    for r in records:
        (out / r.rel_dir / "prompts.json").unlink()
    summary = run_prompts(records, backend, PromptsConfig(out, "d"))
    assert summary.asked == 0 and summary.written == 2 and len(calls) == 4
    assert backend._network is None


# --------------------------------------------------------------------------- hf backend, model_chat (MiniCPM-o stand-in)


@pytest.fixture(scope="module")
def minicpm_cache(tmp_path_factory) -> tuple[Path, str]:
    cache = tmp_path_factory.mktemp("hub")
    return cache, minicpm_standin(cache)


@pytest.fixture
def offline_hub(minicpm_cache, monkeypatch) -> str:
    """The MiniCPM-o stand-in's spec, read offline from its hub cache."""
    cache, spec = minicpm_cache
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    return spec


def minicpm_params(spec: str, **overrides) -> PromptsParams:
    values = {
        "backend": "hf",
        "model": spec,
        "trust_remote_code": True,
        "frames_per_video": 2,
        "max_new_tokens": 3,
        "device": "cpu",
        "chat_options": {"use_image_id": False, "max_slice_nums": 2},
        **overrides,
    }
    return PromptsParams(**values)


def test_hf_model_chat_runs_the_repository_code_offline(dataset, tmp_path, offline_hub):
    records = records_of(dataset)[:2]
    out = tmp_path / "prompts"
    backend = build_backend(minicpm_params(offline_hub))
    assert backend.api == "model_chat"  # auto: config.json maps AutoModel to the repository's code
    assert backend.weights.source == "hub" and backend.weights.repo_id == "openbmb/MiniCPM-o-2_6"
    commit = offline_hub.split("@")[1]
    assert backend.weights.revision == commit and "modeling_minicpmo.py" in backend.weights.files
    summary = run_prompts(records, backend, PromptsConfig(out, "d"))
    assert summary.asked == 4

    network = backend._network
    calls = type(network).CALLS[-4:]
    assert not hasattr(network, "apm") and network.config.init_tts is False  # frames and text only
    for i, record in enumerate(records):
        q1, q2 = calls[2 * i], calls[2 * i + 1]
        for call in (q1, q2):
            assert (call["sampling"], call["max_new_tokens"], call["image"]) == (False, 3, None)
            assert (call["use_image_id"], call["max_slice_nums"]) == (False, 2)  # prompts.chat_options
            assert type(call["tokenizer"]).__name__ == "MiniCPMOTokenizerFast"  # the repository's tokenizer
        # MiniCPM's message format: PIL frames then the question in the first user turn
        first = q1["msgs"][0]
        assert [m["role"] for m in q1["msgs"]] == ["user"]
        assert [type(c).__name__ for c in first["content"]] == ["Image", "Image", "str"]
        assert first["content"][-1] == QUESTION_1_VARIANTS["d"]
        p = read_prompts(out, record)
        assert [m["role"] for m in q2["msgs"]] == ["user", "assistant", "user"]
        assert q2["msgs"][1]["content"] == [p["a1"]] and q2["msgs"][2]["content"] == [QUESTION_2]
        assert (p["backend"], p["model"], p["revision"]) == ("hf", offline_hub, commit)
        assert len(p["a2_raw"].split(",")) == 3  # the stand-in answers max_new_tokens words
    recorded = json.loads((out / "prompts_summary.json").read_text())
    assert recorded["weights"]["revision"] == commit and recorded["weights"]["files"] == backend.weights.files
    assert recorded["weights"]["spec"] == offline_hub and "path" not in recorded["weights"]
    assert recorded["settings"]["hf_api"] == "model_chat"

    # deterministic: a fresh model gives the same answers; up to date: nothing asked
    again = build_backend(minicpm_params(offline_hub))
    assert again.answer_q1(records[0], Questions.from_variant("d")) == read_prompts(out, records[0])["a1"]
    assert run_prompts(records, build_backend(minicpm_params(offline_hub)), PromptsConfig(out, "d")).asked == 0
    assert json.loads((out / "prompts_summary.json").read_text()) == recorded


def test_hf_new_model_revision_asks_again(dataset, tmp_path, offline_hub, minicpm_cache):
    records = records_of(dataset)[:1]
    out = tmp_path / "prompts"
    run_prompts(records, build_backend(minicpm_params(offline_hub)), PromptsConfig(out, "d"))
    newer = minicpm_standin(minicpm_cache[0], seed=1)  # other weights: another commit
    assert newer != offline_hub
    summary = run_prompts(records, build_backend(minicpm_params(newer)), PromptsConfig(out, "d"))
    assert (summary.asked, summary.written) == (2, 1)
    assert read_prompts(out, records[0])["revision"] == newer.split("@")[1]


def test_hf_remote_code_needs_trust_remote_code(dataset, offline_hub):
    backend = build_backend(minicpm_params(offline_hub, trust_remote_code=False))
    with pytest.raises(SSPError, match="set prompts.trust_remote_code=true"):
        backend.answer_q1(records_of(dataset)[0], Questions.from_variant("d"))


def test_hf_chat_template_model_from_a_hub_cache(dataset, tmp_path, tiny_llava, monkeypatch):
    cache = tmp_path / "hub"
    spec = hub_cache_entry(
        cache, "llava-hf/tiny-standin", lambda folder: shutil.copytree(tiny_llava, folder, dirs_exist_ok=True)
    )
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    backend = build_backend(PromptsParams(backend="hf", model=spec, max_new_tokens=4, frames_per_video=1, device="cpu"))
    assert backend.api == "chat_template" and backend.weights.revision == spec.split("@")[1]
    assert isinstance(backend.answer_q1(records_of(dataset)[0], Questions.from_variant("a")), str)
    with pytest.raises(SSPError, match="no chat\\(msgs, tokenizer\\) method"):
        build_backend(PromptsParams(backend="hf", model=spec, hf_api="model_chat", device="cpu")).answer_q1(
            records_of(dataset)[0], Questions.from_variant("a")
        )
