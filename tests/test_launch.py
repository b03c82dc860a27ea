"""launch/: the local multi-process launcher, the TPU VM script (dry runs and a stand-in gcloud), the GKE JobSet.

No network and no real gcloud: `tpu_vm.sh` is checked through `--dry-run` and through GCLOUD pointing at a stand-in
that records its arguments; `local.sh` starts stand-in trainer modules (GATEKV_TRAIN_MODULE) that print or fail.
"""

import glob
import json
import os
import shlex
import signal
import subprocess
import sys
import tarfile
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LAUNCH = os.path.join(ROOT, "launch")
LOCAL = os.path.join(LAUNCH, "local.sh")
TPU_VM = os.path.join(LAUNCH, "tpu_vm.sh")
DISTRIBUTED = "--config.distributed."


def environment(**extra) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("GCLOUD", "GATEKV_TRAIN_MODULE", "PYTHON")}
    env["PYTHON"] = sys.executable
    env.update({k: str(v) for k, v in extra.items()})
    return env


def bash(script: str, *args: str, timeout: float = 30, **env) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", script, *args], capture_output=True, text=True, timeout=timeout,
                          env=environment(**env), cwd=ROOT)


def commands(stdout: str) -> list[list[str]]:
    """The printed commands (not the `#` notes), split as a shell would."""
    return [shlex.split(line) for line in stdout.splitlines() if line.strip() and not line.startswith("#")]


def test_every_script_parses_and_is_executable():
    scripts = sorted(glob.glob(os.path.join(LAUNCH, "*.sh")))
    assert {os.path.basename(s) for s in scripts} >= {"local.sh", "tpu_vm.sh"}
    for script in scripts:
        result = subprocess.run(["bash", "-n", script], capture_output=True, text=True, timeout=30)
        assert result.returncode == 0, result.stderr
        assert os.access(script, os.X_OK), f"{script} is not executable"


# ---- local.sh


def test_local_dry_run_prints_one_command_per_process_with_its_distributed_flags():
    train = ["--config=configs/tiny.py", "--config.workdir=/tmp/a dir", "--config.fit.steps=3"]
    result = bash(LOCAL, "--processes", "3", "--devices", "2", "--port", "12345", "--dry-run", "--", *train)
    assert result.returncode == 0, result.stderr
    lines = commands(result.stdout)
    assert len(lines) == 3
    for i, words in enumerate(lines):
        assert words == [sys.executable, "-m", "gatekv_jax.train", *train,
                         "--config.distributed.coordinator=localhost:12345",
                         "--config.distributed.num_processes=3",
                         f"--config.distributed.process_id={i}",
                         "--config.distributed.cpu_devices=2"]


def test_local_dry_run_defaults_two_processes_four_devices_and_one_free_port():
    result = bash(LOCAL, "--dry-run", "--", "--config=configs/tiny.py")
    assert result.returncode == 0, result.stderr
    lines = commands(result.stdout)
    assert len(lines) == 2
    ports = {w.split(":")[-1] for words in lines for w in words if w.startswith(DISTRIBUTED + "coordinator=")}
    assert len(ports) == 1 and 0 < int(ports.pop()) < 65536
    assert all(DISTRIBUTED + "cpu_devices=4" in words and DISTRIBUTED + "num_processes=2" in words
               for words in lines)


@pytest.mark.parametrize("args", [["--processes", "0"], ["--devices", "x"], ["--port", "-1"], ["--bogus"]])
def test_local_rejects_bad_flags(args):
    result = bash(LOCAL, *args, "--dry-run")
    assert result.returncode == 2
    assert "local.sh:" in result.stderr


STAND_IN = """
import json, os, sys, time
process = int(next(a for a in sys.argv if a.startswith("--config.distributed.process_id=")).split("=")[1])
print(json.dumps(sys.argv[1:]), flush=True)
with open(os.path.join(os.environ["STAND_IN_DIR"], f"pid_{process}"), "w") as f:
    f.write(str(os.getpid()))
mode = os.environ.get("STAND_IN_MODE", "ok")
if mode == "fail" and process == 1:
    time.sleep(0.3)
    print("boom from process 1", flush=True)
    sys.exit(3)
if mode != "ok":
    time.sleep(60)
"""


@pytest.fixture
def stand_in(tmp_path):
    """Environment for local.sh that runs the module `stand_in_train` (above) instead of the trainer."""
    (tmp_path / "stand_in_train.py").write_text(STAND_IN)
    return dict(GATEKV_TRAIN_MODULE="stand_in_train", PYTHONPATH=tmp_path, STAND_IN_DIR=tmp_path)


def pids(folder, count: int, timeout: float = 15) -> list[int]:
    deadline = time.monotonic() + timeout
    paths = [folder / f"pid_{i}" for i in range(count)]
    while not all(p.exists() and p.read_text() for p in paths):
        assert time.monotonic() < deadline, "the stand-in processes did not start"
        time.sleep(0.05)
    return [int(p.read_text()) for p in paths]


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_local_runs_every_process_and_waits_for_all(tmp_path, stand_in):
    logs = tmp_path / "logs"
    result = bash(LOCAL, "--processes", "2", "--devices", "1", "--logs", str(logs), "--",
                  "--config=configs/tiny.py", "--config.note=two words", **stand_in)
    assert result.returncode == 0, result.stderr
    assert result.stdout == ""
    ports = set()
    for i in range(2):
        argv = json.loads((logs / f"process_{i}.log").read_text().splitlines()[0])
        assert argv[:2] == ["--config=configs/tiny.py", "--config.note=two words"]
        assert argv[3:] == ["--config.distributed.num_processes=2", f"--config.distributed.process_id={i}",
                            "--config.distributed.cpu_devices=1"]
        ports.add(argv[2])
    assert len(ports) == 1 and ports.pop().startswith("--config.distributed.coordinator=localhost:")


def test_a_failing_process_stops_the_others_and_its_status_is_returned(tmp_path, stand_in):
    logs = tmp_path / "logs"
    start = time.monotonic()
    result = bash(LOCAL, "--processes", "2", "--devices", "1", "--logs", str(logs), "--", "--config=x.py",
                  STAND_IN_MODE="fail", **stand_in)
    assert result.returncode == 3
    assert time.monotonic() - start < 20  # process 0 (sleeping 60 s) was stopped, not waited for
    assert "process 1 exited with status 3" in result.stderr
    assert "boom from process 1" in result.stderr  # the end of the failing log
    assert not alive(pids(tmp_path, 2)[0])


def test_ctrl_c_stops_every_process(tmp_path, stand_in):
    launcher = subprocess.Popen(["bash", LOCAL, "--processes", "2", "--devices", "1", "--logs", str(tmp_path / "l"),
                                 "--", "--config=x.py"], env=environment(STAND_IN_MODE="sleep", **stand_in),
                                cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                # as at a terminal: a job started in the background (as CI may run the
                                # suite) inherits SIGINT ignored, and bash cannot trap a signal ignored at entry
                                preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        children = pids(tmp_path, 2)
        launcher.send_signal(signal.SIGINT)
        _, stderr = launcher.communicate(timeout=20)
    finally:
        launcher.kill()
    assert launcher.returncode == 130, stderr
    assert "interrupted" in stderr
    assert not any(alive(pid) for pid in children)


# ---- tpu_vm.sh

WHERE = ["--name", "my-tpu", "--zone", "us-central2-b", "--project", "my-proj"]
LOCATION = ["--zone=us-central2-b", "--project=my-proj"]


def dry(subcommand: str, *args: str, **env) -> list[list[str]]:
    result = bash(TPU_VM, subcommand, *WHERE, "--dry-run", *args, **env)
    assert result.returncode == 0, result.stderr
    return commands(result.stdout)


def option(words: list[str], flag: str) -> str:
    (value,) = [w.split("=", 1)[1] for w in words if w.startswith(flag + "=")]
    return value


def test_create_a_tpu_vm():
    assert dry("create") == [["gcloud", "compute", "tpus", "tpu-vm", "create", "my-tpu", *LOCATION,
                              "--accelerator-type=v5litepod-8", "--version=v2-alpha-tpuv5-lite"]]
    (words,) = dry("create", "--accelerator", "v6e-8", "--spot")
    assert "--version=v2-alpha-tpuv6e" in words and words[-1] == "--spot"
    (words,) = dry("create", "--accelerator", "v4-8", "--version", "my-runtime")
    assert "--version=my-runtime" in words


def test_create_a_pod_through_a_queued_resource():
    result = bash(TPU_VM, "create", *WHERE, "--accelerator", "v4-32", "--queued", "--dry-run")
    assert result.returncode == 0, result.stderr
    assert commands(result.stdout) == [
        ["gcloud", "compute", "tpus", "queued-resources", "create", "my-tpu", "--node-id=my-tpu", *LOCATION,
         "--accelerator-type=v4-32", "--runtime-version=tpu-ubuntu2204-base"]]
    assert "queued-resources describe my-tpu" in result.stdout and "ACTIVE" in result.stdout  # the wait, as a note


def test_setup_copies_the_checkout_to_every_worker_and_installs_it():
    scp, ssh = dry("setup", TMPDIR="/tmp/x")
    assert scp == ["gcloud", "compute", "tpus", "tpu-vm", "scp", "/tmp/x/gatekv_jax-my-tpu.tar.gz",
                   "my-tpu:gatekv_jax.tar.gz", "--worker=all", *LOCATION]
    assert ssh[:6] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "my-tpu"] and "--worker=all" in ssh
    script = option(ssh, "--command")
    assert "tar -xzf ~/gatekv_jax.tar.gz -C ~/gatekv_jax" in script
    assert "pip install --python .venv/bin/python '.[tpu]' datasets" in script
    assert "venv --python 3.12 .venv" in script
    syntax = subprocess.run(["bash", "-n", "-c", script], capture_output=True, text=True, timeout=30)
    assert syntax.returncode == 0, syntax.stderr


def test_train_runs_the_same_command_on_every_worker():
    extra = ["--config.fit.steps=5", "--config.note=it's two words"]
    (ssh,) = dry("train", "--config", "configs/gemma3.py", "--", *extra)
    assert ssh[:6] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "my-tpu"]
    assert "--worker=all" in ssh and all(w in ssh for w in LOCATION)
    command = option(ssh, "--command")
    assert command.startswith("cd ~/gatekv_jax && .venv/bin/python -m gatekv_jax.train --config=configs/gemma3.py")
    assert "--config.distributed.auto=True" in command


def test_the_remote_train_command_hands_the_trainer_its_flags_intact(tmp_path):
    """Run the printed --command in a shell whose home holds a stand-in venv python that records its argv."""
    extra = ["--config.fit.steps=5", "--config.note=it's \"two\" words $HOME"]
    (ssh,) = dry("train", "--", *extra)
    python = tmp_path / "gatekv_jax" / ".venv" / "bin" / "python"
    python.parent.mkdir(parents=True)
    python.write_text(f"#!{sys.executable}\nimport json, sys\nprint(json.dumps(sys.argv[1:]))\n")
    python.chmod(0o755)
    ran = subprocess.run(["bash", "-c", option(ssh, "--command")], capture_output=True, text=True, timeout=30,
                         env={"HOME": str(tmp_path), "PATH": os.environ["PATH"]})
    assert ran.returncode == 0, ran.stderr
    assert json.loads(ran.stdout) == ["-m", "gatekv_jax.train", "--config=configs/qwen3.py",
                                      f"--config.workdir={tmp_path}/gatekv_workdir/my-tpu",
                                      "--config.distributed.auto=True", *extra]


def test_fetch_copies_the_outputs_from_worker_0():
    (scp,) = dry("fetch", "--out", "here")
    assert scp == ["gcloud", "compute", "tpus", "tpu-vm", "scp",
                   *[f"my-tpu:gatekv_workdir/my-tpu/{f}"
                     for f in ("gates.safetensors", "summary.json", "history.json", "training.png")],
                   "here/", "--worker=0", *LOCATION]
    (scp,) = dry("fetch", "--workdir", "/gcs/bucket/run")
    assert scp[5] == "my-tpu:/gcs/bucket/run/gates.safetensors" and scp[9] == "tpu_outputs/my-tpu/"


def test_delete_the_tpu_vm_or_the_queued_resource():
    assert dry("delete") == [["gcloud", "compute", "tpus", "tpu-vm", "delete", "my-tpu", *LOCATION, "--quiet"]]
    assert dry("delete", "--queued") == [["gcloud", "compute", "tpus", "queued-resources", "delete", "my-tpu",
                                          *LOCATION, "--force", "--quiet"]]


def test_all_is_create_setup_train_fetch_delete():
    steps = [words[3:5] for words in dry("all", "--queued")]
    assert steps == [["queued-resources", "create"], ["tpu-vm", "scp"], ["tpu-vm", "ssh"], ["tpu-vm", "ssh"],
                     ["tpu-vm", "scp"], ["queued-resources", "delete"]]
    assert [words[3:5] for words in dry("all", "--keep")][-1] == ["tpu-vm", "scp"]


@pytest.mark.parametrize("missing, flag", [("--name", "--name"), ("--zone", "--zone")])
def test_a_missing_name_or_zone_is_named(missing, flag):
    where = list(WHERE)
    del where[where.index(missing):where.index(missing) + 2]
    result = bash(TPU_VM, "train", *where, "--dry-run")
    assert result.returncode != 0 and result.stdout == ""
    assert flag in result.stderr


@pytest.mark.parametrize("args, message", [
    (["frobnicate"], "unknown subcommand"),
    (["train", *WHERE, "--bogus"], "unknown option '--bogus'"),
    (["fetch", *WHERE, "--", "--config.x=1"], "trainer flags"),
    (["create", *WHERE, "--accelerator", "tpu9-8"], "pass --version"),
    (["create", "--name", "My_TPU", "--zone", "z", "--project", "p"], "--name 'My_TPU'"),
])
def test_bad_arguments_are_refused(args, message):
    result = bash(TPU_VM, *args, "--dry-run")
    assert result.returncode != 0
    assert message in result.stderr


FAKE_GCLOUD = r"""#!/usr/bin/env bash
# A stand-in gcloud: records each call (arguments separated by \x1f) and answers the few questions asked.
log=$FAKE_GCLOUD_LOG
{ printf '%s\x1f' "$@"; printf '\n'; } >> "$log"
if [ "$*" = "config get-value project" ]; then echo "${FAKE_PROJECT-}"; exit 0; fi
if [ "$3 $4" = "queued-resources describe" ]; then
  n=$(( $(cat "$log.describes" 2>/dev/null || echo 0) + 1 )); echo "$n" > "$log.describes"
  if [ "$n" -ge 2 ]; then echo ACTIVE; else echo WAITING_FOR_RESOURCES; fi
  exit 0
fi
if [ "$3 $4" = "tpu-vm scp" ] && [[ "$5" == *.tar.gz ]]; then cp "$5" "$log.archive.tar.gz"; fi
if [ -n "${FAKE_FAIL_ON-}" ] && [[ "$*" == *"$FAKE_FAIL_ON"* ]]; then echo "fake failure" >&2; exit 7; fi
"""


@pytest.fixture
def fake_gcloud(tmp_path):
    script = tmp_path / "gcloud"
    script.write_text(FAKE_GCLOUD)
    script.chmod(0o755)
    log = tmp_path / "calls"

    def calls() -> list[list[str]]:
        return [line.split("\x1f")[:-1] for line in log.read_text().splitlines()] if log.exists() else []

    env = dict(GCLOUD=script, FAKE_GCLOUD_LOG=log, GATEKV_POLL_SECONDS=0, TMPDIR=tmp_path)
    return env, calls, log


def test_gcloud_missing_is_an_error_unless_dry_run(tmp_path):
    result = bash(TPU_VM, "delete", *WHERE, GCLOUD=tmp_path / "nowhere" / "gcloud")
    assert result.returncode != 0 and "gcloud not found" in result.stderr
    assert bash(TPU_VM, "delete", *WHERE, "--dry-run", GCLOUD=tmp_path / "nowhere" / "gcloud").returncode == 0


def test_the_project_defaults_to_gcloud_config_and_is_required(fake_gcloud):
    env, calls, _ = fake_gcloud
    result = bash(TPU_VM, "delete", "--name", "t", "--zone", "z", "--dry-run", FAKE_PROJECT="from-config", **env)
    assert result.returncode == 0, result.stderr
    assert "--project=from-config" in commands(result.stdout)[0]
    assert calls() == [["config", "get-value", "project"]]  # a dry run asks gcloud nothing else
    result = bash(TPU_VM, "delete", "--name", "t", "--zone", "z", "--dry-run", FAKE_PROJECT="", **env)
    assert result.returncode != 0 and "missing project" in result.stderr and "--project" in result.stderr


def test_all_with_a_stand_in_gcloud_waits_for_the_queued_resource_and_uploads_the_checkout(tmp_path, fake_gcloud):
    env, calls, log = fake_gcloud
    out = tmp_path / "outputs"
    result = bash(TPU_VM, "all", *WHERE, "--queued", "--accelerator", "v4-32", "--out", str(out), "--",
                  "--config.fit.steps=5", **env)
    assert result.returncode == 0, result.stderr
    steps = [c[2:4] for c in calls()]
    assert steps == [["queued-resources", "create"], ["queued-resources", "describe"],
                     ["queued-resources", "describe"], ["tpu-vm", "scp"], ["tpu-vm", "ssh"], ["tpu-vm", "ssh"],
                     ["tpu-vm", "scp"], ["queued-resources", "delete"]]
    train = option(calls()[5], "--command")
    assert "--config.distributed.auto=True --config.fit.steps=5" in train
    assert out.is_dir() and not list(tmp_path.glob("gatekv_jax-*.tar.gz"))  # the local archive is removed
    with tarfile.open(f"{log}.archive.tar.gz") as archive:
        names = set(archive.getnames())
    assert {"pyproject.toml", "gatekv_jax/train.py", "configs/qwen3.py", "launch/tpu_vm.sh"} <= names
    assert not any(n.startswith((".venv/", ".git/")) or "__pycache__" in n for n in names)


def test_all_stops_at_a_failed_step_and_says_the_tpu_is_still_up(fake_gcloud):
    env, calls, _ = fake_gcloud
    result = bash(TPU_VM, "all", *WHERE, FAKE_FAIL_ON="gatekv_jax.train", **env)
    assert result.returncode == 7
    assert "still up" in result.stderr and "launch/tpu_vm.sh delete --name my-tpu" in result.stderr
    assert [c[2:4] for c in calls()][-1] == ["tpu-vm", "ssh"]  # nothing after the failed train, no delete


def test_help():
    result = bash(TPU_VM, "--help")
    assert result.returncode == 0 and "create" in result.stdout and "--queued" in result.stdout
    result = bash(LOCAL, "--help")
    assert result.returncode == 0 and "--processes" in result.stdout


# ---- GKE


def test_the_jobset_runs_the_trainer_with_auto_detection_on_every_host():
    yaml = pytest.importorskip("yaml", reason="PyYAML is not installed: the JobSet manifest is not parsed")
    with open(os.path.join(LAUNCH, "xpk", "jobset.yaml")) as f:
        jobset = yaml.safe_load(f)
    assert jobset["apiVersion"].startswith("jobset.x-k8s.io/") and jobset["kind"] == "JobSet"
    (replicated,) = jobset["spec"]["replicatedJobs"]
    job = replicated["template"]["spec"]
    assert job["parallelism"] == job["completions"] >= 1
    pod = job["template"]["spec"]
    (container,) = pod["containers"]
    assert container["image"] == "IMAGE"
    assert container["command"] == ["python3", "-m", "gatekv_jax.train"]
    assert "--config.distributed.auto=True" in container["args"]
    assert container["resources"]["requests"]["google.com/tpu"] == container["resources"]["limits"]["google.com/tpu"]
    assert set(pod["nodeSelector"]) == {"cloud.google.com/gke-tpu-accelerator", "cloud.google.com/gke-tpu-topology"}
    workdir = option(container["args"], "--config.workdir")
    assert any(workdir.startswith(m["mountPath"] + "/") for m in container["volumeMounts"])


def test_the_dockerfile_copies_paths_that_exist():
    with open(os.path.join(LAUNCH, "xpk", "Dockerfile")) as f:
        copies = [line.split()[1:-1] for line in f if line.startswith("COPY ")]
    assert copies and all(os.path.exists(os.path.join(ROOT, p)) for paths in copies for p in paths)
