"""Start a Ray of the study's own, or join a cluster, with the checks that make a bad cluster one line at once."""
from __future__ import annotations

import contextlib
import os
import sys
from typing import Iterator

import ray
from ray.exceptions import ActorDiedError, GetTimeoutError, RpcError

from recipe.config import RecipeError
from search.plan import Plan, check_gpus, local_gpus
from search.ray_private import TOKEN_AUTH, GcsClient
from search.stopping import Stop
from search.study import StudySpec

if TOKEN_AUTH:
    from search.ray_private import (AuthenticationError, AuthenticationMode, ensure_token_if_auth_enabled,
                                    get_authentication_mode)


def start_ray(p: Plan, stop: Stop) -> None:
    """Start a Ray of the study's own, or join the cluster at --address; a stop meanwhile is raised once Ray is up."""
    # On one machine, loopback only (run.py set Ray's local switch too); a private Ray has no dashboard.
    node_ip = {"_node_ip_address": "127.0.0.1"} if p.on_loopback else {}
    if p.address:
        check_cluster_admits_driver(p.address)
        with stop.deferred():  # ray.init is not to be stopped halfway (search.stopping)
            ray.init(address=p.address, log_to_driver=False, logging_level="ERROR", **node_ip)
        # Ray's core worker logs a refused probe from a thread of its own, at any moment from the refusal until Ray
        # has shut down: stderr stays quiet from the probe's start to the shutdown, so that the error is one line.
        with quiet_stderr():
            try:
                check_cluster_reaches_driver(p.address)
            except RecipeError:
                ray.shutdown()
                raise
    else:
        # address="local": a new Ray of our own, never one that RAY_ADDRESS or `ray start` left around.
        # Tune's trial actors carry a runtime_env (its env_vars), so Ray starts their worker processes afresh: the
        # ones it would prestart for this driver (a Python each that imports Ray) would never be used.
        with stop.deferred():
            ray.init(address="local", num_gpus=local_gpus(), include_dashboard=False, log_to_driver=False,
                     logging_level="ERROR", _system_config={"prestart_worker_first_driver": False}, **node_ip)
        try:
            check_trials_fit(p.spec, ray.cluster_resources().get("CPU", 0))
        except RecipeError:
            ray.shutdown()
            raise


def check_trials_fit(spec: StudySpec, cpus: float) -> None:
    """One line now where a trial asks for more CPUs than this machine's Ray has, not a study waiting forever.

    (On a cluster, nodes may join later: there Tune's own warning says that trials wait for resources.)
    """
    need = spec.resources.cpus_per_trial
    if need > cpus:
        raise RecipeError(f"a trial needs {need:g} CPUs (resources.cpus_per_trial, --cpus-per-trial) but this machine's "
                          f"Ray has {cpus:g}: no trial could start; ask for at most {cpus:g}")


PROBE_TIMEOUT_S = 120  # a worker process to start on a busy head; longer is no refusal
TOKEN_SOURCES = ("in RAY_AUTH_TOKEN, a file named by RAY_AUTH_TOKEN_PATH, or ~/.ray/auth_token; "
                 "`ray get-auth-token` on the head prints it")


def check_cluster_admits_driver(address: str) -> None:
    """One line, at once, where the cluster's GCS refuses this driver's authentication, or none answers.

    Left to ray.init, a refused token costs half a minute of retries and ends in a
    ConnectionError whose cause survives only as text. A GCS client of our own raises Ray's
    AuthenticationError on the first refusal. A Ray without token authentication (before 2.52)
    refuses no driver: only whether a cluster answers is checked there.
    """
    if "://" in address or address in ("auto", "local"):
        return  # Ray Client, or Ray finding a cluster itself: ray.init's own way
    if not TOKEN_AUTH:
        check_cluster_answers(address)
        return
    try:
        # As ray.init does first; a GCS client in token mode without a token aborts the process.
        ensure_token_if_auth_enabled(None, create_token_if_missing=False)
    except AuthenticationError:
        raise RecipeError(f"--address {address}: RAY_AUTH_MODE=token but this driver has no token; give it the "
                          f"cluster's token ({TOKEN_SOURCES})") from None
    try:
        check_cluster_answers(address)
    except AuthenticationError:
        if get_authentication_mode() == AuthenticationMode.TOKEN:
            raise RecipeError(f"--address {address}: the cluster refused this driver's authentication token; give the "
                              f"driver the cluster's token ({TOKEN_SOURCES})") from None
        raise RecipeError(f"--address {address}: the cluster requires Ray's token authentication; set RAY_AUTH_MODE=token "
                          f"and the cluster's token ({TOKEN_SOURCES})") from None


def check_cluster_answers(address: str) -> None:
    """One line where no Ray cluster answers at the address (after the half a minute Ray's client waits).

    On a Ray with token authentication, a cluster that refuses this driver raises Ray's AuthenticationError.
    """
    try:
        with quiet_stderr():  # Ray's C++ client logs each refusal there too
            GcsClient(address=address)
    except RpcError as e:
        raise RecipeError(f"--address {address}: no Ray cluster answers there ({str(e).rstrip('.')}); check the "
                          f"address, which `ray start --head` prints") from None


@contextlib.contextmanager
def quiet_stderr() -> Iterator[None]:
    """File descriptor 2 to /dev/null meanwhile: what C++ code writes there as well as Python's."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


@ray.remote(num_cpus=0)
class Probe:
    def ping(self) -> bool:
        return True


def check_cluster_reaches_driver(address: str) -> None:
    """One line, before any trial, where the cluster's workers cannot call back to this driver.

    A driver in token mode serves only authenticated calls; a cluster without token
    authentication makes none, so every actor it starts for this driver (every trial) dies
    before it runs. An actor that needs no resources shows that at once.
    """
    if not TOKEN_AUTH or get_authentication_mode() != AuthenticationMode.TOKEN:
        return  # a driver without token authentication answers anyone
    probe = Probe.remote()
    try:
        ray.get(probe.ping.remote(), timeout=PROBE_TIMEOUT_S)
    except ActorDiedError:
        # Not killed: Ray's core worker would log the cancelled creation too (start_ray keeps stderr quiet until Ray
        # has shut down).
        raise RecipeError(f"--address {address}: this driver uses Ray's token authentication (RAY_AUTH_MODE=token) but "
                          "the cluster does not, so no trial could start there; unset RAY_AUTH_MODE, or restart the "
                          "cluster with RAY_AUTH_MODE=token") from None
    except GetTimeoutError:
        pass  # a busy cluster, not a refusal: Tune waits for it as it would
    ray.kill(probe)  # start_ray keeps stderr quiet: Ray's core worker logs the cancelled creation of one that never ran


def gpus_to_use(spec: StudySpec) -> int:
    """The study's GPUs: as many as asked for (checked before Ray started, for a Ray of its own), else all Ray has."""
    seen = int(ray.cluster_resources().get("GPU", 0))
    check_gpus(spec.resources.gpus, seen, "the cluster" if len(ray.nodes()) > 1 else "this machine")
    return seen if spec.resources.gpus is None else spec.resources.gpus

