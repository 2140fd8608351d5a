"""Persistence guarantees of the trace store, tested for real: no mock of the model or of the store.

1. A recording killed (``os._exit``, no cleanup) at any commit point resumes into exactly the store an
   uninterrupted recording writes: the same files, byte for byte, and the same decoded arrays. One
   child process builds the tiny model once and forks a grandchild per kill point; inside it only,
   the calls the store makes durable (``os.replace``, ``pyarrow.parquet.write_table``,
   ``Path.write_bytes``, the journal append, the lock) are wrapped so that the N-th one kills the
   process (a torn write first cuts the file or line in half), for every N of a run (counted first by
   an uninterrupted run), plus kills during a resume. Between kill and resume the folder reads as
   unfinished and ``partial=True`` shows exactly the shards whose journal line was written. In the
   child the store id is fixed (it is a fresh uuid per store, in every shard's footer, so two stores
   never share bytes otherwise) and ``fsync`` is skipped (a kill loses nothing the OS holds; only a
   power cut would, which a test cannot make).
2. Two processes on one folder: a live writer is refused naming its pid; a dead writer's lock is taken
   over with a warning and the recording resumes.
3. The resume key keeps apart inputs that a naive key would join (``1`` vs ``"1"``, separators).
4. Half-written, unlisted, foreign, swapped, truncated shards and damaged manifests are never read as
   data; the errors name the file.
5. Validation on load: expert ids out of range and non-finite weights in a shard raise naming it.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

import workbench as wb
from workbench.store import files as store_files
from workbench.store.layout import shard_table, write_shard
from workbench.store.writer import JOURNAL, file_digest

ROOT = Path(__file__).resolve().parents[1]
ARRAYS = ("topk_idx", "topk_w", "token_ids", "doc", "pos")

# Variant A: ten documents, one chunk each, five shards of two, scores kept, labels of several types.
TEXTS_A = [f"document {i} says {'hello ' * (i % 4)}to the {'quick ' * (i % 3)}fox" for i in range(10)]
LABELS_A = ["a", 1, "1", None, 2.5, True, "b", 0, "a", "c"]
# Variant B: documents cut into chunks of 3 tokens, shards of 3 chunks that cross document boundaries,
# one layer, no labels, no scores.
TEXTS_B = ["The quick brown fox jumps.", "def add(a, b): return a + b", "12 + 34 = 46 and 7"]

VARIANTS = {
    "A": {"texts": TEXTS_A, "labels": LABELS_A, "batch_size": 2, "scores": True},
    "B": {"texts": TEXTS_B, "labels": None, "batch_size": 3, "scores": False, "max_length": 3, "layers": [1]},
}

# The child: builds the model once, then forks one grandchild per kill point (and one per resume).
# Everything that computes routing runs in a grandchild with one thread, so all the stores compared
# are computed alike; store ids are fixed (the only field that differs between two stores of the same
# inputs) so that whole files can be compared byte for byte.
SERVER = r'''
import builtins, json, os, shutil, sys, traceback, uuid, warnings
from pathlib import Path

import torch
torch.set_num_threads(1)
import pyarrow.parquet as pq
import workbench as wb
import workbench.store.files as files
import workbench.store.writer as writer
from workbench.testing import tiny_model

spec = json.loads(Path(sys.argv[1]).read_text())
root = Path(spec["root"])
lm = wb.wrap(*tiny_model("qwen3_moe"))
writer.uuid = type("FixedUuid", (), {"uuid4": staticmethod(lambda: uuid.UUID(int=0xC0FFEE))})
# A killed process loses nothing that reached the OS: fsync only matters for a power cut, which a kill
# cannot simulate. It is most of the time a recording takes on a slow disk, so it is skipped here.
os.fsync = lambda fd: None

KILL = None      # (prefix, occurrence): die at the occurrence-th event whose name starts with prefix
SEEN = {}
LOG = []


def label(path):
    p = Path(path)
    name = p.name.split("-", 2)[2] if p.name.startswith(files.TMP_PREFIX) else p.name
    return f"shards/{name}" if p.parent.name == "shards" else name


def event(name, tear=None):
    LOG.append(name)
    if KILL is None or not name.startswith(KILL[0]):
        return
    SEEN[KILL[0]] = SEEN.get(KILL[0], 0) + 1
    if SEEN[KILL[0]] == KILL[1]:
        if tear is not None:
            tear()
        with builtins.open(root / f"killed-{os.getpid()}.json", "w") as fh:
            json.dump({"event": name, "log": LOG}, fh)
        os._exit(137)


def tear_file(path):
    return lambda: os.truncate(path, os.path.getsize(path) // 2)


_replace = os.replace
def replace(src, dst, *a, **k):
    event(f"before rename {label(dst)}")
    _replace(src, dst, *a, **k)
    event(f"after rename {label(dst)}")
os.replace = replace

_write_table = pq.write_table
def write_table(table, where, *a, **k):
    _write_table(table, where, *a, **k)
    event(f"torn write {label(where)}", tear_file(where))
pq.write_table = write_table

_write_bytes = Path.write_bytes
def write_bytes(self, data):
    n = _write_bytes(self, data)
    if root in self.absolute().parents:  # any file of a store, written in place or as a temporary
        event(f"torn write {label(self)}", tear_file(self))
    return n
Path.write_bytes = write_bytes


class Journal:
    """The journal file opened for appending: a kill can cut the line in half, or follow its fsync."""
    def __init__(self, fh):
        self.fh = fh
    def write(self, data):
        shard = json.loads(data)["file"]
        event(f"torn journal line {shard}", lambda: (self.fh.write(data[:len(data) // 2]), self.fh.flush()))
        self.shard = shard
        return self.fh.write(data)
    def __getattr__(self, name):
        return getattr(self.fh, name)
    def __enter__(self):
        return self
    def __exit__(self, *exc):
        self.fh.close()
        if exc[0] is None:
            event(f"after journal line {self.shard}")

def journal_open(file, mode="r", *a, **k):
    fh = builtins.open(file, mode, *a, **k)
    return Journal(fh) if Path(file).name == writer.JOURNAL and "a" in mode else fh
writer.open = journal_open

_os_open = os.open
def os_open(path, flags, *a, **k):
    fd = _os_open(path, flags, *a, **k)
    if Path(path).name == files.LOCK_FILE and flags & os.O_EXCL:
        event("lock created")
    return fd
os.open = os_open

_link = os.link
def link(src, dst, *a, **k):
    is_lock = Path(dst).name == files.LOCK_FILE
    if is_lock:
        event("before lock link")
    _link(src, dst, *a, **k)
    if is_lock:
        event("lock created")
os.link = link

_release = files.StoreLock.release
def release(self):
    if self.held:
        event("before lock release")
    _release(self)
files.StoreLock.release = release


def record(kwargs, out, **over):
    kw = dict(kwargs, **over)
    return wb.record(lm, kw.pop("texts"), out=str(out), progress=False, **kw)


def forked(fn):
    """Run fn() in a forked process: (pid, exit code, its JSON result or None)."""
    result = root / f"result-{uuid.uuid4().hex}.json"
    pid = os.fork()
    if pid == 0:
        code = 0
        try:
            res = fn()
        except BaseException:
            res, code = {"error": traceback.format_exc()}, 1
        with builtins.open(result, "w") as fh:
            json.dump(res, fh)
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    res = json.loads(result.read_text()) if result.exists() else None
    return pid, os.waitstatus_to_exitcode(status), res


def kill_run(kwargs, out, kill):
    def run():
        global KILL
        KILL = tuple(kill)
        record(kwargs, out)
        return {"survived": True}
    pid, rc, res = forked(run)
    note = root / f"killed-{pid}.json"
    return {"pid": pid, "rc": rc, "result": res, **(json.loads(note.read_text()) if note.exists() else {})}


def resume_run(kwargs, out, over):
    def run():
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            record(kwargs, out, **over).materialize()
        return {"warnings": [str(w.message) for w in caught]}
    pid, rc, res = forked(run)
    return {"pid": pid, "rc": rc, **(res or {})}


# warm up in this process (lazy imports, first-call set-up), so that each fork only records
record(next(iter(spec["variants"].values()))["kwargs"], root / "warm-up").materialize()
LOG.clear()

def run_plan(name, i, plan):
    kwargs = spec["variants"][name]["kwargs"]
    out = root / name / f"plan-{i:03d}"
    kills = []
    for j, kill in enumerate(plan["kills"]):
        kills.append(kill_run(kwargs, out, kill))
        kills[-1]["snapshot"] = str(out.with_name(f"{out.name}-killed-{j}"))
        if out.exists():  # the folder as the kill left it, for the parent to read
            shutil.copytree(out, kills[-1]["snapshot"], symlinks=True)
    resumed = resume_run(kwargs, out, plan.get("resume_over", {}))
    return {"plan": plan, "out": str(out), "kills": kills, "resume": resumed}


report, jobs = {}, []
for name, variant in spec["variants"].items():
    ref = root / name / "reference"
    def count():
        record(variant["kwargs"], ref)
        return {"events": LOG}
    _, rc, res = forked(count)
    if rc != 0:
        raise SystemExit(f"the reference recording failed: {res}")
    events = res["events"]
    plans = [{"kills": [["", n]]} for n in range(1, len(events) + 1)] + variant.get("extra", [])
    report[name] = {"reference": str(ref), "events": events, "plans": [None] * len(plans)}
    jobs += [(name, i, plan) for i, plan in enumerate(plans)]

# the plans are independent: run them in a few lanes (forked workers), each forking per kill and resume
lanes = max(1, min(spec.get("lanes", 2), os.cpu_count() or 1))
workers = []
for lane in range(lanes):
    def work(lane=lane):
        return [[name, i, run_plan(name, i, plan)] for name, i, plan in jobs[lane::lanes]]
    pid = os.fork()
    if pid == 0:
        try:
            done, code = work(), 0
        except BaseException:
            done, code = {"error": traceback.format_exc()}, 1
        with builtins.open(root / f"lane-{lane}.json", "w") as fh:
            json.dump(done, fh)
        os._exit(code)
    workers.append(pid)
for lane, pid in enumerate(workers):
    _, status = os.waitpid(pid, 0)
    done = json.loads((root / f"lane-{lane}.json").read_text())
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"lane {lane} failed: {done}")
    for name, i, result in done:
        report[name]["plans"][i] = result
Path(spec["report"]).write_text(json.dumps(report))
'''


# -- helpers -------------------------------------------------------------------------------------
def tree(folder: Path) -> dict:
    """Every file of a store folder (but the analysis cache), by relative path: its bytes."""
    folder = Path(folder)
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and "aggregates" not in p.relative_to(folder).parts}


def temporaries(folder: Path) -> list:
    return [str(p) for p in Path(folder).rglob(store_files.TMP_PREFIX + "*")]


def assert_traces_equal(got: wb.RoutingTrace, want: wb.RoutingTrace, what: str, token_text: bool = True):
    for name in ARRAYS:
        a, b = getattr(got, name), getattr(want, name)
        assert a.shape == b.shape and np.array_equal(a, b), f"{what}: {name} differs"
    assert (got.scores is None) == (want.scores is None), f"{what}: scores kept in one only"
    if got.scores is not None:
        assert np.array_equal(got.scores, want.scores), f"{what}: scores differ"
    assert got.doc_labels == want.doc_labels, f"{what}: labels differ"
    assert [type(x) for x in got.doc_labels] == [type(x) for x in want.doc_labels], f"{what}: label types"
    if token_text:  # an in-memory trace may know the text of more tokens than it holds
        held = np.unique(want.token_ids).tolist()
        assert {t: got.token_text.get(t) for t in held} == {t: want.token_text.get(t) for t in held}, \
            f"{what}: token text differs"


def rewrite_manifest(folder: Path, change) -> None:
    path = Path(folder) / "manifest.json"
    manifest = json.loads(path.read_text())
    change(manifest)
    path.write_text(json.dumps(manifest))


def refit_shard(folder: Path, number: int) -> None:
    """Make the manifest's size and checksum of shard ``number`` those of the file now there."""
    path = Path(folder) / "shards" / f"part-{number:06d}.parquet"

    def change(m):
        m["shards"][number]["bytes"] = path.stat().st_size
        m["shards"][number]["sha256"] = file_digest(path)
    rewrite_manifest(folder, change)


def in_memory_store(tmp_path, name="s", shard_tokens=7):
    """A small synthetic trace (30 tokens, 5 documents) written as a store of 5 shards."""
    rng = np.random.default_rng(0)
    tokens, layers, experts, k = 30, 2, 8, 2
    idx = np.stack([np.argsort(rng.random((tokens, experts)), axis=-1)[:, :k] for _ in range(layers)])
    w = rng.random((layers, tokens, k)).astype(np.float16).astype(np.float32)
    doc = np.repeat(np.arange(5), 6)
    pos = np.tile(np.arange(6), 5)
    trace = wb.RoutingTrace(idx.astype(np.int16), w, rng.integers(0, 50, tokens), doc, pos, [0, 1], experts,
                            "fp-x", token_text={i: f"t{i}" for i in range(50)},
                            doc_labels=["a", 1, "1", None, "b"])
    from workbench.store import write_store
    return trace, write_store(trace, tmp_path / name, shard_tokens=shard_tokens)


class Interrupt(Exception):
    pass


@pytest.fixture
def single_thread():
    """Compute as the child does (one thread) so that routing weights agree to the last bit."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# -- 1. kill at every commit point, resume exactly -------------------------------------------------
@pytest.fixture(scope="module")
def killed_runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("kills")
    spec = {"root": str(root), "report": str(root / "report.json"), "variants": {
        "A": {"kwargs": VARIANTS["A"], "extra": [
            # killed twice: mid-way, then the resumed run killed at its first shard
            {"kills": [["after journal line", 2], ["torn write shards/", 1]]},
            {"kills": [["torn journal line", 3], ["after journal line", 1]]},
            # resumed with another batch size: the stored one is kept (with a warning)
            {"kills": [["after journal line", 2]], "resume_over": {"batch_size": 3}},
        ]},
        "B": {"kwargs": VARIANTS["B"]},
    }}
    (root / "spec.json").write_text(json.dumps(spec))
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
               HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-c", SERVER, str(root / "spec.json")], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return json.loads((root / "report.json").read_text())


def test_every_kind_of_commit_point_is_counted(killed_runs):
    events = killed_runs["A"]["events"]
    kinds = {re.sub(r"part-\d+", "part-N", e) for e in events}
    for kind in ["lock created", "torn write manifest.json", "before rename manifest.json",
                 "after rename manifest.json", "torn write docs.parquet", "after rename docs.parquet",
                 "torn write shards.jsonl", "after rename shards.jsonl",
                 "torn write shards/part-N.parquet", "before rename shards/part-N.parquet",
                 "after rename shards/part-N.parquet", "torn journal line shards/part-N.parquet",
                 "after journal line shards/part-N.parquet", "torn write vocab.parquet",
                 "before rename vocab.parquet", "after rename vocab.parquet", "before lock release"]:
        assert kind in kinds, (kind, events)
    assert sum(e.startswith("after journal line") for e in events) == 5  # five shards of two documents
    assert events[-3:] == ["before rename manifest.json", "after rename manifest.json", "before lock release"]
    # variant B: 10 chunks of at most 3 tokens, shards of 3 chunks
    assert sum(e.startswith("after journal line") for e in killed_runs["B"]["events"]) == 4


def test_the_reference_equals_an_in_process_recording(killed_runs, tiny, single_thread):
    lm = tiny("qwen3_moe")
    for name, variant in VARIANTS.items():
        kw = dict(variant)
        want = wb.record(lm, kw.pop("texts"), progress=False, **kw)
        got = wb.open_trace(killed_runs[name]["reference"]).materialize()
        assert_traces_equal(got, _as_stored(want), f"variant {name}")


def _as_stored(trace: wb.RoutingTrace) -> wb.RoutingTrace:
    """The in-memory trace as the store keeps it (weights and scores as float16)."""
    sc = None if trace.scores is None else trace.scores.astype(np.float16)
    return wb.RoutingTrace(trace.topk_idx, trace.topk_w.astype(np.float16).astype(np.float32), trace.token_ids,
                           trace.doc, trace.pos, trace.layers, trace.num_experts, trace.fingerprint,
                           token_text=trace.token_text, doc_labels=trace.doc_labels, scores=sc, meta=trace.meta)


@pytest.mark.parametrize("variant", ["A", "B"])
def test_a_kill_at_any_commit_point_resumes_exactly(killed_runs, variant):
    run = killed_runs[variant]
    ref = Path(run["reference"])
    want_files = tree(ref)
    want = wb.open_trace(ref).materialize()
    assert not (ref / ".lock").exists() and not (ref / JOURNAL).exists()
    failures = []
    for plan in run["plans"]:
        where = f"{variant} kills {[k['event'] for k in plan['kills']]}"
        try:
            for kill in plan["kills"]:
                assert kill["rc"] == 137 and kill["event"], f"the run did not die: {kill}"
            res = plan["resume"]
            assert res["rc"] == 0, res.get("error")
            out, last = Path(plan["out"]), Path(plan["kills"][-1]["snapshot"])
            lock = json.loads((last / ".lock").read_text()) if (last / ".lock").exists() else None
            takeovers = [m for m in res["warnings"] if "taking over the lock" in m]
            if lock is not None:  # the dead writer's lock is taken over (also after its final manifest)
                assert lock["pid"] == plan["kills"][-1]["pid"], lock
                assert takeovers == [f"{out}: taking over the lock of process {lock['pid']}, which is no longer "
                                     "running (its recording was interrupted; resuming it)"], res["warnings"]
            else:
                assert not takeovers, res["warnings"]
            assert not temporaries(out), temporaries(out)
            got_files = tree(out)  # no lock or journal is left behind, even by a kill after the final manifest
            assert sorted(got_files) == sorted(want_files), (sorted(got_files), sorted(want_files))
            for name in want_files:
                assert got_files[name] == want_files[name], f"{name} differs from the uninterrupted store's"
            trace = wb.open_trace(out)
            assert trace.validate() == want.num_tokens
            assert_traces_equal(trace.materialize(), want, where)
            if plan["plan"].get("resume_over", {}).get("batch_size"):
                assert any("resuming with it" in m for m in res["warnings"]), res["warnings"]
        except AssertionError as err:
            failures.append(f"{where}: {err}")
    assert not failures, "\n".join(failures)


def committed_shards(kills) -> int:
    """Shards a journal must hold after these kills: each journal line that was fsync-ed before one."""
    done = [int(re.search(r"part-(\d+)", e).group(1)) + 1 for k in kills for e in k["log"]
            if e.startswith("after journal line")]
    return max(done, default=0)


@pytest.mark.parametrize("variant", ["A", "B"])
def test_a_killed_recording_reads_as_unfinished_until_resumed(killed_runs, variant):
    run = killed_runs[variant]
    want = wb.open_trace(run["reference"])
    ref_shards = json.loads((Path(run["reference"]) / "manifest.json").read_text())["shards"]
    failures = []
    for plan in run["plans"]:
        for j, kill in enumerate(plan["kills"]):
            killed = Path(kill["snapshot"])
            where = f"{variant} killed at {[k['event'] for k in plan['kills'][:j + 1]]}"
            try:
                check_killed_state(killed, want, ref_shards, committed_shards(plan["kills"][:j + 1]), where)
            except AssertionError as err:
                failures.append(f"{where}: {err}")
    assert not failures, "\n".join(failures)


def check_killed_state(killed: Path, want, ref_shards, committed: int, where: str) -> None:
    if not killed.exists() or not (killed / "manifest.json").exists():
        assert committed == 0
        if killed.exists():
            with pytest.raises(wb.StoreError, match="holds no trace store"):
                wb.open_trace(killed)
        return
    if json.loads((killed / "manifest.json").read_text()).get("complete"):
        assert_traces_equal(wb.open_trace(killed).materialize(), want.materialize(), where)
        return
    with pytest.raises(wb.StoreError, match=r"not finished.*resume it by running the same wb\.record"):
        wb.open_trace(killed)
    if not (killed / "docs.parquet").exists():
        assert committed == 0
        with pytest.raises(wb.StoreError, match="docs.parquet"):
            wb.open_trace(killed, partial=True)
        return
    part = wb.open_trace(killed, partial=True)  # every committed shard, and no other
    assert [s for _, s in part._base.shards] == ref_shards[:committed], (part._base.shards, committed)
    tokens = sum(s["tokens"] for s in ref_shards[:committed])
    assert part.num_tokens == tokens
    if tokens:
        assert_traces_equal(part.materialize(), want.select(tokens=(0, tokens)).materialize(), where,
                            token_text=False)


def test_the_parent_resumes_a_killed_recording_taking_over_its_lock(killed_runs, tiny, single_thread, tmp_path):
    run = killed_runs["A"]
    plan = next(p for p in run["plans"] if p["kills"][0]["event"] == "after journal line shards/part-000002.parquet")
    out = tmp_path / "store"
    shutil.copytree(plan["kills"][0]["snapshot"], out)
    pid = plan["kills"][0]["pid"]
    assert json.loads((out / ".lock").read_text())["pid"] == pid
    kw = dict(VARIANTS["A"])
    with pytest.warns(UserWarning, match=f"taking over the lock of process {pid}"):
        trace = wb.record(tiny("qwen3_moe"), kw.pop("texts"), out=out, progress=False, **kw)
    assert not (out / ".lock").exists() and not (out / JOURNAL).exists()
    assert_traces_equal(trace.materialize(), wb.open_trace(run["reference"]).materialize(), "parent resume")
    # the store id was written by the child (fixed there): the store is the reference, byte for byte
    assert tree(out) == tree(run["reference"])


# -- 2. two processes on one folder ----------------------------------------------------------------
LOCK_HOLDER = textwrap.dedent(r'''
    import importlib.util, sys, time
    spec = importlib.util.spec_from_file_location("store_files", sys.argv[1])
    files = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(files)
    files.StoreLock(sys.argv[2]).acquire()
    print("locked", flush=True)
    time.sleep(120)
''')


def test_a_second_writer_is_refused_then_takes_over_a_dead_ones_lock(tiny, tmp_path):
    lm = tiny("qwen3_moe")
    texts, labels = ["one text here", "and another", "a third one"], ["x", "y", "x"]
    out = tmp_path / "store"
    holder = subprocess.Popen([sys.executable, "-c", LOCK_HOLDER, store_files.__file__, str(out)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked", holder.stderr.read()
        with pytest.raises(wb.StoreBusyError, match=rf"being written by another process \(pid {holder.pid} on "):
            wb.record(lm, texts, labels=labels, batch_size=1, out=out, progress=False)
        assert sorted(p.name for p in out.iterdir()) == [".lock"]  # nothing written, the lock left alone
        assert json.loads((out / ".lock").read_text())["pid"] == holder.pid
    finally:
        holder.kill()
        holder.wait()
    with pytest.warns(UserWarning, match=f"taking over the lock of process {holder.pid}, which is no longer"):
        stored = wb.record(lm, texts, labels=labels, batch_size=1, out=out, progress=False)
    assert not (out / ".lock").exists()
    assert_traces_equal(stored.materialize(), _as_stored(wb.record(lm, texts, labels=labels, progress=False)),
                        "after takeover")


def test_locks_that_cannot_be_judged_stale_are_not_taken_over(tmp_path):
    out = tmp_path / "store"
    out.mkdir()
    lock = out / ".lock"
    lock.write_text(json.dumps({"pid": 1, "host": "another-host", "since": "then"}))
    with pytest.raises(wb.StoreBusyError, match="pid 1 on another-host"):
        store_files.StoreLock(out).acquire()
    lock.write_text("")  # unreadable: it may be being written right now
    with pytest.raises(wb.StoreBusyError, match=re.escape(f"delete {lock}")):
        store_files.StoreLock(out).acquire()
    lock.unlink()
    with store_files.StoreLock(out):  # a second writer in the same process is refused too
        with pytest.raises(wb.StoreBusyError, match=f"pid {os.getpid()}"):
            store_files.StoreLock(out).acquire()
    assert not lock.exists()


def test_a_lock_is_never_seen_empty(tmp_path, monkeypatch):
    """The lock file appears with its owner in it (a kill right after it appears leaves a lock that the
    next writer can judge stale)."""
    seen = []
    real_link, real_open = os.link, os.open

    def link(src, dst, *a, **k):
        real_link(src, dst, *a, **k)
        seen.append(Path(dst).read_text())

    def os_open(path, flags, *a, **k):
        fd = real_open(path, flags, *a, **k)
        if Path(path).name == ".lock":
            seen.append(Path(path).read_text())
        return fd
    monkeypatch.setattr(os, "link", link)
    monkeypatch.setattr(os, "open", os_open)
    with store_files.StoreLock(tmp_path):
        pass
    assert seen and all(json.loads(s)["pid"] == os.getpid() for s in seen), seen
    assert not list(tmp_path.iterdir())
    # where the file system has no hard links the lock is created in place, and still holds its owner
    monkeypatch.setattr(os, "link", lambda *a, **k: (_ for _ in ()).throw(PermissionError("no links")))
    with store_files.StoreLock(tmp_path):
        assert json.loads((tmp_path / ".lock").read_text())["pid"] == os.getpid()
        with pytest.raises(wb.StoreBusyError, match=f"pid {os.getpid()}"):
            store_files.StoreLock(tmp_path).acquire()
    assert not list(tmp_path.iterdir())


# -- 3. the resume key ------------------------------------------------------------------------------
@pytest.mark.parametrize("first, second", [
    ((["one", "two"], [1, 2]), (["one", "two"], ["1", "2"])),
    ((["a\x1fb", "c"], None), (["a", "b\x1fc"], None)),
    ((["a\x1eb", "c"], ["x", "y"]), (["a", "b\x1ec"], ["x", "y"])),
    ((['a", "b', "c"], None), (["a", 'b", "c'], None)),
    ((["a\nb", "c"], [None, "d"]), (["a", "b\nc"], [None, "d"])),
    ((["a", "b"], [None, None]), (["a", "b"], ["None", "None"])),
    ((["a", "b"], [True, 1]), (["a", "b"], [1, True])),
])
def test_other_inputs_in_the_same_folder_are_refused(tiny, tmp_path, first, second):
    lm = tiny("qwen3_moe")
    out = tmp_path / "store"
    stored = wb.record(lm, first[0], labels=first[1], batch_size=1, out=out, progress=False)
    before = tree(out)
    with pytest.raises(wb.StoreError, match="other texts"):
        wb.record(lm, second[0], labels=second[1], batch_size=1, out=out, progress=False)
    assert tree(out) == before  # untouched, lock released
    assert wb.open_trace(out).doc_labels == stored.doc_labels == (first[1] or [None, None])
    again = wb.record(lm, first[0], labels=first[1], batch_size=1, out=out, progress=False)
    assert tree(out) == before and again.num_tokens == stored.num_tokens


def test_an_unfinished_recording_of_other_inputs_is_refused(tiny, tmp_path, monkeypatch):
    lm = tiny("qwen3_moe")
    out = tmp_path / "store"
    texts = ["a\x1fb", "c", "d e f"]
    from workbench.store.writer import StoreWriter

    def stop(self, token_text):
        raise Interrupt()
    with monkeypatch.context() as m:
        m.setattr(StoreWriter, "finish", stop)
        with pytest.raises(Interrupt):
            wb.record(lm, texts, labels=[1, 2, 3], batch_size=1, out=out, progress=False)
    assert not (out / ".lock").exists()
    with pytest.raises(wb.StoreError, match="other texts"):
        wb.record(lm, ["a", "b\x1fc", "d e f"], labels=[1, 2, 3], batch_size=1, out=out, progress=False)
    with pytest.raises(wb.StoreError, match="other texts"):
        wb.record(lm, texts, labels=["1", "2", "3"], batch_size=1, out=out, progress=False)
    done = wb.record(lm, texts, labels=[1, 2, 3], batch_size=1, out=out, progress=False)
    assert done.doc_labels == [1, 2, 3] and done.num_docs == 3


def test_texts_with_nul_are_refused_before_anything_is_written(tiny, tmp_path):
    """NUL is refused by ``record`` itself, so ``["a\\0b", "c"]`` never reaches the key or a store."""
    out = tmp_path / "store"
    with pytest.raises(ValueError, match="text 0 contains a NUL character at position 1"):
        wb.record(tiny("qwen3_moe"), ["a\0b", "c"], out=out, progress=False)
    assert not out.exists() or not list(out.iterdir())


def test_the_key_tells_apart_what_a_joined_key_would_not():
    from workbench.probes.record import _fingerprint_inputs
    params = {"fingerprint": "f"}
    pairs = [
        ((["x"], [1]), (["x"], ["1"])), ((["x"], [1]), (["x"], [1.0])), ((["x"], [1]), (["x"], [True])),
        ((["x"], [None]), (["x"], ["None"])), ((["x"], [None]), (["x"], ["null"])),
        ((["a\0b", "c"], [None, None]), (["a", "b\0c"], [None, None])),
        ((["ab", "c"], [None, None]), (["a", "bc"], [None, None])),
        ((['a", "b'], [None]), (["a", "b"], [None, None])),
        ((["a"], [["b", "c"]]), (["a"], ["b,c"])),
        ((["x", "y"], ["1", "2"]), (["y", "x"], ["2", "1"])),
    ]
    for (ta, la), (tb, lb) in pairs:
        assert _fingerprint_inputs(ta, la, params) != _fingerprint_inputs(tb, lb, params), (ta, la, tb, lb)
    assert _fingerprint_inputs(["x"], [np.int64(1)], params) == _fingerprint_inputs(["x"], [1], params)


# -- 4. half-written, unlisted, foreign, truncated shards; damaged manifests ----------------------------
def test_temporaries_and_unlisted_shards_are_never_read(tmp_path):
    trace, stored = in_memory_store(tmp_path)
    folder = stored.folders[0]
    first = folder / "shards" / "part-000000.parquet"
    (folder / "shards" / ".tmp-999-part-000001.parquet").write_bytes(b"half a shard")
    (folder / ".tmp-999-manifest.json").write_text("{")
    shutil.copy(first, folder / "shards" / "part-000099.parquet")
    reopened = wb.open_trace(folder)
    assert reopened.validate() == trace.num_tokens
    assert_traces_equal(reopened.materialize(), trace, "with stray files")
    assert reopened.sql("SELECT count(DISTINCT t) FROM tokens").fetchall()[0][0] == trace.num_tokens


def test_a_resume_removes_temporaries_and_overwrites_unlisted_shards(tiny, tmp_path, monkeypatch):
    lm = tiny("qwen3_moe")
    texts = [f"text {i} is short" for i in range(6)]
    want = wb.record(lm, texts, batch_size=2, out=tmp_path / "want", progress=False)
    out = tmp_path / "store"
    from workbench.store.writer import StoreWriter
    real = StoreWriter.add_shard

    def stop_at_second(self, *a, **k):
        if len(self.shards) == 1:
            raise Interrupt()
        return real(self, *a, **k)
    with monkeypatch.context() as m:
        m.setattr(StoreWriter, "add_shard", stop_at_second)
        with pytest.raises(Interrupt):
            wb.record(lm, texts, batch_size=2, out=out, progress=False)
    shards = out / "shards"
    (shards / ".tmp-999-part-000001.parquet").write_bytes(b"half a shard")
    shutil.copy(shards / "part-000000.parquet", shards / "part-000001.parquet")  # not in the journal
    (shards / "part-000002.parquet").write_bytes(b"garbage")
    assert wb.open_trace(out, partial=True).num_tokens == json.loads((out / JOURNAL).read_text())["tokens"]
    got = wb.record(lm, texts, batch_size=2, out=out, progress=False)
    assert not temporaries(out)
    assert sorted(p.name for p in shards.iterdir()) == [f"part-00000{i}.parquet" for i in range(3)]
    assert got.validate() == want.num_tokens
    assert_traces_equal(got.materialize(), want.materialize(), "resumed over stray files")


def test_a_shard_of_another_store_is_refused_naming_it(tmp_path):
    trace, a = in_memory_store(tmp_path, "a")
    _, b = in_memory_store(tmp_path, "b")  # the same data: same sizes, another store id
    target = a.folders[0] / "shards" / "part-000001.parquet"
    donor = b.folders[0] / "shards" / "part-000001.parquet"
    assert donor.stat().st_size == target.stat().st_size and donor.read_bytes() != target.read_bytes()
    shutil.copy(donor, target)
    opened = wb.open_trace(a.folders[0])  # the sizes agree: opening reads no shard
    for read in (lambda t: t.materialize(), lambda t: t.counts(), lambda t: t.slots([0], [8]),
                 lambda t: t.select(docs=[1]).materialize()):
        with pytest.raises(wb.StoreError, match=re.escape(str(target)) + ".*does not belong to this store"):
            read(wb.open_trace(a.folders[0]))
    with pytest.raises(wb.StoreError, match=re.escape(str(target)) + ": its checksum differs"):
        opened.validate()
    # another shard of the same store in its place (manifest size and checksum fitted): refused too
    shutil.copy(a.folders[0] / "shards" / "part-000000.parquet", target)
    refit_shard(a.folders[0], 1)
    with pytest.raises(wb.StoreError, match=re.escape(str(target)) + r".*shard 0\)"):
        wb.open_trace(a.folders[0]).materialize()


def test_a_truncated_or_missing_shard_is_named(tmp_path):
    trace, stored = in_memory_store(tmp_path)
    folder = stored.folders[0]
    shard = folder / "shards" / "part-000002.parquet"
    data = shard.read_bytes()
    shard.write_bytes(data[: len(data) // 2])
    with pytest.raises(wb.StoreError, match=re.escape(str(shard)) + r" has \d+ bytes but the manifest says"):
        wb.open_trace(folder)
    refit_shard(folder, 2)  # the size check passes: the Parquet reader still refuses, naming the file
    with pytest.raises(wb.StoreError, match=re.escape(str(shard)) + " cannot be read"):
        wb.open_trace(folder).materialize()
    shard.unlink()
    with pytest.raises(wb.StoreError, match=re.escape(str(shard)) + " is listed in .* but missing"):
        wb.open_trace(folder)


def test_a_damaged_manifest_gives_a_clear_error_and_is_not_overwritten(tiny, tmp_path):
    lm = tiny("qwen3_moe")
    out = tmp_path / "store"
    wb.record(lm, ["one", "two"], batch_size=1, out=out, progress=False)
    manifest = out / "manifest.json"
    manifest.write_text(manifest.read_text()[:-20])
    before = tree(out)
    with pytest.raises(wb.StoreError, match=re.escape(str(manifest)) + " is not valid JSON"):
        wb.open_trace(out)
    with pytest.raises(wb.StoreError, match=re.escape(str(manifest)) + " is not valid JSON"):
        wb.record(lm, ["one", "two"], batch_size=1, out=out, progress=False)
    assert tree(out) == before  # nothing rewritten, lock released
    manifest.write_text(json.dumps({"format": "something else"}))
    with pytest.raises(wb.StoreError, match="not a moe-workbench trace store manifest"):
        wb.open_trace(out)
    manifest.unlink()
    with pytest.raises(wb.StoreError, match="manifest.json missing"):
        wb.open_trace(out)


def test_an_unfinished_recording_tells_to_resume_and_opens_partially(tiny, tmp_path, monkeypatch):
    lm = tiny("qwen3_moe")
    texts = [f"text {i} is short" for i in range(6)]
    full = wb.record(lm, texts, labels=list("abcdef"), batch_size=2, out=tmp_path / "full", progress=False)
    out = tmp_path / "store"
    from workbench.store.writer import StoreWriter
    real = StoreWriter.add_shard

    def stop_at_third(self, *a, **k):
        if len(self.shards) == 2:
            raise Interrupt()
        return real(self, *a, **k)
    with monkeypatch.context() as m:
        m.setattr(StoreWriter, "add_shard", stop_at_third)
        with pytest.raises(Interrupt):
            wb.record(lm, texts, labels=list("abcdef"), batch_size=2, out=out, progress=False)
    with pytest.raises(wb.StoreError, match=r"not finished \(2 shard\(s\), \d+ tokens so far\); resume it by "
                                            r"running the same wb\.record\(\.\.\., out=\.\.\.\) again.*partial=True"):
        wb.open_trace(out)
    part = wb.open_trace(out, partial=True)
    assert part.num_docs == 4 and part.doc_labels == list("abcd")
    assert_traces_equal(part.materialize(), full.select(docs=[0, 1, 2, 3]).materialize(), "partial",
                        token_text=False)


# -- 5. validation on load names the file -----------------------------------------------------------
@pytest.mark.parametrize("damage, message", [
    ("expert_too_high", r"expert ids -?\d+\.\.8 outside -1\.\.7"),
    ("expert_below_empty", r"expert ids -2\.\.\d+ outside -1\.\.7"),
    ("weight_inf", r"weight at layer position 1, row 2 is not finite"),
    ("weight_nan", r"weight at layer position 0, row 4 is not finite"),
    ("token_indices", "token indices do not match the manifest"),
    ("documents", r"documents \d+\.\.\d+ outside the shard's range"),
])
def test_a_damaged_shard_is_refused_on_load_naming_it(tmp_path, damage, message):
    trace, stored = in_memory_store(tmp_path)
    folder = stored.folders[0]
    manifest = json.loads((folder / "manifest.json").read_text())
    number = 2
    entry = manifest["shards"][number]
    rows = np.arange(entry["t0"], entry["t0"] + entry["tokens"])
    idx, w = trace.topk_idx[:, rows].copy(), trace.topk_w[:, rows].copy()
    t0, doc = entry["t0"], trace.doc[rows].copy()
    if damage == "expert_too_high":
        idx[1, 3, 0] = trace.num_experts
    elif damage == "expert_below_empty":
        idx[0, 0, 1] = -2
    elif damage == "weight_inf":
        w[1, 2, 0] = np.inf
    elif damage == "weight_nan":
        w[0, 4, 1] = np.nan
    elif damage == "token_indices":
        t0 += 1
    elif damage == "documents":
        doc[:] = 4
    table = shard_table(t0, doc, trace.pos[rows], trace.token_ids[rows], manifest["layers"], idx, w)
    path = folder / entry["file"]
    write_shard(table, path, {"store_id": manifest["store_id"], "shard": number})
    refit_shard(folder, number)
    pattern = re.escape(str(path)) + ": " + message
    for read in (lambda t: t.materialize(), lambda t: t.counts(), lambda t: t.validate(),
                 lambda t: t.select(docs=list(range(entry["docs"][0], entry["docs"][1] + 1))).materialize()):
        with pytest.raises(wb.StoreError, match=pattern):
            read(wb.open_trace(folder))
    if damage.startswith(("expert", "weight")):  # the routing of the other shards still reads
        assert wb.open_trace(folder).select(docs=[0]).materialize().num_tokens == 6
