"""Data-parallel training over processes on JAX's distributed runtime (loopback)."""

import shutil
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from mlm.architectures import get_architecture
from mlm.config import MaskingConfig
from mlm.data.pipeline import (
    TokenIds,
    batch_schedule,
    evaluation_dataset,
    process_slice,
    training_dataset,
)
from mlm.errors import MlmError
from mlm.training.distributed import Topology, check_same, peer_failures
from tests.conftest import (
    JAX_RUN_OVERRIDES,
    assert_same_held_out,
    max_weight_difference,
    read_metrics,
    run_mlm,
    saved_arrays,
)

IDS = TokenIds(vocabulary_size=1000, start_id=2, end_id=3, pad_id=0, mask_id=4,
               special_ids=(0, 2, 3, 4))


def _tokens(count, *, seed=0):
    tokens = np.random.default_rng(seed).integers(5, 1000, size=count).astype(np.uint16)
    tokens[39::40] = IDS.end_id
    return tokens


def _numpy_batches(ds, n):
    return list(ds.take(n).as_numpy_iterator())


def test_process_slices_of_a_batch_are_disjoint_and_cover_it():
    for epoch_ids, (_, ids) in enumerate(batch_schedule(50, batch_size=12, seed=1)):
        parts = [
            next(process_slice(iter([(0, ids)]), process_index=i, process_count=3))[1]
            for i in range(3)
        ]
        np.testing.assert_array_equal(np.concatenate(parts), ids)
        if epoch_ids == 10:
            break


def test_processes_see_the_windows_and_masks_of_a_one_process_run():
    tokens = _tokens(12_000)
    kwargs = dict(sequence_length=32, masking=MaskingConfig(), ids=IDS, seed=4, start_step=3,
                  arch=get_architecture("bert"))
    whole = _numpy_batches(training_dataset(tokens, batch_size=8, **kwargs), 5)
    halves = [
        _numpy_batches(training_dataset(tokens, batch_size=8, process_index=i,
                                        process_count=2, **kwargs), 5)
        for i in range(2)
    ]
    for step, (x, y, w) in enumerate(whole):
        (x0, y0, w0), (x1, y1, w1) = halves[0][step], halves[1][step]
        assert x0["token_ids"].shape == (4, 32)
        for key in x:
            np.testing.assert_array_equal(np.concatenate([x0[key], x1[key]]), x[key])
        np.testing.assert_array_equal(np.concatenate([y0, y1]), y)
        np.testing.assert_array_equal(np.concatenate([w0, w1]), w)


def test_processes_split_the_full_evaluation_batches_and_share_the_short_last_one():
    # 61 windows of 32 tokens in batches of 8: 7 full batches split 4 + 4, then 5 windows
    # that every process evaluates whole (in batches of its share's size, 4 + 1).
    tokens = _tokens(61 * 30)
    kwargs = dict(sequence_length=32, batch_size=8, masking=MaskingConfig(), ids=IDS, seed=2,
                  arch=get_architecture("bert"))
    whole = list(evaluation_dataset(tokens, **kwargs).as_numpy_iterator())
    assert [len(y) for _, y, _ in whole] == [8] * 7 + [5]
    halves = [list(evaluation_dataset(tokens, process_index=i, process_count=2, **kwargs)
                   .as_numpy_iterator()) for i in range(2)]
    assert [len(y) for _, y, _ in halves[0]] == [4] * 7 + [4, 1]
    for step, (x, y, w) in enumerate(whole[:7]):
        (x0, y0, w0), (x1, y1, w1) = halves[0][step], halves[1][step]
        for key in x:  # the same windows and masks as one process, split between two
            np.testing.assert_array_equal(np.concatenate([x0[key], x1[key]]), x[key])
        np.testing.assert_array_equal(np.concatenate([y0, y1]), y)
        np.testing.assert_array_equal(np.concatenate([w0, w1]), w)
    for (x0, y0, _), (x1, y1, _) in zip(halves[0][7:], halves[1][7:], strict=True):
        np.testing.assert_array_equal(y0, y1)  # the short batch: the same on both
        np.testing.assert_array_equal(x0["token_ids"], x1["token_ids"])
    np.testing.assert_array_equal(
        np.concatenate([y for _, y, _ in halves[0][7:]]), whole[7][1])


def _unmasked(batch) -> np.ndarray:
    """The windows of a training batch before masking, `(B, L)`."""
    x, y, w = batch
    windows = x["token_ids"].copy()
    rows, k = np.nonzero(w)
    windows[rows, x["mask_positions"][rows, k]] = y[rows, k]
    return windows


def test_a_process_with_its_own_share_reads_each_of_its_windows_once_an_epoch():
    from mlm.data.pipeline import num_windows, read_windows

    shares = [_tokens(3_000, seed=1), _tokens(3_000, seed=2)]  # 100 windows of 30 tokens each
    kwargs = dict(sequence_length=32, masking=MaskingConfig(), ids=IDS, seed=4,
                  arch=get_architecture("bert"), batch_size=8, process_count=2, own_share=True)
    epoch = []
    for index, tokens in enumerate(shares):
        windows = read_windows(tokens, np.arange(num_windows(len(tokens), 32)),
                               sequence_length=32, ids=IDS)
        own = {row.tobytes(): i for i, row in enumerate(windows)}
        batches = _numpy_batches(training_dataset(tokens, process_index=index, **kwargs), 27)
        seen = [own[row.tobytes()] for batch in batches for row in _unmasked(batch)]
        # 4 windows per step (half the global batch) from its own share; 25 steps an
        # epoch, each of its 100 windows once; then a fresh order.
        assert all(len(batch[1]) == 4 for batch in batches)
        assert sorted(seen[:100]) == list(range(100)) and seen[100:] != seen[:8]
        epoch.append(seen[:100])
        resumed = _numpy_batches(training_dataset(tokens, process_index=index, start_step=20,
                                                  **kwargs), 7)
        for a, b in zip(resumed, batches[20:], strict=True):
            for key in a[0]:
                np.testing.assert_array_equal(a[0][key], b[0][key])
    # Each process shuffles with a seed of its own.
    assert epoch[0] != epoch[1]


def test_batch_must_split_over_processes_and_devices():
    with pytest.raises(MlmError, match="multiple of the 3 processes.*batch_size=8"):
        training_dataset(_tokens(5_000), sequence_length=32, batch_size=8,
                         masking=MaskingConfig(), ids=IDS, seed=0, process_count=3,
                         arch=get_architecture("bert"))
    with pytest.raises(MlmError, match="multiple of the 4 devices.*batch_size=6"):
        Topology(process_index=1, process_count=2, device_count=4).check_batch_size(6)
    Topology(process_count=2, device_count=4).check_batch_size(8)


def test_multi_process_options_need_the_jax_backend(tmp_path, monkeypatch):
    monkeypatch.setenv("KERAS_BACKEND", "tensorflow")  # restored after the test
    code, _, err = run_mlm("pretrain", "--recipe", "bert_test", "--run-dir", tmp_path / "r",
                           "--backend", "tensorflow", "--coordinator", "127.0.0.1:1234",
                           in_process=True)
    assert code == 2 and err.strip().splitlines() == [
        "mlm: error: multi-process training runs on the JAX backend, but received "
        "backend='tensorflow'; pass --backend jax."
    ]
    code, _, err = run_mlm("pretrain", "--recipe", "bert_test", "--run-dir", tmp_path / "r",
                           "--num-processes", "2", "--process-id", "-1", in_process=True)
    assert code == 2 and "--process-id must be at least 0, but received -1" in err
    code, _, err = run_mlm("pretrain", "--recipe", "bert_test", "--run-dir", tmp_path / "r",
                           "--num-processes", "2", "--process-id", "2", in_process=True)
    assert code == 2 and err.strip().splitlines() == [
        "mlm: error: --process-id must be below --num-processes (2), but received 2; number "
        "the processes 0 to 1."
    ]
    assert not (tmp_path / "r").exists()


def test_a_failed_collective_becomes_one_line_and_other_errors_pass_through():
    two = Topology(process_index=0, process_count=2, device_count=2)
    lost = ValueError("UNKNOWN: Gloo all-reduce failed: [pair.cc:547] Connection closed by "
                      "peer [127.0.0.1]:14017\nmore detail")
    with pytest.raises(MlmError) as caught, peer_failures(two):
        raise lost
    assert str(caught.value) == (
        "lost contact with another process of the distributed run (UNKNOWN: Gloo all-reduce "
        "failed: [pair.cc:547] Connection closed by peer [127.0.0.1]:14017); check its log, "
        "then restart every process with --resume."
    )
    with pytest.raises(ValueError, match="a bug"), peer_failures(two):
        raise ValueError("a bug")
    with pytest.raises(ValueError, match="UNKNOWN"), peer_failures(Topology()):
        raise lost


def test_processes_that_differ_are_named_and_the_same_pass(monkeypatch):
    from jax.experimental import multihost_utils

    from mlm.training.distributed import agreement_code

    three = Topology(process_index=0, process_count=3, device_count=3)
    mine = {"recipe": "r", "corpus": "c"}
    everyone = [mine, {"recipe": "r", "corpus": "other text"},
                {"recipe": "r", "corpus": "more text"}]

    def gather(codes):  # every process's codes, in process order
        assert codes.tolist() == [agreement_code(v) for v in mine.values()]
        return np.asarray([[agreement_code(v) for v in values.values()]
                           for values in everyone], dtype=np.int32)

    monkeypatch.setattr(multihost_utils, "process_allgather", gather)
    with pytest.raises(MlmError) as caught:
        check_same(three, mine, advice="start every host with the same command.")
    assert str(caught.value) == ("process 1 has another corpus than process 0 (2 of 3 "
                                 "processes differ); start every host with the same command.")
    everyone[1:] = [mine, mine]
    check_same(three, mine, advice="")  # all agree: no error
    monkeypatch.setattr(multihost_utils, "process_allgather", None)
    check_same(Topology(), {"recipe": "anything"}, advice="")  # one process: no collective


def test_the_smallest_share_is_found_beyond_what_int32_holds(monkeypatch):
    from jax.experimental import multihost_utils

    from mlm.training.distributed import smallest

    others = [5_000_000_000, 3_000_000_001]  # tokens of two hosts' shares, past 2**31

    def gather(values):  # JAX gathers int32 unless jax_enable_x64 is set
        assert values.dtype == np.int32
        return np.asarray([divmod(v, 2**30) for v in others], dtype=np.int32)

    monkeypatch.setattr(multihost_utils, "process_allgather", gather)
    two = Topology(process_index=0, process_count=2, device_count=2)
    assert smallest(two, others[0]) == 3_000_000_001
    assert smallest(Topology(), 7) == 7


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start_processes(run_dir, *, corpus, held_out, env, logs, extra=(), extra_of=None,
                     run_dir_of=None):
    """Starts the two processes of a loopback run; stderr goes to `logs[i]`.

    `extra` is added to every process's command line, `extra_of[i]` to process i's
    (with `corpus` None, a `--data` of each process's, say); `run_dir_of[i]`, if given,
    is process i's run directory (hosts that share no filesystem).
    """
    port = _free_port()
    procs = []
    for i in range(2):
        text = ("--corpus", str(corpus), "--held-out", str(held_out)) if corpus else ()
        cmd = [sys.executable, "-m", "mlm", "pretrain", "--backend", "jax", "--recipe",
               "bert_test", "--set", *JAX_RUN_OVERRIDES, *text,
               "--run-dir", str(run_dir_of[i] if run_dir_of else run_dir),
               "--coordinator", f"127.0.0.1:{port}", "--num-processes", "2",
               "--process-id", str(i), *extra, *(extra_of or {}).get(i, ())]
        with open(logs[i], "w") as err:
            procs.append(subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=err))
    return procs


def _wait_all(procs, *, timeout):
    try:
        return [p.wait(timeout=timeout) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()


@pytest.mark.slow
def test_a_process_with_another_recipe_stops_every_process_before_any_long_work(
    tmp_path, jax_env, small_corpus, held_out_corpus
):
    run_dir = tmp_path / "run"
    logs = [tmp_path / "p0.log", tmp_path / "p1.log"]
    procs = _start_processes(run_dir, corpus=small_corpus, held_out=held_out_corpus,
                             env=jax_env, logs=logs,
                             extra_of={1: ("--set", "train.learning_rate=0.002")})
    statuses = _wait_all(procs, timeout=300)
    for log in logs:
        err = log.read_text()
        assert err.strip().splitlines()[-1] == (
            "mlm: error: process 1 has another recipe than process 0 (1 of 2 processes "
            "differ); every process must run the same recipe (--recipe, --set, --steps) on "
            "the same text and vocabulary; start every host with the same command and "
            "corpus."), err
        assert "Traceback" not in err and "vocabulary of up to" not in err  # none learned
    assert statuses == [2, 2]
    assert not run_dir.exists()  # checked before the run directory is made


@pytest.mark.slow
def test_two_hosts_without_a_shared_filesystem_train_from_their_shares_and_resume(
    tmp_path, jax_env, small_corpus, held_out_corpus
):
    shares = [tmp_path / "share0", tmp_path / "share1"]
    for host, out in enumerate(shares):
        run_mlm("prepare", "--recipe", "bert_test", "--corpus", small_corpus, "--held-out",
                held_out_corpus, "--out", out, "--hosts", "2", "--host", str(host),
                in_process=True, check=True)
    logs = [tmp_path / "p0.log", tmp_path / "p1.log"]
    common = dict(corpus=None, held_out=None, env=jax_env, logs=logs)
    swapped = _start_processes(tmp_path / "swapped", **common,
                               extra_of={0: ("--data", shares[1]), 1: ("--data", shares[0])})
    assert _wait_all(swapped, timeout=300) == [2, 2]
    for index, log in enumerate(logs):
        assert log.read_text().strip().splitlines()[-1] == (
            f"mlm: error: prepared corpus {shares[1 - index]} is host {1 - index}'s share of 2 "
            f"hosts, but this is process {index} of 2; give each process the share prepared "
            f"with `mlm prepare --hosts 2 --host {index}`.")
    assert not (tmp_path / "swapped").exists()

    # Each host its own disk: its share and a run directory of its own.
    run_dirs = [tmp_path / "host0" / "run", tmp_path / "host1" / "run"]
    procs = _start_processes(run_dirs[0], **common, run_dir_of=run_dirs,
                             extra_of={i: ("--data", shares[i]) for i in range(2)})
    statuses = _wait_all(procs, timeout=400)
    assert statuses == [0, 0], logs[0].read_text()[-3000:] + logs[1].read_text()[-3000:]
    records = read_metrics(run_dirs[0])
    assert max(r["step"] for r in records if r["split"] == "train") == 24
    assert [r for r in records if r["split"] == "held_out"]
    assert (run_dirs[0] / "preset" / "config.json").is_file()
    # Process 0 speaks for the run (the others print only errors).
    assert "this host's own share" in logs[0].read_text()
    # Process 1 kept what it resumes from: recipe, vocabulary, plan and checkpoints;
    # process 0 alone the metrics, report and preset.
    own = run_dirs[1]
    assert (own / "vocab" / "vocabulary.txt").read_bytes() == (
        run_dirs[0] / "vocab" / "vocabulary.txt").read_bytes()
    assert (own / "config.json").is_file() and (own / "plan.json").is_file()
    assert not (own / "metrics.jsonl").exists() and not (own / "preset").exists()
    steps = [sorted(p.name for p in (d / "checkpoints").iterdir()) for d in run_dirs]
    assert steps[0] == steps[1] and "step-24" in steps[0]

    # Host 1 lost its newest checkpoint (stopped while saving it): both hosts resume
    # from step 20, the newest both hold, and host 0 writes its step 24 again.
    first_24 = saved_arrays(run_dirs[0] / "checkpoints" / "step-24")
    shutil.rmtree(run_dirs[1] / "checkpoints" / "step-24")
    procs = _start_processes(run_dirs[0], **common, run_dir_of=run_dirs, extra=("--resume",))
    statuses = _wait_all(procs, timeout=400)
    assert statuses == [0, 0], logs[0].read_text()[-3000:] + logs[1].read_text()[-3000:]
    said = logs[0].read_text()
    assert "the processes' newest checkpoints differ (steps 24, 20): every process resumes " \
        "from step 20" in said
    assert "resuming from" in said and "(step 20)" in said
    again_24 = saved_arrays(run_dirs[0] / "checkpoints" / "step-24")
    assert again_24.keys() == first_24.keys()
    for key in first_24:  # resumed runs are exact: the same steps, bit for bit
        np.testing.assert_array_equal(again_24[key], first_24[key], err_msg=key)
    held = [sorted(p.name for p in (d / "checkpoints").iterdir()) for d in run_dirs]
    assert held[0] == held[1] and held[0][-2:] == ["step-20", "step-24"], held

    procs = _start_processes(run_dirs[0], **common, run_dir_of=run_dirs,
                             extra=("--resume", "--steps", "28"))
    statuses = _wait_all(procs, timeout=400)
    assert statuses == [0, 0], logs[0].read_text()[-3000:] + logs[1].read_text()[-3000:]
    assert "resuming from" in logs[0].read_text()
    # Both resumed from their own step-24 and hold the same weights and optimizer state.
    ours, theirs = (saved_arrays(d / "checkpoints" / "step-28") for d in run_dirs)
    assert ours.keys() == theirs.keys() and len(ours) > 20
    for key in ours:
        np.testing.assert_array_equal(ours[key], theirs[key], err_msg=key)


@pytest.mark.slow
def test_killed_worker_stops_the_run_which_resumes_to_the_one_process_weights(
    tmp_path, jax_run, jax_env, small_corpus, held_out_corpus
):
    run_dir = tmp_path / "run"
    logs = [tmp_path / "p0.log", tmp_path / "p1.log"]
    common = dict(corpus=small_corpus, held_out=held_out_corpus, env=jax_env, logs=logs)
    procs = _start_processes(run_dir, **common)
    try:
        # Kill process 1 once process 0 has written a checkpoint.
        deadline = time.monotonic() + 400
        while not (run_dir / "checkpoints" / "step-4" / "state.json").is_file():
            assert time.monotonic() < deadline and procs[0].poll() is None, logs[0].read_text()
            time.sleep(0.05)
        procs[1].kill()
        killed = time.monotonic()
        status = procs[0].wait(timeout=120)
        elapsed = time.monotonic() - killed
    finally:
        _wait_all(procs, timeout=1)
    err = logs[0].read_text()
    assert status == 2, err
    assert elapsed < 60
    assert err.strip().splitlines()[-1].startswith(
        "mlm: error: lost contact with another process of the distributed run ("), err
    assert "Traceback" not in err and "Check failure" not in err
    assert not (run_dir / "preset").exists()  # it stopped mid-run

    procs = _start_processes(run_dir, extra=("--resume",), **common)
    statuses = _wait_all(procs, timeout=400)
    assert statuses == [0, 0], logs[0].read_text()[-3000:] + logs[1].read_text()[-3000:]
    resumed_from = [line for line in logs[0].read_text().splitlines() if "resuming from" in line]
    assert resumed_from and "step-24" not in resumed_from[0]

    # Same global batch of 8 windows with the same masks, split 4 + 4 over two
    # processes or 8 on one: only the order of float32 additions differs (the
    # gradient all-reduce adds two partial sums). Measured: 6e-8 apart after 40
    # steps, while the last 5 of them alone moved weights by 7e-4.
    two, one = saved_arrays(run_dir / "preset"), saved_arrays(jax_run / "preset")
    assert two.keys() == one.keys() and len(two) > 20
    for key in one:
        np.testing.assert_allclose(two[key], one[key], rtol=0, atol=1e-5, err_msg=key)
    # Process 0 alone wrote the run directory; the logged losses match one process.
    last = {r["step"]: r["loss"] for r in read_metrics(run_dir) if r["split"] == "train"}
    for r in read_metrics(jax_run):
        if r["split"] == "train" and r["step"] in last:
            assert last[r["step"]] == pytest.approx(r["loss"], abs=1e-4)
    assert 24 in last
    assert_same_held_out(run_dir, jax_run)


@pytest.mark.slow
def test_one_process_over_two_devices_trains_as_one_device(
    tmp_path, jax_run, jax_env, small_corpus, held_out_corpus
):
    # Single-host multi-device (several GPUs or TPU cores) takes the same
    # keras.distribution path; here XLA splits the CPU into two devices.
    flags = jax_env["XLA_FLAGS"] + " --xla_force_host_platform_device_count=2"
    env = {**jax_env, "XLA_FLAGS": flags}
    run_dir = tmp_path / "run"
    _, _, err = run_mlm("pretrain", "--backend", "jax", "--recipe", "bert_test",
                        "--set", *JAX_RUN_OVERRIDES, "--corpus", small_corpus,
                        "--held-out", held_out_corpus, "--run-dir", run_dir, env=env, check=True)
    assert "data-parallel over 2 devices in 1 process(es): each device takes 4 windows of " \
        "every global batch of 8, in training and in held-out evaluation" in err
    assert_same_held_out(run_dir, jax_run)
    # The batch of 8 split 4 + 4 over the devices: the same data and masks as one
    # device, only the order of float32 additions differs (as with two processes).
    two, one = saved_arrays(run_dir / "preset"), saved_arrays(jax_run / "preset")
    assert two.keys() == one.keys() and len(two) > 20
    moved = max_weight_difference(two, one)
    for key in one:
        np.testing.assert_allclose(two[key], one[key], rtol=0, atol=1e-5, err_msg=key)
    print(f"max weight difference, 2 devices against 1: {moved:.2e}")


@pytest.mark.slow
def test_signals_reach_supervised_processes_which_stop_after_a_checkpoint(
    tmp_path, jax_env, small_corpus, held_out_corpus
):
    # Each `mlm` of a multi-process run is a supervising parent (mlm.training.supervisor)
    # that passes SIGINT and SIGTERM on to its training child: the usual stop.
    run_dir = tmp_path / "run"
    logs = [tmp_path / "p0.log", tmp_path / "p1.log"]
    procs = _start_processes(run_dir, corpus=small_corpus, held_out=held_out_corpus,
                             env=jax_env, logs=logs)
    try:
        deadline = time.monotonic() + 400
        while not (run_dir / "checkpoints" / "step-4" / "state.json").is_file():
            assert time.monotonic() < deadline and procs[0].poll() is None, logs[0].read_text()
            time.sleep(0.05)
        procs[0].send_signal(signal.SIGINT)
        procs[1].send_signal(signal.SIGTERM)
        statuses = _wait_all(procs, timeout=120)
    finally:
        _wait_all(procs, timeout=1)
    assert statuses == [128 + signal.SIGINT, 128 + signal.SIGTERM], \
        logs[0].read_text()[-3000:] + logs[1].read_text()[-3000:]
    last = [log.read_text().strip().splitlines()[-1] for log in logs]
    step = int(last[0].split(" at step ")[1].split()[0])
    assert last == [
        f"mlm: stopped by {name} at step {step} of 24; resume with: mlm pretrain --run-dir "
        f"{run_dir} --resume" for name in ("SIGINT", "SIGTERM")
    ]
    assert (run_dir / "checkpoints" / f"step-{step}" / "state.json").is_file()
