"""The object-store model repository and the deployment state shared by replicas, against a real
S3-compatible server (moto in server mode, on 127.0.0.1).

Run: python tests/compat/check_object_store.py [path/to/cairn]   (default: target/release/cairn;
needs `moto[server]` and boto3, tests/compat/requirements.txt).

1. Refused starts: without credentials, and with a bucket that does not exist, the server exits
   at once with a reason that names the store, instead of serving an empty repository.
2. `--model-repository s3://models/repo`: the server loads what the bucket holds and serves it
   while a client sends requests without a pause, through all of what follows (no request may
   fail):
   - a half-uploaded version (its other files, not yet its model file) is never loaded, however
     many polls see it; once its model file arrives it is loaded;
   - a changed object (a model file overwritten: a new ETag) is downloaded and served;
   - a version deleted from the store is unloaded.
3. The S3 server refuses stale conditional puts (what the replicas' merge relies on). Two
   servers with the same `--deployment-state s3://state/shared`: changes made through each
   at the same moment (a canary on one model through the first, a pinned stable version on
   another through the second) both reach both servers; a weight changed through the second and
   a rollback through the first follow; the second server's routing sends canary traffic to the
   version chosen through the first.
4. Publishing to the store: a training job on the first server (POST /v2/models/iris/train)
   publishes version N to the bucket (claimed, the job's mark, model file last, nothing
   pending left), both servers load it and put it on trial as a version a server trained (a
   shadow judged on pairs) on both; a second job whose lease is taken over in the store while
   it trains publishes nothing (refused, nothing claimed); two `cairn train` runs started at
   once against the bucket publish under two different numbers, and both servers load both.

Every failure is collected; the script exits non-zero listing them all.
"""

import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

import boto3
from moto.server import ThreadedMotoServer

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from checks import FAILURES, check, finish  # noqa: E402
import cairn_server  # noqa: E402
from cairn_server import ROOT  # noqa: E402

BINARY = os.path.abspath(sys.argv[1]) if len(sys.argv) > 1 else os.path.join(ROOT, "target", "release", "cairn")
MODELS = os.path.join(ROOT, "models")
POLL_S = 1
# Generous: a poll is 1 s, but the CI machine has two cores shared with the client threads.
CHANGE_TIMEOUT_S = 30
# The half-uploaded version must stay unloaded across at least this many polls.
HALF_UPLOAD_POLLS = 4
# A training job or `cairn train` run on iris: a few seconds; generous for two shared cores.
TRAIN_TIMEOUT_S = 180
TOTAL_TIMEOUT_S = 600
# iris as the bucket holds it: judged by its feedback, so that a version a server trained enters
# as a shadow judged on pairs (README: `[retrain] trial`).
IRIS_ROLLOUT = "\n[rollout]\nmax_accuracy_drop = 0.05\n"



def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server(cairn_server.Server):
    """One cairn process without gRPC, in exactly the environment given (the store's settings),
    named in the messages. It may refuse to start: it is not waited for (`started()`)."""

    def __init__(self, name, repo, args, env):
        super().__init__(BINARY, repo, "--grpc-listen", "off", *args, env=env, inherit=False, cwd=ROOT,
                         grpc=False, wait=0)
        self.name = name

    def ready(self, model, version):
        try:
            return self.call("GET", f"/v2/models/{model}/versions/{version}/ready")[0] == 200
        except OSError:
            return False

    def deployment(self, model):
        status, _, body = self.call("GET", f"/v2/models/{model}/deployment")
        return body if status == 200 else {}

    def dump(self):
        print(f"--- {self.name} log (last 40 lines)")
        print("".join(self.log[-40:]), end="")


def wait_for(condition, timeout=CHANGE_TIMEOUT_S):
    """The shared wait, with the time a change is given to reach a server."""
    return cairn_server.wait_for(condition, timeout)


def sample(model):
    with open(os.path.join(MODELS, model, "1", "sample.json")) as f:
        return json.load(f)


class Load(threading.Thread):
    """Requests without a pause and without a version (the deployment's route); every answer that
    is not a 200 is kept."""

    def __init__(self, server, model):
        super().__init__(daemon=True)
        self.server, self.model, self.body = server, model, sample(model)
        self.stopping = threading.Event()
        self.sent = 0
        self.failures = []

    def run(self):
        while not self.stopping.is_set():
            try:
                status, _, body = self.server.call("POST", f"/v2/models/{self.model}/infer", self.body)
            except OSError as e:
                status, body = None, str(e)
            self.sent += 1
            if status != 200:
                self.failures.append((status, str(body)[:200]))

    def finish(self):
        self.stopping.set()
        self.join(60)


def refused_starts(env, work):
    print("== refused starts")
    no_credentials = {k: v for k, v in env.items() if k not in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")}
    # With no keys the S3 client asks the instance metadata service: pointed at a closed local
    # port so the check reaches nothing beyond 127.0.0.1.
    no_credentials["AWS_METADATA_ENDPOINT"] = f"http://127.0.0.1:{free_port()}"
    cases = [
        ("no credentials", no_credentials, "s3://models/repo", "no credentials"),
        ("a bucket that does not exist", env, "s3://no-such-bucket/repo", "NoSuchBucket"),
    ]
    for label, case_env, url, expect in cases:
        t0 = time.time()
        s = Server(label, url, ["--state-dir", os.path.join(work, "refused")], case_env)
        try:
            code = s.proc.wait(90)
        except subprocess.TimeoutExpired:
            code = None
        took = time.time() - t0
        s.stop()
        log = "".join(s.log)
        last = log.strip().splitlines()[-1] if log.strip() else ""
        print(f"  {label}: exit {code} after {took:.1f} s: {last}")
        if not check(code not in (None, 0) and s.url is None, f"{label}: the server did not refuse to start (exit {code})"):
            s.dump()
        check("cannot start" in log and url in log, f"{label}: the reason does not name {url}: {last!r}")
        check(expect in log, f"{label}: the reason does not say {expect!r}: {last!r}")


def upload(s3, model, files):
    """Uploads models/<model>/<file> to s3://models/repo/<model>/<file>, in the order given."""
    for name in files:
        local = os.path.join(MODELS, model, *(name.split("/")))
        s3.upload_file(local, "models", f"repo/{model}/{name}")


def repository_versions(server, model):
    status, _, body = server.call("POST", "/v2/repository/index", {})
    if status != 200:
        return set()
    return {e.get("version") for e in body if e.get("name") == model and e.get("state") == "READY"}


def infer_version(server, model, version):
    status, _, body = server.call("POST", f"/v2/models/{model}/versions/{version}/infer", sample(model))
    if status != 200:
        return status, None
    return status, [o["data"] for o in body["outputs"]]


def train_configs(work, slow=False):
    """The servers' training configs: the shipped iris.toml; `slow`, one that trains for
    seconds (many epochs, no early stop), long enough to take its lease away meanwhile."""
    directory = os.path.join(work, "train")
    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(ROOT, "configs", "train", "iris.toml")) as f:
        text = f.read()
    if slow:
        text = text.replace("epochs = 200", "epochs = 1500").replace("patience = 20", "patience = 1500")
    with open(os.path.join(directory, "iris.toml"), "w") as f:
        f.write(text)
    return directory


def repository(s3, env, work):
    print("== s3://models/repo: load, a half-uploaded version, a changed object, a deletion")
    with open(os.path.join(MODELS, "iris", "config.toml")) as f:
        s3.put_object(Bucket="models", Key="repo/iris/config.toml", Body=(f.read() + IRIS_ROLLOUT).encode())
    upload(s3, "iris", ["1/model.onnx", "1/baseline.json", "1/sample.json"])
    # tabular-small as shipped serves its highest version only; here both, so that a replica
    # can pin the lower one.
    with open(os.path.join(MODELS, "tabular-small", "config.toml")) as f:
        # Retraining on: the replicas below take its lease (one of them runs the policy).
        config = ('version_policy = { all = {} }\n' + f.read()
                  + '\n[monitoring]\nenabled = true\n\n[retrain]\nenabled = true\n')
    s3.put_object(Bucket="models", Key="repo/tabular-small/config.toml", Body=config.encode())
    upload(s3, "tabular-small", ["1/model.onnx", "1/sample.json"])
    state_dir = os.path.join(work, "one")
    s = Server("server one", "s3://models/repo", ["--state-dir", state_dir,
                                                  "--repository-poll-interval-s", str(POLL_S),
                                                  "--deployment-state", "s3://state/shared",
                                                  "--train-config-dir", train_configs(work),
                                                  "--replica-id", "one"], env)
    if not check(s.started() and wait_for(lambda: s.ready("iris", 1) and s.ready("tabular-small", 1)),
                 "server one did not serve iris 1 and tabular-small 1 from the bucket"):
        s.dump()
        return s
    status, outputs = infer_version(s, "iris", 1)
    check(status == 200 and outputs, f"iris 1 from the bucket answered {status}")
    v1_outputs = outputs
    mirror = os.path.join(state_dir, "repository")
    check(os.path.isfile(os.path.join(mirror, "iris", "1", "model.onnx")), "no local mirror of iris 1 under the state dir")

    load = Load(s, "iris")
    load.start()

    # A half-uploaded version: everything but the model file.
    upload(s3, "iris", ["2/baseline.json", "2/sample.json"])
    syncs = s.metric("cairn_repository_syncs_total", result="ok")
    wait_for(lambda: s.metric("cairn_repository_syncs_total", result="ok") >= syncs + HALF_UPLOAD_POLLS, 60)
    polls = s.metric("cairn_repository_syncs_total", result="ok") - syncs
    print(f"  half-uploaded iris 2: {polls:.0f} polls since")
    check(polls >= HALF_UPLOAD_POLLS, f"only {polls:.0f} repository syncs counted in a minute at a {POLL_S} s poll")
    check(not s.ready("iris", 2), "a half-uploaded version (no model file yet) was loaded")
    check(2 not in repository_versions(s, "iris") and "2" not in repository_versions(s, "iris"),
          "a half-uploaded version is in the repository index as ready")
    check(not os.path.exists(os.path.join(mirror, "iris", "2")), "a half-uploaded version was mirrored")

    # Its model file arrives: the version is complete.
    upload(s3, "iris", ["2/model.onnx"])
    check(wait_for(lambda: s.ready("iris", 2)), "iris 2 was not loaded after its model file was uploaded")
    check(os.path.isfile(os.path.join(mirror, "iris", "2", "baseline.json")), "iris 2 was mirrored without its other files")
    status, v2_outputs = infer_version(s, "iris", 2)
    check(status == 200 and v2_outputs, f"iris 2 answered {status}")
    check(v2_outputs != v1_outputs, "iris 1 and 2 answer alike: the changed-object check would prove nothing")

    # A changed object: version 1's model file overwritten with version 2's (a new ETag).
    s3.upload_file(os.path.join(MODELS, "iris", "2", "model.onnx"), "models", "repo/iris/1/model.onnx")
    check(wait_for(lambda: infer_version(s, "iris", 1)[1] == v2_outputs),
          "iris 1 still serves the old model file after the object changed")

    # A deletion: version 2 leaves the store, and the server.
    s3.delete_objects(Bucket="models", Delete={"Objects": [{"Key": f"repo/iris/2/{n}"} for n in
                                                           ("model.onnx", "baseline.json", "sample.json")]})
    check(wait_for(lambda: not s.ready("iris", 2)), "iris 2 is still served after it was deleted from the store")
    check(wait_for(lambda: not os.path.exists(os.path.join(mirror, "iris", "2"))), "iris 2 is still in the mirror after its deletion")

    # Back to two versions of each model for the replicas.
    s3.upload_file(os.path.join(MODELS, "iris", "1", "model.onnx"), "models", "repo/iris/1/model.onnx")
    upload(s3, "iris", ["2/baseline.json", "2/sample.json", "2/model.onnx"])
    s3.upload_file(os.path.join(MODELS, "tabular-small", "1", "model.onnx"), "models", "repo/tabular-small/2/model.onnx")
    check(wait_for(lambda: s.ready("iris", 2) and s.ready("tabular-small", 2) and infer_version(s, "iris", 1)[1] == v1_outputs),
          "server one did not come back to iris 1, 2 and tabular-small 2")

    load.finish()
    print(f"  {load.sent} requests while the bucket changed, {len(load.failures)} failed")
    check(load.sent > 0 and not load.failures, f"requests failed while the bucket changed: {load.failures[:5]}")
    errors = s.metric("cairn_repository_syncs_total", result="error")
    check(errors == 0, f"{errors:.0f} repository syncs failed")
    return s


def replicas(one, s3, env, work):
    print("== two servers sharing s3://state/shared")
    two = Server("server two", "s3://models/repo", ["--state-dir", os.path.join(work, "two"),
                                                    "--repository-poll-interval-s", str(POLL_S),
                                                    "--deployment-state", "s3://state/shared",
                                                    "--train-config-dir", train_configs(work),
                                                    "--replica-id", "two"], env)
    if not check(two.started() and wait_for(lambda: two.ready("iris", 2) and two.ready("tabular-small", 2)),
                 "server two did not serve iris 2 and tabular-small 2"):
        two.dump()
        return two

    # At the same moment: a canary of iris 1 through server one, tabular-small pinned to 1
    # through server two. The conditional put makes the later writer merge, not overwrite.
    never = {"min_requests": 1_000_000_000}
    answers = {}

    def post(name, server, path, body):
        status, _, answer = server.call("POST", path, body)
        answers[name] = (status, answer)

    threads = [
        threading.Thread(target=post, args=("canary", one, "/v2/models/iris/deployment/canary",
                                            {"version": 1, "weight": 0.3, "criteria": never})),
        threading.Thread(target=post, args=("stable", two, "/v2/models/tabular-small/deployment/stable",
                                            {"version": 1})),
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    check(answers.get("canary", (None,))[0] == 200, f"canary through server one: {answers.get('canary')}")
    check(answers.get("stable", (None,))[0] == 200, f"stable through server two: {answers.get('stable')}")

    def canary(server, weight):
        c = server.deployment("iris").get("candidate") or {}
        return c.get("version") == 1 and c.get("mode") == "canary" and c.get("weight") == weight

    def pinned(server):
        d = server.deployment("tabular-small")
        return d.get("stable") == 1 and d.get("stable_pinned") is True

    t0 = time.time()
    check(wait_for(lambda: canary(two, 0.3)), f"server two never showed the canary started through server one: {two.deployment('iris')}")
    check(wait_for(lambda: pinned(one)), f"server one never showed the stable version pinned through server two: {one.deployment('tabular-small')}")
    check(canary(one, 0.3) and pinned(two), "a replica lost its own change to the other's write")
    print(f"  both changes on both servers {time.time() - t0:.1f} s after they were made")

    # Server two's routing follows the canary: some of its requests are answered by iris 1.
    two.call("POST", "/v2/models/iris/deployment/weight", {"weight": 0.6})
    check(wait_for(lambda: canary(one, 0.6)), f"server one did not follow the weight set through server two: {one.deployment('iris')}")
    versions = {}
    for _ in range(60):
        status, _, body = two.call("POST", "/v2/models/iris/infer", sample("iris"))
        if status == 200:
            versions[body.get("model_version")] = versions.get(body.get("model_version"), 0) + 1
    print(f"  server two answered iris by version: {versions}")
    check(versions.get("1", 0) > 0 and versions.get("2", 0) > 0, f"server two does not route the shared canary: {versions}")

    status, _, _ = one.call("POST", "/v2/models/iris/deployment/rollback", {"reason": "check"})
    check(status == 200, f"rollback through server one answered {status}")
    check(wait_for(lambda: two.deployment("iris").get("candidate") is None),
          f"server two kept the candidate rolled back through server one: {two.deployment('iris')}")

    lease_holders(one, two, s3)

    stored = json.loads(s3.get_object(Bucket="state", Key="shared/deployments.json")["Body"].read())
    text = json.dumps(stored)
    check("iris" in text and "tabular-small" in text, f"the shared state lacks a model: {text[:300]}")
    for server in (one, two):
        errors = server.metric("cairn_deployment_state_syncs_total", result="error")
        check(errors == 0, f"{server.name}: {errors:.0f} deployment-state syncs failed")
    return two


def lease_holders(one, two, s3):
    """tabular-small retrains on one replica only: the holder of its lease in the store. The
    other says who holds it, and refuses a training request naming the holder."""

    def lease(server):
        status, _, body = server.call("GET", "/v2/training/jobs")
        return ((body or {}).get("retrain") or {}).get("tabular-small", {}).get("lease") or ""

    def settled():
        seen = [lease(one), lease(two)]
        return sorted(s.split(" ")[0] for s in seen) == ["held", "held"] and \
            sum(s.startswith("held here") for s in seen) == 1

    check(wait_for(settled), f"the lease did not settle on one replica: one {lease(one)!r}, two {lease(two)!r}")
    holder, other = (one, two) if lease(one).startswith("held here") else (two, one)
    holder_name = "one" if holder is one else "two"
    print(f"  tabular-small's retraining lease: {holder.name} ({lease(holder)}); {other.name}: {lease(other)}")
    check(lease(other).startswith(f"held by {holder_name} "), f"{other.name} does not name the holder: {lease(other)!r}")
    stored = json.loads(s3.get_object(Bucket="state", Key="shared/leases/tabular-small.json")["Body"].read())
    check(stored.get("holder") == holder_name, f"the stored lease names {stored.get('holder')!r}")
    status, _, answer = other.call("POST", "/v2/models/tabular-small/train", {"reason": "check"})
    check(status == 409 and f"replica '{holder_name}'" in json.dumps(answer),
          f"a training request to the replica without the lease answered {status}: {answer}")


def keys(s3, prefix):
    """Every key under s3://models/<prefix>, below it."""
    listed = s3.list_objects_v2(Bucket="models", Prefix=prefix).get("Contents", [])
    return sorted(o["Key"][len(prefix):] for o in listed)


def job_done(server, job_id):
    """The job once it is no longer running, else None."""
    status, _, job = server.call("GET", f"/v2/training/jobs/{job_id}")
    return job if status == 200 and job.get("state") != "running" else None


def publishing(one, two, s3, env, work):
    print("== publishing to the store: a job's version on both replicas, a lost lease, cairn train racing")
    # A training job on server one: the version goes to the bucket, and from there to both.
    status, _, job = one.call("POST", "/v2/models/iris/train", {"reason": "check"})
    if not check(status == 202, f"POST /v2/models/iris/train on server one answered {status}: {job}"):
        return
    t0 = time.time()
    job = wait_for(lambda: job_done(one, job["id"]), TRAIN_TIMEOUT_S) or {}
    if not check(job.get("state") == "published", f"the training job did not publish: {job}"):
        return
    version = job["version"]
    files = keys(s3, f"repo/iris/{version}/")
    print(f"  server one's job published iris {version} in {time.time() - t0:.1f} s: {files}")
    check({".claim.json", "model.onnx", "run.json", "baseline.json", "trained.json"} <= set(files)
          and not any(".pending" in k for k in files),
          f"iris {version} in the bucket is not what a publish leaves: {files}")
    claim = json.loads(s3.get_object(Bucket="models", Key=f"repo/iris/{version}/.claim.json")["Body"].read())
    check(claim.get("publisher") == "one" and isinstance(claim.get("lease_generation"), int),
          f"the claim does not name the replica and its lease generation: {claim}")

    def trained_trial(server):
        c = server.deployment("iris").get("candidate") or {}
        return (c.get("version") == version and c.get("mode") == "shadow"
                and (c.get("criteria") or {}).get("accuracy_test") == "sequential")

    check(wait_for(lambda: one.ready("iris", version) and two.ready("iris", version)),
          f"iris {version} was not loaded by both servers")
    check(wait_for(lambda: trained_trial(one) and trained_trial(two)),
          f"iris {version} is not on trial as a trained version (a paired shadow) on both: "
          f"one {one.deployment('iris').get('candidate')}, two {two.deployment('iris').get('candidate')}")
    print(f"  on both servers: a shadow judged on pairs, {time.time() - t0:.1f} s after the job started")

    # A job whose lease is taken over while it trains (for seconds): its publish refuses itself.
    train_configs(work, slow=True)
    status, _, lost = one.call("POST", "/v2/models/iris/train", {"reason": "check: a lost lease"})
    if check(status == 202, f"a second training job answered {status}: {lost}"):
        t0 = time.time()
        key = "shared/leases/iris.json"
        held = json.loads(s3.get_object(Bucket="state", Key=key)["Body"].read())
        s3.put_object(Bucket="state", Key=key, Body=json.dumps({
            "holder": "intruder", "generation": held["generation"] + 1,
            "expires_ms": int(time.time() * 1000) + 20_000}).encode())
        lost = wait_for(lambda: job_done(one, lost["id"]), TRAIN_TIMEOUT_S) or {}
        error = lost.get("error") or ""
        print(f"  a job whose lease was taken over ({time.time() - t0:.1f} s later): {lost.get('state')}: "
              f"...{error[-110:]}")
        check(lost.get("state") == "failed" and "held by 'intruder'" in error,
              f"a job whose lease was taken over was not refused: {lost}")
        check(not keys(s3, f"repo/iris/{version + 1}/"),
              f"a refused publish left objects: {keys(s3, f'repo/iris/{version + 1}/')}")

    # Two `cairn train` runs at once against the bucket (as two Jobs would): two numbers.
    with open(os.path.join(ROOT, "configs", "train", "iris.toml")) as f:
        text = f.read()
    runs = []
    for i in range(2):
        path = os.path.join(work, f"iris-{i}.toml")
        with open(path, "w") as f:
            f.write(text.replace('repository = "models"', 'repository = "s3://models/repo"')
                    .replace('runs_dir = "state/runs"', f'runs_dir = "{os.path.join(work, f"runs-{i}")}"'))
        runs.append(subprocess.Popen([BINARY, "train", "--quiet", "--config", path], cwd=ROOT, env=env,
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    published = []
    for run in runs:
        out, _ = run.communicate(timeout=TRAIN_TIMEOUT_S)
        line = next((l for l in out.splitlines() if l.startswith("published ")), "")
        if check(run.returncode == 0 and line.startswith("published s3://models/repo/iris/"),
                 f"cairn train against the bucket: exit {run.returncode}:\n{out[-2000:]}"):
            published.append(int(line.rsplit("/", 1)[1]))
    print(f"  two cairn train runs at once published iris {published}")
    check(len(published) == 2 and len(set(published)) == 2, f"two publishers shared a number: {published}")
    for v in published:
        check("model.onnx" in keys(s3, f"repo/iris/{v}/"), f"iris {v} has no model file in the bucket")
    check(wait_for(lambda: all(s.ready("iris", v) for s in (one, two) for v in published)),
          f"the servers did not load both versions published by cairn train: {published}")


def conditional_puts(s3):
    """The replicas' merge relies on the store refusing a stale conditional put: check that this
    server does, so that the replica check below proves something."""
    from botocore.exceptions import ClientError

    first = s3.put_object(Bucket="state", Key="probe", Body=b"1", IfNoneMatch="*")["ETag"]
    s3.put_object(Bucket="state", Key="probe", Body=b"2", IfMatch=first)
    for label, extra in [("a create over an existing object", {"IfNoneMatch": "*"}),
                         ("a put naming a stale ETag", {"IfMatch": first})]:
        try:
            s3.put_object(Bucket="state", Key="probe", Body=b"3", **extra)
            check(False, f"the S3 server accepted {label}: conditional puts are not enforced")
        except ClientError as e:
            check(e.response["Error"]["Code"] == "PreconditionFailed", f"{label}: {e}")
    s3.delete_object(Bucket="state", Key="probe")


def main():
    if not os.path.isfile(BINARY):
        sys.exit(f"no binary at {BINARY}")
    signal.signal(signal.SIGALRM, lambda *_: (_ for _ in ()).throw(TimeoutError(f"ran past {TOTAL_TIMEOUT_S} s")))
    signal.alarm(TOTAL_TIMEOUT_S)
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    moto = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    moto.start()
    host, port = moto.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    print(f"moto S3 on {endpoint}")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CAIRN_", "AWS_"))}
    env.update({
        "AWS_ACCESS_KEY_ID": "cairn-check",
        "AWS_SECRET_ACCESS_KEY": "cairn-check-secret",
        "AWS_REGION": "us-east-1",
        "AWS_ENDPOINT": endpoint,
        "AWS_ALLOW_HTTP": "true",
    })
    s3 = boto3.client("s3", endpoint_url=endpoint, aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
                      aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"], region_name="us-east-1")
    s3.create_bucket(Bucket="models")
    s3.create_bucket(Bucket="state")
    conditional_puts(s3)
    work = tempfile.mkdtemp(prefix="cairn-object-store-")
    servers = []
    try:
        refused_starts(env, work)
        one = repository(s3, env, work)
        servers.append(one)
        if not FAILURES:
            servers.append(replicas(one, s3, env, work))
        if not FAILURES:
            publishing(one, servers[-1], s3, env, work)
    finally:
        for s in servers:
            code = s.stop()
            check(code == 0, f"{s.name} exited {code} on SIGTERM")
            if FAILURES:
                s.dump()
        moto.stop()
        shutil.rmtree(work, ignore_errors=True)
    finish("object store: all checks passed", "failures")


if __name__ == "__main__":
    main()
