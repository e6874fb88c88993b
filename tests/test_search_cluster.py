"""Studies that join a running Ray cluster: a cluster that refuses the driver's authentication; a study on
a cluster of three nodes (Tune's files on --storage, in an S3 bucket) that loses a worker node mid-trial. The lost node
takes the trial's worker process with it: the same fault as a worker killed on one machine (the OOM
killer, say), which Tune meets the same way, so that one has no study of its own. And a study's own Ray given
logical GPUs, to see how many trials share a GPU and run at once."""
import contextlib
import json
import os
import shutil
import subprocess
import sys
from collections import Counter

import psutil
import pytest
from conftest import REPO, process_tree, read_trials, run_study

from search.ray_private import TOKEN_AUTH

TINY = str(REPO / "tests" / "studies" / "tiny.toml")

# A Ray head on this machine's loopback, owned by this test. Like any cluster that ray.init()
# starts, it requires Ray's token authentication (the token is in ~/.ray/auth_token).
HEAD = """
import os, sys
os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
import ray
ray.init(num_cpus=0, include_dashboard=False, _node_ip_address="127.0.0.1")  # the study is refused first
print(ray.get_runtime_context().gcs_address, flush=True)
sys.stdin.read()
"""


@contextlib.contextmanager
def ray_head(auth_mode: str | None = None, token: str | None = None):
    """A Ray head on loopback, owned by the test; yields its address. RAY_AUTH_MODE and RAY_AUTH_TOKEN for it."""
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN")}
    env |= {k: v for k, v in (("RAY_AUTH_MODE", auth_mode), ("RAY_AUTH_TOKEN", token)) if v is not None}
    head = subprocess.Popen([sys.executable, "-c", HEAD], cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            text=True, env=env)
    try:
        address = head.stdout.readline().strip()
        assert address.startswith("127.0.0.1:")
        yield address
    finally:
        head.stdin.close()
        head.wait(timeout=120)


@pytest.mark.skipif(not TOKEN_AUTH, reason="this Ray has no token authentication (it came with Ray 2.52): every cluster "
                                          "admits every driver")
@pytest.mark.parametrize("cluster, driver, says", [
    ("token", "disabled", "the cluster requires Ray's token authentication; set RAY_AUTH_MODE=token"),
    ("disabled", "token", "this driver uses Ray's token authentication (RAY_AUTH_MODE=token) but the cluster does not"),
], ids=["cluster-token-driver-not", "driver-token-cluster-not"])
def test_a_cluster_that_refuses_the_drivers_authentication_is_one_line_before_any_trial(tmp_path, cluster, driver, says):
    results, storage = tmp_path / "results", tmp_path / "shared"
    token = "0123456789abcdef0123456789abcdef"  # whichever side is in token mode has one, not ~/.ray's
    with ray_head(cluster, token=token) as address:
        run = run_study(["--study", TINY, "--results-dir", str(results), "--trials", "1",
                         "--address", address, "--storage", str(storage)], env={"RAY_AUTH_MODE": driver,
                                                                                 "RAY_AUTH_TOKEN": token})
    assert run.returncode == 2, run.stderr[-3000:]
    assert run.stderr.splitlines() == [run.stderr.strip()] and run.stderr.startswith(f"error: --address {address}: ")
    assert says in run.stderr
    assert "trial" not in run.stdout  # none launched, nor announced
    assert not results.exists() and not storage.exists()


# A cluster of three "machines" on loopback, owned by the test: a head that runs nothing (no CPUs)
# and two worker nodes of one CPU each. Each PID written to its stdin names a trial's process;
# the node running it is lost at once: its processes frozen, removed without a graceful
# shutdown, and whatever of it is left killed, as when a machine vanishes.
CLUSTER = """
import os, signal, sys
import psutil
from ray.cluster_utils import Cluster

# A node whose raylet stops answering is declared dead after ~5 s rather than Ray's ~30 s.
health = {"health_check_period_ms": 1000, "health_check_timeout_ms": 2000, "health_check_failure_threshold": 3,
          "prestart_worker_first_driver": False}  # (and no idle worker processes: trials start their own)
cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "node_ip_address": "127.0.0.1",
                                                        "include_dashboard": False, "_system_config": health})
workers = [cluster.add_node(num_cpus=1, node_ip_address="127.0.0.1") for _ in range(2)]
cluster.wait_for_nodes()
print(cluster.address, flush=True)
for line in sys.stdin:
    pid = int(line)
    os.kill(pid, signal.SIGSTOP)
    parents = {p.pid for p in psutil.Process(pid).parents()}
    node = next(n for n in workers if n.all_processes["raylet"][0].process.pid in parents)
    left = psutil.Process(node.all_processes["raylet"][0].process.pid).children(recursive=True)
    cluster.remove_node(node, allow_graceful=False)
    for p in left:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass
    print(f"removed {node.node_id}", flush=True)
cluster.shutdown()
"""


def tune_results(files: dict[str, bytes], experiment: str) -> list[dict]:
    """Every result Tune logged in an experiment (result.json of each trial), from the objects of its storage."""
    return [json.loads(line) for key, data in files.items() if key.startswith(f"{experiment}/") and
            key.endswith("/result.json") for line in data.decode().splitlines()]


def recorded_checkpoint(root) -> bool:
    """Whether the study's record holds a search trial's checkpoint: one reported an epoch, and Tune has it stored."""
    try:
        return bool(json.loads((root / "checkpoints.json").read_text()).get("tune"))
    except (OSError, ValueError):  # none yet (the file is written whole: never read half-written)
        return False


def trial_processes(pid: int) -> list[int]:
    """The processes running a Tune trial (Ray names an actor's process after its class: ImplicitFunc for a
    function trainable) among process `pid`'s descendants."""
    found = []
    for p in process_tree(pid):
        with contextlib.suppress(psutil.Error):
            if "ImplicitFunc" in " ".join(p.cmdline()):
                found.append(p.pid)
    return found


def test_a_study_on_a_cluster_that_loses_a_node_mid_trial_goes_on_and_collects_its_final_run(tmp_path, s3_server):
    results = tmp_path / "results"
    # Tune's files in object storage, which every node reaches as the driver does: the endpoint in AWS_ENDPOINT_URL (the
    # URI with the endpoint in its query is test_faults' study) and credentials, fake ones here, in the environment.
    bucket = s3_server.new_bucket()
    storage, tune_files = f"s3://{bucket}/hpo", f"{bucket}/hpo/tiny"
    s3 = s3_server.env | {"AWS_ENDPOINT_URL": f"http://{s3_server.endpoint}"}
    # Token authentication, as on any cluster ray.init() starts; the driver has the same token (~/.ray/auth_token).
    env = os.environ | {"RAY_AUTH_MODE": "token"} | s3
    cluster = subprocess.Popen([sys.executable, "-c", CLUSTER], cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                               text=True, env=env)
    lost: dict = {}

    def lose_the_node_once_a_trial_reported(proc, out) -> None:
        if lost or not recorded_checkpoint(results / "tiny"):
            return
        (lost["pid"],) = trial_processes(cluster.pid)  # one trial at a time
        cluster.stdin.write(f"{lost['pid']}\n")
        cluster.stdin.flush()
        lost["removed"] = cluster.stdout.readline()

    try:
        address = cluster.stdout.readline().strip()
        assert address.startswith("127.0.0.1:")
        run = run_study(["--study", TINY, "--results-dir", str(results), "--trials", "1",
                         "--address", address, "--storage", storage], env={"RAY_AUTH_MODE": "token", **s3},
                        watch=lose_the_node_once_a_trial_reported, poll=0.05)
    finally:
        cluster.stdin.close()
        cluster.wait(timeout=120)
    assert run.returncode == 0, run.stderr[-3000:]
    assert lost["removed"].startswith("removed ")
    assert "trial 0 crashed; retrying from its last checkpoint" in run.stdout
    # Tune's epochs go on after the loss, in another process; each epoch was run once (Optuna has each once too).
    files = s3_server.files(tune_files)
    logged = tune_results(files, f"{tune_files}/tune")
    assert [r["epoch"] for r in logged] == [1, 2, 3]
    before = [r["epoch"] for r in logged if r["pid"] == lost["pid"]]
    assert before and max(before) < 3  # lost mid-trial
    after = [r for r in logged if r["epoch"] > max(before)]
    assert after and all(r["pid"] != lost["pid"] for r in after)
    (trial,) = read_trials(results / "tiny" / "optuna.db", "tiny")
    assert trial.state.name == "COMPLETE" and sorted(trial.intermediate_values) == [1, 2, 3]
    # Tune's files are in the bucket, every node's view; the final run ran in a Tune working directory on some node
    # and was brought back into results/ from there.
    assert tune_results(files, f"{tune_files}/final-tune") and not (results / "tiny" / "tune").exists()
    final = results / "tiny" / "final" / "seed-0"
    assert json.loads((final.parent / "summary.json").read_text())["status"] == "completed"
    summary = json.loads((final / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["epochs_run"] == 2
    assert len((final / "metrics.csv").read_text().strip().splitlines()) == 1 + 2
    assert (final / "curves.html").exists() and (final / "checkpoints" / "best.pt").exists()
    best = json.loads((results / "tiny" / "best.json").read_text())
    assert json.loads((final / "config.json").read_text()) == best["final_config"] | {"device": "cpu"}
    assert not [key for key in files if "/checkpoint_" in key]  # every run ended: no checkpoint is kept


# A study's driver on a machine that shows two GPUs: its own Ray is given two logical ones (Ray's scheduler
# places fractions of them as it would real ones) and each run logs where Ray placed it. The run trains nothing:
# it waits until every run of its phase that can run at once has started (or 150 s, when fewer can), then reports
# its epochs. The search's trials (5, two to a GPU: four at once) are all equal until the horizon, where trial 0, the
# seed recipe, is behind: ASHA stops none, and the choice is another trial, so that the seed recipe is trained
# beside it as the baseline. Re-validation (the top 2) and the final stage (2 seeds, and the baseline's 2) follow.
LOGICAL_GPUS = """
import json, os, sys, time
os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"  # loopback only, as search.run sets it
import search.plan, search.trainable

LOG = os.environ["TRIAL_LOG"]
AT_ONCE = {"search": 4, "revalidation": 2, "final": 4}


def write(event, **fields):
    with open(LOG, "a") as f:
        f.write(json.dumps({"event": event, "t": time.time(), **fields}) + "\\n")


def started(phase):
    with open(LOG) as f:
        return sum(e["event"] == "start" and e["phase"] == phase for e in map(json.loads, f))


def cannot_load(driver):
    if os.getpid() == driver:  # Tune's driver loads the trainable too, and passes it on
        return Broken()
    raise ImportError("the stand-in trainable cannot be loaded here")


class Broken:
    def __reduce__(self):  # unpickled in a worker, it raises: as a worker whose environment lacks a module
        return cannot_load, (os.getpid(),)


BROKEN = Broken() if os.environ.get("FAIL_TO_LOAD") else None


def trial(params, *, base, threads, out_dir=None, **more):  # as search.trainable.run_recipe is called
    import ray
    from ray import tune

    phase = "final" if "run" in params else "revalidation" if "lr" not in params else "search"
    name = params.get("run", params.get("trial_id"))
    write("start", phase=phase, run=name, gpus=[str(g) for g in ray.get_gpu_ids()], device=base["device"],
          pid=os.getpid())
    deadline = time.time() + 150  # Ray starts workers at nice 15: on a busy machine they start slowly
    while started(phase) < AT_ONCE[phase] and time.time() < deadline:
        time.sleep(0.05)
    BROKEN  # with FAIL_TO_LOAD, no worker can load this function: its runs fail before they start
    for epoch in (1, 2, 3):
        acc = 0.5 if epoch < 3 or name == 0 else 0.6
        if epoch == 3:
            write("end", phase=phase, pid=os.getpid())  # before the last report: Tune may stop the trial there
            if out_dir:  # a final run's own record, as recipe.train writes it
                os.makedirs(f"{out_dir}/{name}", exist_ok=True)
                with open(f"{out_dir}/{name}/summary.json", "w") as f:
                    json.dump({"status": "completed", "final_eval_acc": acc, "epochs_run": 3, "epochs": 3}, f)
        tune.report({"epoch": epoch, "eval_acc": acc, "train_loss": 1.0, "images_per_s": 1.0})


search.plan.local_gpus = lambda: 2  # before search.run and search.tuning import it
search.trainable.run_recipe = trial
from search.run import main

sys.exit(main(sys.argv[1:]))
"""


@pytest.fixture(scope="module")
def logical_gpus(tmp_path_factory):
    """The study on two logical GPUs, to its end: its output and each run's events, in time order."""
    tmp_path = tmp_path_factory.mktemp("gpus")
    log = tmp_path / "trials.jsonl"
    log.touch()
    run = subprocess.run([sys.executable, "-c", LOGICAL_GPUS, "--study", TINY, "--results-dir", str(tmp_path / "r"),
                          "--trials", "5", "--gpus", "2", "--trials-per-gpu", "2", "--cpus-per-trial", "0.5",
                          "--revalidate-top", "2", "--final-seeds", "2", "--baseline"], cwd=REPO, capture_output=True,
                         text=True, timeout=400, env=os.environ | {"TRIAL_LOG": str(log)}, stdin=subprocess.DEVNULL)
    assert run.returncode == 0, run.stderr[-3000:]
    events = sorted((json.loads(line) for line in log.read_text().splitlines()), key=lambda e: e["t"])
    return run, events


def at_once(events: list[dict], phase: str) -> tuple[int, list[Counter]]:
    """The most runs of a phase running at once, and how many shared each GPU at every start."""
    running: dict[int, str] = {}
    most, shares = 0, []
    for e in (e for e in events if e["phase"] == phase):
        if e["event"] == "start":
            running[e["pid"]] = e["gpus"][0]
            shares.append(Counter(running.values()))
            most = max(most, len(running))
        else:
            del running[e["pid"]]
    return most, shares


def test_trials_per_gpu_puts_that_many_trials_on_each_gpu_and_runs_gpus_times_that_many_at_once(logical_gpus):
    run, events = logical_gpus
    assert "2 GPUs, 2 trials each, up to 4 at a time" in run.stdout.splitlines()[0]
    starts = [e for e in events if e["event"] == "start" and e["phase"] == "search"]
    assert len(starts) == 5 and len([e for e in events if e["event"] == "end" and e["phase"] == "search"]) == 5
    # Each trial on one GPU, as a GPU run (device "cuda"), a trial's share of a GPU being half of one.
    assert all(len(e["gpus"]) == 1 and e["device"] == "cuda" for e in starts), starts
    # At most four at once, two on each GPU; four did run at once (the first four waited for each other).
    most, shares = at_once(events, "search")
    assert most == 4 and all(max(share.values()) <= 2 for share in shares), shares
    assert Counter(e["gpus"][0] for e in starts[:4]) == Counter({"0": 2, "1": 2})


def test_re_validation_spreads_its_runs_over_the_gpus_before_they_share_one(logical_gpus):
    _, events = logical_gpus
    starts = [e for e in events if e["event"] == "start" and e["phase"] == "revalidation"]
    assert sorted(e["run"] for e in starts) == [1, 2]  # the top 2: trial 0 was behind at the horizon
    # A GPU each, at once (Ray would have packed two half-GPU requests onto GPU 0).
    assert sorted(e["gpus"][0] for e in starts) == ["0", "1"]
    assert at_once(events, "revalidation")[0] == 2


def test_the_final_stage_trains_the_seed_recipe_beside_the_chosen_settings_spread_over_the_gpus(logical_gpus):
    run, events = logical_gpus
    assert ("final stage: 2 seeds of the chosen settings and 2 of the seed recipe's beside them (the baseline, "
            "unless the seed recipe is chosen): 4 runs, up to 4 at a time") in run.stdout.splitlines()[1]
    starts = [e for e in events if e["event"] == "start" and e["phase"] == "final"]
    assert sorted(e["run"] for e in starts) == ["baseline/seed-0", "baseline/seed-1", "seed-0", "seed-1"]
    # Four runs on two GPUs: half a GPU each, two to a GPU, all four at once.
    assert Counter(e["gpus"][0] for e in starts) == Counter({"0": 2, "1": 2})
    assert at_once(events, "final")[0] == 4
    assert run.stdout.strip().splitlines()[-1] == ("final: 60.00 +- 0.00% test accuracy over 2 seeds; the seed recipe: "
                                                   "60.00 +- 0.00% (+0.00 points, 95% CI +0.00 to +0.00, paired over 2 "
                                                   "seeds)")


def test_final_runs_that_fail_before_they_start_are_one_line_exit_1_and_the_summary_says_so(logical_gpus, tmp_path):
    # The logical-GPU study again from its final stage (its final runs removed), in workers that cannot load the
    # trainable: Tune's result of a run that never started has no config, so the runs are named from Tune's trials.
    run, _ = logical_gpus
    results = tmp_path / "r"
    shutil.copytree(run.args[run.args.index("--results-dir") + 1], results)
    shutil.rmtree(results / "tiny" / "final")
    log = tmp_path / "trials.jsonl"
    log.touch()
    failing = subprocess.run([sys.executable, "-c", LOGICAL_GPUS, "--study", TINY, "--results-dir", str(results),
                              "--resume"], cwd=REPO, capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL,
                             env=os.environ | {"TRIAL_LOG": str(log), "FAIL_TO_LOAD": "1"})
    assert failing.returncode == 1, failing.stderr[-3000:]
    last = failing.stderr.strip().splitlines()[-1]
    assert last.startswith("error: the final run final/baseline/seed-0 failed after 2 attempts: ") and last.endswith(
        "; --resume tries again"), failing.stderr[-3000:]
    assert "final: " not in failing.stdout  # (above the line, Tune's own log of each failure)
    summary = json.loads((results / "tiny" / "final" / "summary.json").read_text())
    assert [r["status"] for r in summary["runs"] + summary["baseline"]["runs"]] == ["failed"] * 4, summary
    assert summary["status"] != "completed" and not log.read_text()  # none started


@pytest.mark.parametrize("runs, gpus, share", [(3, 4, 1.0), (6, 4, 1 / 2), (3, 1, 1 / 3), (12, 1, 1 / 4), (5, 2, 1 / 3)],
                         ids=["3-on-4", "6-on-4", "3-on-1", "12-on-1", "5-on-2"])
def test_a_phases_runs_ask_for_a_share_of_a_gpu_that_spreads_them_over_the_gpus_before_they_share(runs, gpus, share):
    from search.study import load
    from search.tuning import resources

    spec = load("default")  # 4 trials share a GPU
    assert resources(spec, gpus, runs=runs) == {"cpu": 2, "gpu": pytest.approx(share)}
    assert resources(spec, gpus) == {"cpu": 2, "gpu": 1 / 4}  # a search trial: trials_per_gpu to a GPU
    assert resources(spec, 0, runs=runs)["gpu"] == 0.0
