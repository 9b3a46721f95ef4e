"""The pipeline against real servers, without Docker: what infra/docker-compose.yml runs,
started here as plain processes on 127.0.0.1 (ephemeral ports, everything in temp
folders) and stopped afterwards, with a check that no process or port is left.

- PostgreSQL: Debian's binaries (/usr/lib/postgresql/*/bin, not on PATH), a throwaway
  cluster initialised by the ``postgres`` system user when the tests run as root
  (initdb refuses root), trust auth on 127.0.0.1 and a unix socket in the temp dir.
- ``mlflow server`` with that PostgreSQL as backend store and a local folder as
  artifact destination (proxied through the server, as the S3 bucket is in compose);
  a real tiny ``ssp train`` (started through ``ssp launch``, nested under a pipeline
  run) logs to it; params, metrics and the checkpoint are read back with MlflowClient.
- ``prefect server start`` on the same PostgreSQL and ``prefect worker start`` on a
  process pool; infra/prefect/deploy.py deploys ``retrain`` from prefect.yaml onto the
  pool params.yaml names; one run of it over a toy DVC project completes.
- ``docker compose config`` validates infra/docker-compose.yml where the docker client
  has the compose plugin.

Without PostgreSQL's binaries (a laptop) the server tests skip: `bash
infra/ci/install-services.sh` installs them (CI runs it before the tests).
"""

from __future__ import annotations

import glob
import json
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

import httpx
import psutil
import pytest
import yaml

from tests.ports import free_port

ROOT = Path(__file__).resolve().parents[2]
PY = sys.executable
BIN = Path(PY).parent


# -- processes ---------------------------------------------------------------------
def port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


class Service:
    """A server process in its own session, its output in a log file. ``stop()`` ends it
    and every process it started, then checks that none is left and the port is closed."""

    def __init__(
        self,
        name: str,
        command: list[str],
        log: Path,
        port: int | None = None,
        env: dict[str, str] | None = None,
        cwd: Path | None = None,
        user: pwd.struct_passwd | None = None,
        stop_signal: int = signal.SIGTERM,
    ):
        self.name, self.command, self.log, self.port, self.stop_signal = name, command, log, port, stop_signal
        as_user = {"user": user.pw_uid, "group": user.pw_gid, "extra_groups": []} if user else {}
        with open(log, "ab") as out:
            self.proc = subprocess.Popen(
                command, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=cwd, start_new_session=True, **as_user
            )

    def tail(self, lines: int = 60) -> str:
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        return f"--- {self.name} log ({self.log}) ---\n" + "\n".join(text.splitlines()[-lines:])

    def wait_until(self, ready: Callable[[], bool], what: str, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode} before {what}\n{self.tail()}")
            try:
                if ready():
                    return
            except (OSError, httpx.HTTPError):
                pass
            time.sleep(0.3)
        raise TimeoutError(f"{self.name}: no {what} after {timeout:.0f} s\n{self.tail()}")

    def wait_http(self, url: str, timeout: float = 120) -> None:
        self.wait_until(lambda: httpx.get(url, timeout=5).status_code == 200, f"200 from {url}", timeout)

    def descendants(self) -> list[psutil.Process]:
        try:
            return [psutil.Process(self.proc.pid), *psutil.Process(self.proc.pid).children(recursive=True)]
        except psutil.NoSuchProcess:
            return []

    def stop(self, timeout: float = 30) -> None:
        family = self.descendants()  # before the signal: children that left the session too
        if self.proc.poll() is None:
            os.kill(self.proc.pid, self.stop_signal)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                pass
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        for p in family:
            try:
                p.kill()
            except psutil.NoSuchProcess:
                pass
        self.proc.wait(10)
        gone, alive = psutil.wait_procs(family, timeout=10)
        assert not alive, f"{self.name}: processes left behind: {alive}"
        if self.port:
            deadline = time.monotonic() + 10
            while port_open(self.port) and time.monotonic() < deadline:
                time.sleep(0.2)
            assert not port_open(self.port), f"{self.name}: port {self.port} still open"


# -- PostgreSQL ---------------------------------------------------------------------
def postgres_bindir() -> Path | None:
    """Debian keeps the server binaries out of PATH, one folder per major version."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(Path(p).parts[-3]))
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")  # Homebrew, other distributions
    return Path(initdb).parent if initdb else None


class Postgres:
    def __init__(self, service: Service, port: int, user: str):
        self.service, self.port, self.user = service, port, user

    def url(self, database: str, driver: str = "") -> str:
        scheme = f"postgresql+{driver}" if driver else "postgresql"
        return f"{scheme}://{self.user}@127.0.0.1:{self.port}/{database}"

    def connect(self, database: str = "postgres"):
        import psycopg

        return psycopg.connect(host="127.0.0.1", port=self.port, user=self.user, dbname=database, autocommit=True)

    def accepts_connections(self) -> bool:
        import psycopg

        try:
            self.connect().close()
        except psycopg.OperationalError:
            return False
        return True

    def create_database(self, name: str) -> str:
        with self.connect() as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return name


@pytest.fixture(scope="module")
def postgres():
    pytest.importorskip("psycopg", reason="psycopg (PostgreSQL driver) not installed in this environment")
    bindir = postgres_bindir()
    if bindir is None:
        pytest.skip(
            "PostgreSQL server binaries not found (/usr/lib/postgresql/*/bin or initdb on PATH): "
            "run `bash infra/ci/install-services.sh` (Debian/Ubuntu) to install them"
        )
    owner = None
    if os.geteuid() == 0:  # initdb and postgres refuse to run as root
        try:
            owner = pwd.getpwnam("postgres")
        except KeyError:
            pytest.skip("running as root and there is no `postgres` system user to own the cluster")
    # as root, the cluster's owner must reach the folder: /tmp rather than a private TMPDIR
    workdir = Path(tempfile.mkdtemp(prefix="ssp-pg-", dir="/tmp" if owner else None))
    if owner:
        os.chown(workdir, owner.pw_uid, owner.pw_gid)
    as_user = {"user": owner.pw_uid, "group": owner.pw_gid, "extra_groups": []} if owner else {}
    init = subprocess.run(
        [
            str(bindir / "initdb"),
            "-D",
            str(workdir / "data"),
            "-U",
            "ssp",
            "--auth=trust",
            "-E",
            "UTF8",
            "--no-locale",
            "--no-sync",
        ],
        cwd=workdir,
        capture_output=True,
        text=True,
        **as_user,
    )
    assert init.returncode == 0, f"initdb failed:\n{init.stdout}\n{init.stderr}"
    port = free_port()
    service = Service(
        "postgres",
        # -F: no fsync (a throwaway cluster); -k: socket in our folder, not /var/run
        [
            str(bindir / "postgres"),
            "-D",
            str(workdir / "data"),
            "-k",
            str(workdir),
            "-h",
            "127.0.0.1",
            "-p",
            str(port),
            "-F",
        ],
        log=workdir / "postgres.log",
        port=port,
        cwd=workdir,
        user=owner,
        stop_signal=signal.SIGINT,
    )
    pg = Postgres(service, port, "ssp")
    try:
        service.wait_until(pg.accepts_connections, "connection", timeout=60)
        yield pg
    finally:
        try:
            service.stop()
        finally:
            print(service.tail(20))
            shutil.rmtree(workdir, ignore_errors=True)


def server_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "MLFLOW_"))}
    env.update(PYTHONUNBUFFERED="1", **extra)
    return env


# -- MLflow ----------------------------------------------------------------------
@pytest.fixture
def mlflow_server(postgres, tmp_path):
    database = postgres.create_database("mlflow")
    port = free_port()
    artifacts = tmp_path / "artifacts"
    service = Service(
        "mlflow",
        [
            str(BIN / "mlflow"),
            "server",
            "--backend-store-uri",
            postgres.url(database, "psycopg"),
            "--artifacts-destination",
            artifacts.as_uri(),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
        ],
        log=tmp_path / "mlflow.log",
        port=port,
        cwd=tmp_path,
        # the job runner (huey consumers) is for GenAI jobs; not needed, and 2 cores are few
        env=server_env(MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false"),
    )
    url = f"http://127.0.0.1:{port}"
    try:
        service.wait_http(f"{url}/health", timeout=150)
        yield {"url": url, "artifacts": artifacts, "database": database}
    finally:
        try:
            service.stop()
        finally:
            print(service.tail())  # shown by pytest when the test failed


def tiny_benchmark(root: Path) -> dict[str, Path]:
    """`ssp synth --size tiny` and its log-mel features: what stage 1's `aavs` row reads."""
    from ssp.data.avsbench import load_records
    from ssp.data.synthetic import SynthConfig, generate_dataset
    from ssp.params import DataParams
    from ssp.preprocess.logmel import compute_logmel

    data = generate_dataset(SynthConfig.from_params(DataParams(seed=0, size="tiny")), root / "data", progress=False)
    compute_logmel(load_records(data), root / "logmel")
    return {"data": data, "logmel": root / "logmel"}


# one short epoch on two subsets, 64 px, no workers: seconds on a CPU
TINY_TRAINING = [
    "train1.epochs=1",
    "train1.batch_size=1",
    "train1.max_frames=2",
    "train1.num_workers=0",
    "train1.threads=1",
    "train1.overlays=0",
    "train1.subsets=[v1m,v2]",
    "model.num_points=64",
]


@pytest.mark.slow  # > 20 s: starts PostgreSQL and a server
@pytest.mark.servers
def test_training_logs_to_the_mlflow_server_with_postgres_backend(mlflow_server, postgres, tmp_path, monkeypatch):
    from mlflow import MlflowClient

    from ssp.ops.tracking import RunLogger

    bench = tiny_benchmark(tmp_path)
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"train": {"gpus": 1, "nodes": 1}}))
    url = mlflow_server["url"]
    monkeypatch.setenv("MLFLOW_TRACKING_URI", url)
    monkeypatch.chdir(tmp_path)

    # a pipeline parent run, and `ssp train` started the way dvc.yaml starts it (ssp launch)
    with RunLogger("ssp-avs", "pipeline", parent_run_id="") as parent:
        env = server_env(
            MLFLOW_TRACKING_URI=url,
            SSP_MLFLOW_PARENT_RUN_ID=parent.run_id,
            DVC_STAGE="train_stage1",
            OMP_NUM_THREADS="1",
            TQDM_DISABLE="1",
        )
        command = [
            PY,
            "-m",
            "ssp.ops.launch",
            "--params",
            str(params),
            "--",
            "train",
            "--stage",
            "1",
            "--data",
            str(bench["data"]),
            "--out",
            str(tmp_path / "run"),
            "--params",
            str(params),
            "--logmel",
            str(bench["logmel"]),
            "--row",
            "aavs",
            "--no-progress",
            *[arg for s in TINY_TRAINING for arg in ("--set", s)],
        ]
        done = subprocess.run(command, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]

    client = MlflowClient(url)
    experiment = client.get_experiment_by_name("ssp-avs")
    (run,) = client.search_runs([experiment.experiment_id], f"tags.mlflow.parentRunId = '{parent.run_id}'")
    assert run.info.status == "FINISHED"
    assert run.data.tags["dvc.stage"] == "train_stage1" and run.data.tags["ssp.row"] == "aavs"
    assert run.data.params["train.epochs"] == "1"
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    history = client.get_metric_history(run.info.run_id, "val_miou")
    assert [m.step for m in history] == [1]
    assert history[0].value == pytest.approx(metrics["best"]["miou"])

    # the checkpoint went through the server's artifact proxy and comes back the same
    local_best = tmp_path / "run" / "checkpoints" / "best.safetensors"
    assert [a.path for a in client.list_artifacts(run.info.run_id, "checkpoints")] == ["checkpoints/best.safetensors"]
    fetched = client.download_artifacts(run.info.run_id, "checkpoints/best.safetensors", str(tmp_path / "fetched"))
    assert Path(fetched).read_bytes() == local_best.read_bytes()
    stored = list(mlflow_server["artifacts"].rglob("best.safetensors"))
    assert len(stored) == 1 and stored[0].read_bytes() == local_best.read_bytes()

    # both runs are rows of the PostgreSQL store; nothing was logged locally
    with postgres.connect(mlflow_server["database"]) as conn:
        rows = conn.execute("SELECT run_uuid, status FROM runs").fetchall()
    assert sorted(rows) == sorted([(parent.run_id, "FINISHED"), (run.info.run_id, "FINISHED")])
    assert not (tmp_path / "mlruns").exists()


# -- Prefect -----------------------------------------------------------------------
def make_dvc_project(root: Path, work_pool: str) -> Path:
    """A two-stage DVC project whose params.yaml names the work pool."""
    root.mkdir()
    subprocess.run(["git", "init", "-q"], cwd=root, check=True)
    subprocess.run([str(BIN / "dvc"), "init", "-q"], cwd=root, check=True)
    (root / "params.yaml").write_text(yaml.safe_dump({"data": {"classes": 4}, "pipeline": {"work_pool": work_pool}}))
    make_data = (
        "import yaml; n = yaml.safe_load(open('params.yaml'))['data']['classes']; open('data.txt', 'w').write('x' * n)"
    )
    score = "import json; json.dump({'score': len(open('data.txt').read())}, open('score.json', 'w'))"
    stages = {
        "synth": {"cmd": f'{PY} -c "{make_data}"', "params": ["data"], "outs": ["data.txt"]},
        "train": {"cmd": f'{PY} -c "{score}"', "deps": ["data.txt"], "metrics": [{"score.json": {"cache": False}}]},
    }
    (root / "dvc.yaml").write_text(yaml.safe_dump({"stages": stages}, sort_keys=False))
    subprocess.run(["git", "add", "-A"], cwd=root, check=True)
    subprocess.run(["git", "-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qm", "toy"], cwd=root, check=True)
    return root


@pytest.fixture
def prefect_server(postgres, tmp_path):
    database = postgres.create_database("prefect")
    port = free_port()
    home = tmp_path / "prefect-home"
    env = server_env(
        PREFECT_HOME=str(home),
        PREFECT_SERVER_DATABASE_CONNECTION_URL=postgres.url(database, "asyncpg"),
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        PREFECT_SERVER_UI_ENABLED="false",
    )
    service = Service(
        "prefect-server",
        # the API only: schedules and the other loop services are not what this checks
        [str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port), "--no-services"],
        log=tmp_path / "prefect-server.log",
        port=port,
        env=env,
        cwd=tmp_path,
    )
    url = f"http://127.0.0.1:{port}/api"
    try:
        service.wait_http(f"{url}/health", timeout=150)
        yield {"url": url, "home": home}
    finally:
        try:
            service.stop()
        finally:
            print(service.tail())


@pytest.mark.slow  # > 20 s: starts PostgreSQL and a server
@pytest.mark.servers
def test_retrain_deployment_runs_on_a_process_worker(prefect_server, tmp_path):
    pool = "ssp-test-pool"
    project = make_dvc_project(tmp_path / "project", work_pool=pool)
    mlflow_db = tmp_path / "mlflow.db"
    env = server_env(
        PREFECT_API_URL=prefect_server["url"],
        PREFECT_HOME=str(prefect_server["home"]),
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        PREFECT_WORKER_QUERY_SECONDS="1",
        SSP_PROJECT_DIR=str(ROOT),  # prefect.yaml's pull step: flows run from this checkout
        MLFLOW_TRACKING_URI=f"sqlite:///{mlflow_db}",
    )
    env.pop("SSP_WORK_POOL", None)

    # SSP_PROJECT_DIR unset when deploying: `prefect deploy` would bake its value in;
    # unset, the pull step keeps the placeholder and each worker resolves its own
    deploy_env = {k: v for k, v in env.items() if k != "SSP_PROJECT_DIR"}
    deploy = subprocess.run(
        [
            PY,
            str(ROOT / "infra/prefect/deploy.py"),
            "--params-file",
            str(project / "params.yaml"),
            "--name",
            "retrain",
            "--flow-params",
            json.dumps({"project_dir": str(project)}),
        ],
        env=deploy_env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert deploy.returncode == 0, deploy.stdout + deploy.stderr
    api = httpx.Client(base_url=prefect_server["url"], timeout=30)
    deployment = api.get("/deployments/name/retrain/retrain").json()
    assert deployment["work_pool_name"] == pool
    assert deployment["parameters"] == {"project_dir": str(project)}
    assert (
        deployment["pull_steps"][0]["prefect.deployments.steps.set_working_directory"]["directory"]
        == "{{ $SSP_PROJECT_DIR }}"
    )
    assert [s["schedule"]["cron"] for s in deployment["schedules"]] == ["0 3 * * *"]
    # one run at a time: the deployment's own limit (prefect.yaml) and the pool's (deploy.py)
    assert deployment["global_concurrency_limit"]["limit"] == 1
    assert deployment["concurrency_options"]["collision_strategy"] == "ENQUEUE"
    work_pool = api.get(f"/work_pools/{pool}").json()
    assert work_pool["type"] == "process" and work_pool["concurrency_limit"] == 1

    worker = Service(
        "prefect-worker",
        [str(BIN / "prefect"), "worker", "start", "--pool", pool, "--limit", "1"],
        log=tmp_path / "worker.log",
        env=env,
        cwd=tmp_path,
    )
    try:
        run = subprocess.run(
            [str(BIN / "prefect"), "deployment", "run", "retrain/retrain"],
            env=env,
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert run.returncode == 0, run.stdout + run.stderr
        flow_run_id = re.search(r"UUID:\s*([0-9a-f-]{36})", run.stdout).group(1)

        state: dict = {}

        def finished() -> bool:
            state.update(api.get(f"/flow_runs/{flow_run_id}").json()["state"])
            return state["type"] in {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}

        worker.wait_until(finished, "finished flow run", timeout=240)
        assert state["type"] == "COMPLETED", f"{state}\n{worker.tail(120)}"
    finally:
        try:
            worker.stop()
        finally:
            print(worker.tail(120))

    # the flow ran the DVC stages of the toy project and logged the pipeline run
    assert json.loads((project / "score.json").read_text()) == {"score": 4}
    status = subprocess.run([str(BIN / "dvc"), "status", "--json"], cwd=project, capture_output=True, text=True)
    assert json.loads(status.stdout) == {}
    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{mlflow_db}")
    experiment = client.get_experiment_by_name("ssp-avss")
    (parent,) = client.search_runs([experiment.experiment_id])
    assert parent.info.status == "FINISHED" and parent.data.metrics["score.score"] == 4


# -- docker compose ----------------------------------------------------------------
def compose_command() -> list[str] | None:
    docker = shutil.which("docker")
    if docker and subprocess.run([docker, "compose", "version"], capture_output=True).returncode == 0:
        return [docker, "compose"]
    standalone = shutil.which("docker-compose")
    if standalone:
        version = subprocess.run([standalone, "version", "--short"], capture_output=True, text=True).stdout
        if version.strip().lstrip("v")[:1] in {"2", "3"}:  # compose v1 does not know this file format
            return [standalone]
    return None


def example_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in {"COMPOSE_FILE", "COMPOSE_PROJECT_NAME"}}
    for line in (ROOT / "infra/.env.example").read_text().splitlines():
        if "=" in line and not line.lstrip().startswith("#"):
            key, value = line.split("=", 1)
            env[key.strip()] = value.strip()
    return env


@pytest.mark.servers
def test_compose_file_validates():
    compose = compose_command()
    if compose is None:
        pytest.skip("no docker client with the compose plugin (`docker compose`) or docker-compose v2 here")
    files = ["-f", str(ROOT / "infra/docker-compose.yml"), "-f", str(ROOT / "infra/docker-compose.gpu.yml")]
    out = subprocess.run(
        [*compose, *files, "config", "--format", "json"], env=example_env(), capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    services = json.loads(out.stdout)["services"]
    long_running = {"postgres", "objectstore", "mlflow", "prefect-server", "prefect-worker"}
    assert long_running | {"buckets", "prefect-deploy"} == set(services)
    for name in long_running:
        assert services[name].get("healthcheck", {}).get("test"), f"{name} has no healthcheck"
        assert all(p["host_ip"] == "127.0.0.1" for p in services[name].get("ports", [])), name
    mlflow_args = " ".join(services["mlflow"]["command"])
    assert "postgresql+psycopg://mlflow:change-me-mlflow@postgres:5432/mlflow" in mlflow_args
    assert "--artifacts-destination=s3://ssp-mlflow/artifacts" in mlflow_args
    worker = services["prefect-worker"]
    assert worker["environment"]["PREFECT_API_URL"] == "http://prefect-server:4200/api"
    assert worker["deploy"]["resources"]["reservations"]["devices"][0]["capabilities"] == ["gpu"]

    # a required secret left unset is an error, not an empty password
    env = example_env()
    del env["POSTGRES_PASSWORD"]
    missing = subprocess.run(
        [*compose, "-f", str(ROOT / "infra/docker-compose.yml"), "config", "-q"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert missing.returncode != 0 and "POSTGRES_PASSWORD" in missing.stderr


# -- work pool templates and pool choice (no server) --------------------------------
def render_job(template: dict, **values) -> dict:
    """What a worker makes of a base job template: defaults, then the deployment's values."""
    from prefect.utilities.templating import apply_values

    defaults = {k: v.get("default") for k, v in template["variables"]["properties"].items()}
    return apply_values(template["job_configuration"], {**defaults, **values})


def test_kubernetes_template_requests_the_gpus_asked_for():
    template = json.loads((ROOT / "infra/prefect/kubernetes-gpu.json").read_text())
    job = render_job(template, gpus=4, image="registry.example/ssp:1", memory="96Gi")
    container = job["job_manifest"]["spec"]["template"]["spec"]["containers"][0]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 4
    assert container["resources"]["requests"]["nvidia.com/gpu"] == 4
    assert container["resources"]["limits"]["memory"] == "96Gi"
    assert container["image"] == "registry.example/ssp:1"
    assert job["job_manifest"]["spec"]["template"]["spec"]["volumes"][0]["emptyDir"]["medium"] == "Memory"
    assert job["env"]["SSP_PROJECT_DIR"] == "/opt/ssp"


def test_kubernetes_template_mounts_the_workspace_and_the_dvc_cache_from_pvcs():
    template = json.loads((ROOT / "infra/prefect/kubernetes-gpu.json").read_text())
    pod = render_job(template, workspace_pvc="team-a-ws")["job_manifest"]["spec"]["template"]["spec"]
    claims = {
        v["name"]: v["persistentVolumeClaim"]["claimName"] for v in pod["volumes"] if "persistentVolumeClaim" in v
    }
    assert claims == {"workspace": "team-a-ws", "dvc-cache": "ssp-dvc-cache"}  # the cache PVC's default
    (container,) = pod["containers"]
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    # the project dir (code, data/, outputs, dvc.lock, mlruns/) and the DVC cache persist;
    # the flow runs where the workspace is mounted
    assert mounts["/opt/ssp"] == "workspace" and mounts["/opt/ssp/.dvc/cache"] == "dvc-cache"
    assert container["workingDir"] == "/opt/ssp" == render_job(template)["env"]["SSP_PROJECT_DIR"]
    # an empty workspace PVC starts as the image's checkout (a copy cut short is redone: the
    # marker), writable by the image's user (uid 1000)
    (seed,) = pod["initContainers"]
    assert seed["image"] == container["image"] and "cp -a /opt/ssp/. /workspace/" in seed["command"][-1]
    assert seed["volumeMounts"] == [{"name": "workspace", "mountPath": "/workspace"}]
    assert pod["securityContext"]["fsGroup"] == 1000


def test_docker_template_mounts_the_workspace_and_the_dvc_cache():
    template = json.loads((ROOT / "infra/prefect/docker-gpu.json").read_text())
    job = render_job(template)
    targets = {volume.split(":")[1]: volume.split(":")[0] for volume in job["volumes"]}
    assert targets == {"/opt/ssp": "ssp-workspace", "/opt/ssp/.dvc/cache": "ssp-dvc-cache"}
    assert job["container_create_kwargs"]["working_dir"] == "/opt/ssp" == job["env"]["SSP_PROJECT_DIR"]


@pytest.mark.parametrize("template_file", ["docker-gpu.json", "kubernetes-gpu.json"])
def test_work_pool_env_makes_every_run_log_this_nodes_system_metrics(template_file, mlflow_store, monkeypatch):
    from mlflow import MlflowClient

    from ssp.ops.tracking import RunLogger

    env = render_job(json.loads((ROOT / "infra/prefect" / template_file).read_text()))["env"]
    monkeypatch.setenv("MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING", env["MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING"])
    monkeypatch.setenv("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", "0.2")  # MLflow's default: 10 s
    with RunLogger("ssp-avss", "stage2-full-seed0") as run:  # as `ssp train` opens it
        time.sleep(0.7)
    metrics = MlflowClient(mlflow_store).get_run(run.run_id).data.metrics
    assert 0 <= metrics["system/node0/cpu_utilization_percentage"] <= 100
    assert metrics["system/node0/system_memory_usage_megabytes"] > 0
    history = MlflowClient(mlflow_store).get_metric_history(run.run_id, "system/node0/system_memory_usage_megabytes")
    assert len(history) >= 2  # sampled while the run was open, not once


def test_docker_template_requests_gpus_through_device_requests():
    template = json.loads((ROOT / "infra/prefect/docker-gpu.json").read_text())
    job = render_job(template, gpus=2)
    (request,) = job["container_create_kwargs"]["device_requests"]
    assert request == {"driver": "nvidia", "count": 2, "capabilities": [["gpu"]]}
    assert render_job(template)["container_create_kwargs"]["device_requests"][0]["count"] == -1  # all
    assert job["networks"] == ["ssp"]  # the compose network: mlflow, prefect-server by name
    docker = pytest.importorskip("docker")  # docker-py accepts the request as written
    assert docker.types.DeviceRequest(**request)["Count"] == 2


def test_deploy_picks_the_pool_from_cli_then_env_then_params(tmp_path, monkeypatch):
    import importlib.util

    spec = importlib.util.spec_from_file_location("ssp_infra_deploy", ROOT / "infra/prefect/deploy.py")
    deploy = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(deploy)
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"pipeline": {"work_pool": "gpu-k8s", "work_pool_type": "kubernetes"}}))
    monkeypatch.delenv("SSP_WORK_POOL", raising=False)
    monkeypatch.delenv("SSP_WORK_POOL_TYPE", raising=False)
    assert deploy.choose_pool(None, None, params) == ("gpu-k8s", "kubernetes")
    assert deploy.choose_pool(None, None, tmp_path / "none.yaml") == ("ssp-process", "process")
    monkeypatch.setenv("SSP_WORK_POOL", "from-env")
    assert deploy.choose_pool(None, None, params) == ("from-env", "kubernetes")
    assert deploy.choose_pool("from-cli", "docker", params) == ("from-cli", "docker")
    assert deploy.base_job_template("kubernetes")["job_configuration"]["job_manifest"]["kind"] == "Job"
    assert "command" in deploy.base_job_template("process")["job_configuration"]
    assert "retrain" in deploy.deployment_names(ROOT / "prefect.yaml")
