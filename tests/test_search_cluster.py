"""A study that joins a running Ray cluster and keeps Tune's files on --storage."""
import json
import subprocess
import sys

from conftest import REPO, run_study

# A Ray head on this machine's loopback, owned by this test. Like any cluster that ray.init()
# starts, it requires Ray's token authentication (the token is in ~/.ray/auth_token).
HEAD = """
import os, sys
os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
import ray
ray.init(num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1")
print(ray.get_runtime_context().gcs_address, flush=True)
sys.stdin.read()
"""


def test_a_study_on_a_running_cluster_stores_tune_files_on_storage_and_collects_the_final_run(tmp_path):
    results, storage = tmp_path / "results", tmp_path / "shared"
    head = subprocess.Popen([sys.executable, "-c", HEAD], cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            text=True)
    try:
        address = head.stdout.readline().strip()
        assert address.startswith("127.0.0.1:")
        run = run_study(["--study", "smoke", "--results-dir", str(results), "--trials", "2",
                         "--address", address, "--storage", str(storage)], env={"RAY_AUTH_MODE": "token"})
    finally:
        head.stdin.close()
        head.wait(timeout=120)
    assert run.returncode == 0, run.stderr[-3000:]
    assert (storage / "smoke" / "tune").is_dir() and (storage / "smoke" / "final-tune").is_dir()
    assert not (results / "smoke" / "tune").exists()
    # The final run ran in a Tune working directory and was brought back into results/.
    final = results / "smoke" / "final"
    summary = json.loads((final / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["epochs_run"] == 4
    assert len((final / "metrics.csv").read_text().strip().splitlines()) == 1 + 4
    assert (final / "curves.html").exists() and (final / "checkpoints" / "best.pt").exists()
    best = json.loads((results / "smoke" / "best.json").read_text())
    assert json.loads((final / "config.json").read_text()) == best["final_config"] | {"device": "cpu"}
