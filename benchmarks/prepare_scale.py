"""Preparing a corpus at scale: `mlm prepare` against HuggingFace's run_mlm.py preparation.

Run on demand (never in the test suite):

    python benchmarks/prepare_scale.py --sizes 0.002 --repeats 1     # smoke test, a minute
    python benchmarks/prepare_scale.py --sizes 0.1 --repeats 2 --json prepare_scale.json
    python benchmarks/prepare_scale.py --sizes 1 --repeats 1 --timed-steps --json ps_1gb.json
    python benchmarks/prepare_scale.py --sizes 0.1 --mlm-hosts 2 --processes 2 --mlm-processes 1
    python benchmarks/prepare_scale.py --sizes 1 --repeats 1 --processes '' --mlm-processes 1 \
        --mlm-hosts 2 --mlm-set 'vocab.sample=0' --mlm-set ''   # two recipe variants
    python benchmarks/prepare_scale.py --report prepare_scale.json   # reprint a saved report

About 14 minutes for 0.1 GB with 2 repeats, and about an hour for 1 GB with
one, on a shared 2-core machine. 10 GB (about 10 hours and 40 GB of HF cache
files per run there) is left to a larger machine: `--sizes 10 --repeats 1
--timed-steps --work-dir /big/disk`.

**The corpus** (`generate_corpus`, cached in `--work-dir` as
`corpus-<GB>gb-seed<S>-v1.txt`, so reruns reuse it): blank-line separated
documents of 2 to 8 sentences, one line each, streamed to disk in chunks of
about 4 MB. Each sentence takes the shape of a real sentence of the shipped
sample (`mlm/data/kjv.txt.gz`, 4.1 MB): its number of words and the
punctuation after each word. Its words are drawn from a Zipf distribution
(exponent 1: P(rank r) = ln((r+1)/r) / ln(V+1)) over a ranked vocabulary that
starts with the sample's 12.8k words, most frequent first, and grows with the
text by Heaps' law, V(n) = 44 n^0.49 distinct words after n words (the
constants Manning, Raghavan and Schuetze report for Reuters RCV1): once V(n)
passes the vocabulary's size, new synthetic words (2 to 4 syllables of the
sample's words, recombined; a fifth of them capitalized, as names) join the
end of the ranking, and each appears at least once in the chunk that adds it.
The vocabulary reaches about 146k words at 0.1 GB, 440k at 1 GB, 1.4M at
10 GB.
Why not the sample repeated: a repeated sample has the sample's 12.8k
distinct words at every size, so learning a vocabulary (which counts distinct
words, merges over them and case-folds each) would look free at scale; real
corpora keep adding words (names, numbers, typos, rare words), and the cost
of counting and merging grows with them. Memory of the generator grows only
with the distinct words (tens of MB at 10 GB), not with the size. Seeded
(`--seed`): the same size and seed give the same bytes.

**Contenders**, each in its own subprocess, one after the other, interleaved
within each repetition (their order rotates from one repetition to the next)
so that the machine's load hits them alike:

- `mlm (N processes)`: `python -m mlm prepare --recipe bert_tiny_en_uncased
  --corpus FILE --out DIR --workers N --quiet` with a fresh `MLM_CACHE_DIR`:
  scan and hash the corpus, learn the recipe's WordPiece vocabulary (30522,
  uncased, min_frequency 2; its words counted by N processes, each on a
  contiguous range of the documents, the merges learned in the parent),
  tokenize both splits (2% held out by hash) with keras-hub's `BertTokenizer`
  over `tf.data` in N processes (`mlm.data.workers`), write uint16 ids.
  TensorFlow and `tokenizers` also use threads inside each process.
  (`--mlm-processes`, default 1,2.)
- `mlm, N hosts` (`--mlm-hosts N`): `mlm prepare ... --hosts N --host I` for
  each host I, one after another, each alone on this machine with its own
  output folder and `MLM_CACHE_DIR`: what N machines like this one, sharing
  no filesystem, would each run at the same time. Each host learns the whole
  corpus's vocabulary (seeded, so all learn the same one: checked by the
  manifests' tokenizer fingerprints, which the hosts compare before training)
  and tokenizes its share of the training documents and the whole held-out
  split. Its wall time is the slowest host's; tokens and bytes on disk add up
  over the shares (held-out counted once). The hosts do not talk while
  preparing, so separate network namespaces would change nothing here; on
  one 2-core machine, N hosts run at the same time would share its cores and
  measure the cores, not the hosts.
- `hf (N processes)`: what a run_mlm.py user does: `tokenizers`'
  `BertWordPieceTokenizer(lowercase=True).train([FILE], vocab_size=30522,
  min_frequency=2)`, then `datasets.load_dataset("text", data_files=FILE,
  sample_by="paragraph")` (blank-line separated documents: the unit `mlm`
  reads with its default `corpus.document_boundary=blank_line`), then
  `map(tokenize, batched=True, num_proc=N)` with a transformers
  `PreTrainedTokenizerFast` on the trained tokenizer (run_mlm.py's
  `tokenizer(texts, return_special_tokens_mask=True)`, [CLS] and [SEP] added
  per document), then run_mlm.py's `group_texts` into 128-token blocks
  (`map(batched=True, num_proc=N)`), with a fresh datasets cache.
  `tokenizers` trains the vocabulary on every core whatever N; `datasets`
  sets `TOKENIZERS_PARALLELISM=false` around every `map` given a `num_proc`
  (1 included), so each map process tokenizes on one thread.

**Measured** per run: wall time of the subprocess; peak resident memory of
the process tree (the sum of the RSS of the process and all its
descendants, polled every 0.2 s with psutil: forked workers' shared pages
count once per process, so this overstates a forking tree a little) and,
beside it, the largest single process (`ru_maxrss` of `os.wait4` on the
child, i.e. the largest of the child and its waited-for descendants);
tokens as each contender counts them (mlm: the manifest's train + held-out
tokens, one [SEP] per document; hf: the tokenized `input_ids`, [CLS] and
[SEP] per document, before grouping); bytes on disk (apparent sizes) of what
the run wrote: mlm's output folder, hf's datasets cache files (the text's
Arrow copy, the tokenized and the grouped datasets) and its tokenizer; the
1-minute load average before and after each run.

**Where mlm's time goes**: after the timed repetitions of each size, one
more `mlm prepare --quiet` runs with timers wrapped around its steps (with
`--timed-steps`, the timed `mlm` runs themselves do, and no run is added)
(`mlm_phases`: corpus scan, reading the text, counting words, case folding,
learning merges, building the tokenizer, tokenizing each split, reading
inside tokenizing); its wall time is reported beside the timed runs'. The
hf child reports its own stages the same way (vocabulary, load_dataset,
tokenize map, group map).
"""

import argparse
import contextlib
import gzip
import itertools
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

# Heaps' law V(n) = K n^BETA (Reuters RCV1, Manning, Raghavan and Schuetze, ch. 5).
HEAPS_K, HEAPS_BETA = 44.0, 0.49
# Bytes of text generated per chunk written.
CHUNK_BYTES = 4 << 20
# Version of the generator, in the cached file's name: bump it when the bytes change.
GENERATOR_VERSION = 1
BLOCK_SIZE = 128
VOCAB_SIZE = 30522
RECIPE = "bert_tiny_en_uncased"


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.report:
        print_report(json.loads(args.report.read_text()))
        return
    args.work_dir.mkdir(parents=True, exist_ok=True)
    variants = args.mlm_set or [""]
    report = {"machine": machine_summary(), "command": " ".join(sys.argv),
              "commit": git_commit(), "repeats": args.repeats, "processes": args.processes,
              "seed": args.seed, "mlm_set": variants, "sizes": [], "runs": [], "breakdowns": []}
    began = time.perf_counter()
    for size in args.sizes:
        corpus = generate_corpus(args.work_dir, gigabytes=size, seed=args.seed)
        report["sizes"].append({"gigabytes": size, **corpus_stats(corpus)})
        contenders = [*(("mlm", n, v) for v in variants for n in args.mlm_processes),
                      *(("mlm-hosts", n, v) for v in variants for n in args.mlm_hosts),
                      *(("hf", n, "") for n in args.processes)]
        for repeat in range(args.repeats):
            shift = repeat % len(contenders)
            for name, processes, variant in contenders[shift:] + contenders[:shift]:
                overrides = variant.split()
                if name == "mlm":
                    run = run_mlm(corpus, work=args.work_dir, processes=processes,
                                  phases=args.timed_steps and processes == 1,
                                  overrides=overrides)
                elif name == "mlm-hosts":
                    run = run_mlm_hosts(corpus, work=args.work_dir, hosts=processes,
                                        overrides=overrides)
                else:
                    run = run_hf(corpus, work=args.work_dir, processes=processes)
                report["runs"].append({"gigabytes": size, "contender": name,
                                       "processes": processes, "mlm_set": variant,
                                       "repeat": repeat, **run})
                if name == "mlm" and args.timed_steps and processes == 1:
                    report["breakdowns"].append({"gigabytes": size, **run})
                save(report, args.json)
        if args.breakdown and not args.timed_steps:
            report["breakdowns"].append(
                {"gigabytes": size, **run_mlm(corpus, work=args.work_dir, phases=True)})
            save(report, args.json)
    report["total_seconds"] = time.perf_counter() - began
    save(report, args.json)
    print_report(report)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=lambda s: [float(x) for x in s.split(",")], default=[0.1],
                        help="corpus sizes in GB, comma separated (default 0.1)")
    parser.add_argument("--repeats", type=int, default=2, help="runs of each contender per size")
    parser.add_argument("--processes", type=lambda s: [int(x) for x in s.split(",") if x],
                        default=[1, 2], help="num_proc values of the hf contender (default 1,2; "
                        "'' runs no hf)")
    parser.add_argument("--mlm-processes", type=lambda s: [int(x) for x in s.split(",") if x],
                        default=[1, 2],
                        help="--workers values of the mlm contender (default 1,2; '' runs no mlm)")
    parser.add_argument("--mlm-hosts", type=lambda s: [int(x) for x in s.split(",") if x],
                        default=[], help="also prepare as N hosts (--hosts N --host I), each "
                        "host's share alone, one after another, as on N machines like this one "
                        "with no shared filesystem (e.g. 2; default: none)")
    parser.add_argument("--mlm-set", action="append", metavar="'FIELD=VALUE ...'",
                        help="a variant of the mlm contenders: these recipe overrides passed to "
                        "`mlm prepare --set` (e.g. 'vocab.sample=100000'); repeat it for several "
                        "variants, interleaved like the contenders; '' is the recipe as it is "
                        "(default: that one alone)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the generated corpus")
    parser.add_argument("--no-breakdown", dest="breakdown", action="store_false",
                        help="skip the timed-steps run of mlm after each size")
    parser.add_argument("--timed-steps", action="store_true",
                        help="time mlm's steps in its timed runs themselves, instead of one more "
                             "run after them (saves a run at large sizes)")
    parser.add_argument("--work-dir", type=Path,
                        default=Path(tempfile.gettempdir()) / "mlm_prepare_scale",
                        help="generated corpora (kept) and each run's output (removed after it)")
    parser.add_argument("--json", type=Path, help="write the report here after every run")
    parser.add_argument("--report", type=Path, help="print the tables of a saved --json report")
    return parser.parse_args(argv)


def save(report: dict, path: Path | None) -> None:
    """Writes the report (after every run, so that a killed benchmark keeps its results)."""
    if path:
        path.write_text(json.dumps(report, indent=1))


# ---------------------------------------------------------------- the corpus


def generate_corpus(work: Path, *, gigabytes: float, seed: int) -> Path:
    """The generated corpus of `gigabytes` GB (1e9 bytes) in `work`, written unless there."""
    path = work / f"corpus-{gigabytes:g}gb-seed{seed}-v{GENERATOR_VERSION}.txt"
    if path.is_file():
        say(f"corpus {path} ({path.stat().st_size / 1e9:.3f} GB): reused")
        return path
    import numpy as np

    target = int(gigabytes * 1e9)
    say(f"generating {path} ({target / 1e9:g} GB)")
    began = time.perf_counter()
    rng = np.random.default_rng(seed)
    source = _Source.from_sample()
    pool = list(source.words)  # ranked vocabulary: most frequent first, then new words
    written = words_so_far = 0
    tmp = path.with_suffix(".tmp")
    with open(tmp, "w", encoding="utf-8") as out:
        while written < target:
            text, n_words = _chunk(rng, source, pool, words_before=words_so_far,
                                   size=min(CHUNK_BYTES, target - written))
            data = text.encode("utf-8")
            out.write(text)
            written += len(data)
            words_so_far += n_words
    tmp.rename(path)
    say(f"  {written / 1e9:.3f} GB, {words_so_far:,} words, {len(pool):,} words in the "
        f"vocabulary, in {time.perf_counter() - began:.0f} s")
    return path


class _Source:
    """What the generator takes from the shipped sample: words, sentence shapes, syllables."""

    def __init__(self, words, shapes, syllables, syllable_weights):
        self.words = words  # surface forms, most frequent first
        self.shapes = shapes  # per real sentence: the separator after each of its words
        self.syllables = syllables
        self.syllable_weights = syllable_weights

    @classmethod
    def from_sample(cls) -> "_Source":
        import collections

        import numpy as np

        from mlm.data.corpus import sample_corpus_path

        with gzip.open(sample_corpus_path(), "rt", encoding="utf-8") as f:
            text = f.read()
        counts = collections.Counter(re.findall(r"[A-Za-z']+", text))
        by_lower: dict[str, collections.Counter] = {}
        for word, count in counts.items():
            by_lower.setdefault(word.lower(), collections.Counter())[word] = count
        ranked = sorted(by_lower.items(), key=lambda kv: (-sum(kv[1].values()), kv[0]))
        words = [forms.most_common(1)[0][0] for _, forms in ranked]
        shapes = []
        for sentence in re.findall(r"[^.?!]+[.?!]", text):
            separators = re.findall(r"[A-Za-z']+([^A-Za-z']*)", sentence)
            if separators:
                # The separator after each word: its punctuation, then one space.
                shape = [re.sub(r"\s+", "", s) + " " for s in separators]
                shapes.append(shape)
        syllables = collections.Counter()
        for lower, forms in by_lower.items():
            for syllable in re.findall(r"[^aeiouy]*[aeiouy]+(?:[^aeiouy]+$)?", lower):
                syllables[syllable] += sum(forms.values())
        names = sorted(syllables)
        weights = np.array([syllables[s] for s in names], dtype=np.float64)
        return cls(words, shapes, names, weights / weights.sum())


def _chunk(rng, source: _Source, pool: list[str], *, words_before: int, size: int):
    """About `size` bytes of documents, and their number of words; grows `pool`."""
    import numpy as np

    shapes: list[list[str]] = []
    n_words = 0
    budget = size / 5.7  # about 5.7 bytes per word and separator
    while n_words < budget:
        shape = source.shapes[int(rng.integers(len(source.shapes)))]
        shapes.append(shape)
        n_words += len(shape)
    # Heaps' law: the vocabulary reaches V(n) by the end of this chunk.
    wanted = int(HEAPS_K * (words_before + n_words) ** HEAPS_BETA)
    new = _new_words(rng, source, count=max(0, wanted - len(pool)))
    pool.extend(new)
    ranks = np.floor((len(pool) + 1.0) ** rng.random(n_words)).astype(np.int64) - 1
    words = [pool[r] for r in np.minimum(ranks, len(pool) - 1)]
    for position, word in zip(rng.choice(n_words, size=min(len(new), n_words), replace=False),
                              new, strict=False):
        words[position] = word
    separators = list(itertools.chain.from_iterable(shapes))
    # Documents of 2 to 8 sentences: a blank line after a document's last sentence.
    starts = np.cumsum([0] + [len(s) for s in shapes[:-1]])
    sentence = 0
    while sentence < len(shapes):
        sentence += int(rng.integers(2, 9))
        end = min(sentence, len(shapes)) - 1
        last = starts[end] + len(shapes[end]) - 1
        separators[last] = separators[last].rstrip(" ") + "\n\n"
    for start in starts:  # a capital letter at each sentence's start
        words[start] = words[start][:1].upper() + words[start][1:]
    return "".join(itertools.chain.from_iterable(zip(words, separators, strict=True))), n_words


def _new_words(rng, source: _Source, *, count: int) -> list[str]:
    """`count` synthetic words of 2 to 4 of the sample's syllables; a fifth capitalized, as
    names."""
    import numpy as np

    lengths = rng.choice((2, 3, 3, 4), size=count)
    picks = rng.choice(len(source.syllables), size=int(lengths.sum()), p=source.syllable_weights)
    capital = rng.random(count) < 0.2
    ends = np.cumsum(lengths)
    words = []
    for end, length, upper in zip(ends, lengths, capital, strict=True):
        word = "".join(source.syllables[i] for i in picks[end - length: end])
        words.append(word.capitalize() if upper else word)
    return words


def corpus_stats(path: Path) -> dict:
    return {"corpus": str(path), "bytes": path.stat().st_size}


# ---------------------------------------------------------------- running and measuring


def measured(command: list[str], *, env: dict, log: Path) -> dict:
    """Runs `command`, its stdout and stderr into `log`; wall time, memory, load and exit."""
    import psutil

    load_before = os.getloadavg()[0]
    peak = {"tree": 0}
    done = threading.Event()
    began = time.perf_counter()
    with log.open("w") as out:
        process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=out,
                                   stderr=subprocess.STDOUT)

        def poll() -> None:
            try:
                parent = psutil.Process(process.pid)
            except psutil.NoSuchProcess:
                return
            while not done.is_set():
                total = 0
                try:
                    for p in [parent, *parent.children(recursive=True)]:
                        with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
                            total += p.memory_info().rss
                except psutil.NoSuchProcess:
                    return
                peak["tree"] = max(peak["tree"], total)
                done.wait(0.2)

        poller = threading.Thread(target=poll, daemon=True)
        poller.start()
        _, status, usage = os.wait4(process.pid, 0)
        wall = time.perf_counter() - began
        process.returncode = os.waitstatus_to_exitcode(status)
        done.set()
        poller.join()
    result = {"wall_seconds": wall, "peak_tree_rss_mb": peak["tree"] / 2**20,
              "max_process_rss_mb": usage.ru_maxrss / 1024,  # KiB on Linux
              "load_average": [load_before, os.getloadavg()[0]],
              "returncode": process.returncode}
    if process.returncode != 0:
        lines = [line for line in log.read_text(errors="replace").splitlines() if line.strip()]
        result["error"] = lines[-1] if lines else f"exit {process.returncode}"
    return result


def _env(**extra: str) -> dict:
    # The repository's own mlm, whatever the environment has installed.
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    return {**os.environ, "PYTHONPATH": path, **extra}


def run_mlm(corpus: Path, *, work: Path, processes: int = 1, phases: bool = False,
            share: tuple[int, int] | None = None, overrides: list[str] = ()) -> dict:
    """One `mlm prepare --workers processes` of `corpus` in a fresh temporary folder; its
    measurements. `phases`: with timers around its steps (those of the parent process, so
    with `processes` 1). `share`: `(host, hosts)`, prepare only that host's share
    (`--hosts hosts --host host`), with the manifest's splits and tokenizer fingerprint
    kept in the result. `overrides`: `--set` these recipe fields."""
    label = ("mlm (timed steps)" if phases
             else f"mlm, host {share[0]} of {share[1]}" if share
             else f"mlm ({processes} process{'es' if processes > 1 else ''})")
    label += f" [{' '.join(overrides)}]" if overrides else ""
    log = ("mlm-phases" if phases else f"mlm-host{share[0]}" if share
           else f"mlm{processes}")
    with tempfile.TemporaryDirectory(dir=work, prefix="mlm-run-") as tmp:
        tmp = Path(tmp)
        out = tmp / "prepared"
        phases_file = tmp / "phases.json"
        prepare = ["prepare", "--recipe", RECIPE, "--corpus", str(corpus), "--out", str(out),
                   "--workers", str(processes), "--quiet"]
        if share:
            prepare += ["--hosts", str(share[1]), "--host", str(share[0])]
        if overrides:
            prepare += ["--set", *overrides]
        command = ([sys.executable, str(Path(__file__).resolve()), "--mlm-phases",
                    str(phases_file), "--", *prepare] if phases
                   else [sys.executable, "-m", "mlm", *prepare])
        say(f"{label}: {corpus.name}")
        result = measured(command, env=_env(MLM_CACHE_DIR=str(tmp / "mlm-cache")),
                          log=work / f"last-{log}.log")
        if "error" not in result:
            manifest = json.loads((out / "manifest.json").read_text())
            splits = manifest["splits"]
            result["tokens"] = sum(s["tokens"] for s in splits.values())
            result["documents"] = sum(s["documents"] for s in splits.values())
            result["vocabulary_size"] = manifest["vocabulary_size"]
            result["disk_bytes"] = disk_bytes(out)
            if share:
                result["splits"] = splits
                result["tokenizer_fingerprint"] = manifest["tokenizer_fingerprint"]
            if phases:
                result["phases"] = json.loads(phases_file.read_text())
        result["command"] = " ".join(command[:1] + ["-m", "mlm"] + command[-len(prepare):])
    say_result(label, result)
    return result


def run_mlm_hosts(corpus: Path, *, work: Path, hosts: int, overrides: list[str] = ()) -> dict:
    """`run_mlm` of every host's share (`mlm prepare --hosts hosts --host I`), one after
    another, each alone on this machine with its own output folder and machine cache (no
    shared filesystem), as `hosts` machines like this one would run them at the same
    time. Its wall time is the slowest host's; tokens, documents and bytes on disk add up
    over the shares (the held-out split, whole in every share, counted once); memory is
    the largest host's."""
    hosts_runs = [run_mlm(corpus, work=work, share=(host, hosts), overrides=overrides)
                  for host in range(hosts)]
    failed = [r for r in hosts_runs if "error" in r]
    if failed:
        return {**failed[0], "hosts": hosts_runs}
    held = hosts_runs[0]["splits"]["held_out"]
    return {
        "wall_seconds": max(r["wall_seconds"] for r in hosts_runs),
        "host_wall_seconds": [r["wall_seconds"] for r in hosts_runs],
        "peak_tree_rss_mb": max(r["peak_tree_rss_mb"] for r in hosts_runs),
        "max_process_rss_mb": max(r["max_process_rss_mb"] for r in hosts_runs),
        "load_average": [hosts_runs[0]["load_average"][0], hosts_runs[-1]["load_average"][1]],
        "returncode": 0,
        "tokens": sum(r["tokens"] for r in hosts_runs) - (hosts - 1) * held["tokens"],
        "documents": sum(r["documents"] for r in hosts_runs) - (hosts - 1) * held["documents"],
        "vocabulary_size": hosts_runs[0]["vocabulary_size"],
        # Every host must have learned the same vocabulary (the fingerprint the hosts
        # compare before training); the report says if not.
        "same_vocabulary": len({r["tokenizer_fingerprint"] for r in hosts_runs}) == 1,
        "disk_bytes": sum(r["disk_bytes"] for r in hosts_runs),
        "hosts": hosts_runs,
    }


def run_hf(corpus: Path, *, work: Path, processes: int) -> dict:
    """One HuggingFace preparation of `corpus` with `processes` map workers; its measurements."""
    label = f"hf ({processes} process{'es' if processes > 1 else ''})"
    with tempfile.TemporaryDirectory(dir=work, prefix="hf-run-") as tmp:
        tmp = Path(tmp)
        stages = tmp / "stages.json"
        command = [sys.executable, str(Path(__file__).resolve()), "--hf-child", str(corpus),
                   str(tmp / "out"), str(processes), str(stages)]
        say(f"{label}: {corpus.name}")
        result = measured(command, env=_env(HF_HOME=str(tmp / "hf-home"),
                                            HF_DATASETS_CACHE=str(tmp / "out" / "datasets")),
                          log=work / f"last-hf{processes}.log")
        if "error" not in result:
            child = json.loads(stages.read_text())
            result.update(child)
            result["disk_bytes"] = disk_bytes(tmp / "out")
    say_result(label, result)
    return result


def disk_bytes(folder: Path) -> int:
    """Apparent size of the files under `folder`."""
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def say_result(label: str, result: dict) -> None:
    if "error" in result:
        say(f"  {label} failed: {result['error']}")
        return
    say(f"  {result['wall_seconds']:.1f} s, {result.get('tokens', 0):,} tokens, peak tree RSS "
        f"{result['peak_tree_rss_mb']:,.0f} MB, {result['disk_bytes'] / 1e6:,.1f} MB on disk, "
        f"load {result['load_average'][0]:.1f}->{result['load_average'][1]:.1f}")


# ---------------------------------------------------------------- the children


def hf_child(corpus: str, out: str, processes: int, stages_path: str) -> None:
    """HuggingFace's preparation (run_mlm.py's, without line_by_line), timed by stage."""
    began = time.perf_counter()
    stages = {}
    import datasets
    from tokenizers import BertWordPieceTokenizer
    from transformers import PreTrainedTokenizerFast

    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    stages["imports"] = time.perf_counter() - began
    _stage_done("imports", began)

    mark = time.perf_counter()
    trainer = BertWordPieceTokenizer(lowercase=True)
    trainer.train([corpus], vocab_size=VOCAB_SIZE, min_frequency=2, show_progress=False)
    trainer.save(str(out_dir / "tokenizer.json"))
    stages["vocabulary"] = time.perf_counter() - mark
    _stage_done("vocabulary", began)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_file=str(out_dir / "tokenizer.json"), unk_token="[UNK]", sep_token="[SEP]",
        pad_token="[PAD]", cls_token="[CLS]", mask_token="[MASK]")

    mark = time.perf_counter()
    raw = datasets.load_dataset("text", data_files={"train": corpus}, sample_by="paragraph",
                                cache_dir=str(out_dir / "datasets"))
    stages["load_dataset"] = time.perf_counter() - mark
    _stage_done("load_dataset", began)

    def tokenize_function(examples):
        return tokenizer(examples["text"], return_special_tokens_mask=True)

    mark = time.perf_counter()
    tokenized = raw.map(tokenize_function, batched=True, num_proc=processes,
                        remove_columns=["text"])
    stages["tokenize_map"] = time.perf_counter() - mark
    _stage_done("tokenize_map", began)

    def group_texts(examples):  # run_mlm.py's
        concatenated = {k: list(itertools.chain(*examples[k])) for k in examples}
        total = len(concatenated[next(iter(examples))])
        total = (total // BLOCK_SIZE) * BLOCK_SIZE
        return {k: [t[i: i + BLOCK_SIZE] for i in range(0, total, BLOCK_SIZE)]
                for k, t in concatenated.items()}

    mark = time.perf_counter()
    grouped = tokenized.map(group_texts, batched=True, num_proc=processes)
    stages["group_map"] = time.perf_counter() - mark
    _stage_done("group_map", began)
    stages["total_in_child"] = time.perf_counter() - began

    # Counted after the clock: the tokenized ids per document, from Arrow's offsets.
    column = tokenized["train"].data.column("input_ids")
    tokens = sum(len(chunk.values) for chunk in column.chunks)
    result = {"stages": stages, "tokens": tokens, "documents": len(raw["train"]),
              "blocks": len(grouped["train"]), "vocabulary_size": trainer.get_vocab_size()}
    Path(stages_path).write_text(json.dumps(result))


def _stage_done(stage: str, began: float) -> None:
    """A line in the child's log as each HF stage ends, so that a run stopped early (a time
    bound at a large size) still shows how far it got."""
    print(f"[hf] {stage} done at {time.perf_counter() - began:.1f} s", file=sys.stderr, flush=True)


# mlm's steps timed by `mlm_phases`: (module, attribute, label).
_TIMED = (
    ("mlm.data.corpus", "resolve_corpus", "scan and hash the corpus"),
    ("mlm.data.tokenizing", "learn_vocabulary", "vocabulary (all)"),
    ("mlm.data.corpus", "draw_sample", "vocabulary: draw the sample at byte offsets"),
    ("mlm.data.corpus", "count_documents", "count the documents"),
    ("mlm.data.vocab.wordpiece", "count_words", "vocabulary: read text and count words"),
    ("mlm.data.vocab.wordpiece", "_casefold_counts", "vocabulary: case-fold the counts"),
    ("mlm.data.vocab.wordpiece", "_learn_wordpieces", "vocabulary: learn merges"),
    ("mlm.data.tokenizing", "load_tokenizer", "build the keras-hub tokenizer"),
    ("mlm.data.tokenizing", "tokenize", "tokenize (all)"),
)


def mlm_phases(phases_path: str, cli_args: list[str]) -> None:
    """Runs `mlm` with `cli_args`, timing the steps of `_TIMED` and the reading of documents."""
    import importlib

    began = time.perf_counter()
    seconds: dict[str, float] = {}
    state = {"step": "other"}

    def timed(function, label):
        def wrapper(*args, **kwargs):
            outer, state["step"] = state["step"], label
            mark = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                seconds[label] = seconds.get(label, 0.0) + time.perf_counter() - mark
                state["step"] = outer
        return wrapper

    from mlm.data import corpus, token_cache

    for module, attribute, label in _TIMED:
        target = importlib.import_module(module)
        setattr(target, attribute, timed(getattr(target, attribute), label))

    def timed_split(function):
        def wrapper(documents, *args, **kwargs):
            label = f"tokenize {kwargs['out'].stem}"
            return timed(function, label)(documents, *args, **kwargs)
        return wrapper

    token_cache.tokenize_split = timed_split(token_cache.tokenize_split)
    def timed_items(function, label_of):
        """`function`'s items, the time spent producing them added to the label that
        `label_of` gives for the call's keyword arguments (at the call, in its step)."""
        def wrapper(*args, **kwargs):
            label = label_of(kwargs)
            items = function(*args, **kwargs)
            while True:
                mark = time.perf_counter()
                try:
                    item = next(items)
                except StopIteration:
                    seconds[label] = seconds.get(label, 0.0) + time.perf_counter() - mark
                    return
                seconds[label] = seconds.get(label, 0.0) + time.perf_counter() - mark
                yield item
        return wrapper

    corpus.iter_documents = timed_items(  # documents read in a step
        corpus.iter_documents,
        lambda kwargs: f"{state['step']}: reading documents ({kwargs.get('split', '?')})")
    corpus.sampled_documents = timed_items(  # the vocabulary's sample read
        corpus.sampled_documents, lambda kwargs: f"{state['step']}: reading the sample's documents")
    token_cache._keras_hub_batches = timed_items(  # the main thread's wait for each batch
        token_cache._keras_hub_batches,
        lambda kwargs: f"{state['step']}: waiting for tf.data's tokenized batches")
    seconds["imports: mlm's data modules"] = time.perf_counter() - began
    mark = time.perf_counter()
    import keras_hub  # noqa: F401  (what `mlm prepare` imports anyway, timed apart)
    import tensorflow  # noqa: F401

    from mlm.cli import main as cli_main

    seconds["imports: TensorFlow, keras-hub, mlm.cli"] = time.perf_counter() - mark
    mark = time.perf_counter()
    code = cli_main(cli_args)
    seconds["mlm prepare (all)"] = time.perf_counter() - mark
    seconds["total_in_child"] = time.perf_counter() - began
    Path(phases_path).write_text(json.dumps(seconds))
    sys.exit(code)


# ---------------------------------------------------------------- report


def print_report(report: dict) -> None:
    m = report["machine"]
    print(f"\nmachine: {m['cpu']}, {m['cores']} cores, avx512_bf16 {m['avx512_bf16']}, "
          f"amx {m['amx']}; {m['date']}; commit {report.get('commit', '?')}")
    print(f"command: {report['command']}")
    for size in report["sizes"]:
        print(f"corpus {size['gigabytes']:g} GB: {size['corpus']} ({size['bytes']:,} bytes)")
    print("\n| size | contender | processes | wall s | tokens | tokens/s | peak RSS MB (tree) "
          "| largest process MB | bytes/token | vocabulary | load |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    groups: dict[tuple, list[dict]] = {}
    for run in report["runs"]:
        groups.setdefault((run["gigabytes"], run["contender"], run["processes"],
                           run.get("mlm_set", "")), []).append(run)
    for (size, name, processes, variant), runs in groups.items():
        print(table_row(size, name, processes, runs, variant=variant))
    for line in speedups(report["runs"]):
        print(line)
    for breakdown in report.get("breakdowns", []):
        print_breakdown(breakdown)
    hf = [r for r in report["runs"] if r["contender"] == "hf" and "stages" in r]
    if hf:
        print("\nhf stages (seconds, in the child; mean of the runs):\n")
        print("| size | processes | imports | vocabulary | load_dataset | tokenize map "
              "| group map | child total |")
        print("|---|---:|---:|---:|---:|---:|---:|---:|")
        for (size, name, processes, _), runs in groups.items():
            runs = [r for r in runs if "stages" in r]
            if name != "hf" or not runs:
                continue
            cells = [statistics.mean(r["stages"][k] for r in runs) for k in
                     ("imports", "vocabulary", "load_dataset", "tokenize_map", "group_map",
                      "total_in_child")]
            print(f"| {size:g} GB | {processes} | " + " | ".join(f"{c:.1f}" for c in cells) + " |")
    if "total_seconds" in report:
        print(f"\ntotal {report['total_seconds'] / 60:.1f} min")
    for run in report["runs"]:
        if "error" in run:
            print(f"ERROR {run['contender']} {run['processes']} at {run['gigabytes']:g} GB: "
                  f"{run['error']}")


def speedups(runs: list[dict]) -> list[str]:
    """Per size and `--mlm-set` variant, mlm's wall time with 1 process over its time with N
    processes or hosts, paired by repeat (the runs of one repeat are back to back, so they
    share the machine's load); hosts are also compared with one host of the first variant
    (the recipe as it is, when that one ran), and each variant's tokens with that
    variant's (a vocabulary learned on a sample can split the same text into more
    tokens)."""
    walls: dict[tuple, float] = {}
    tokens: dict[tuple, int] = {}
    for r in runs:
        if r["contender"] == "mlm" and "error" not in r and "phases" not in r:
            key = (r["gigabytes"], r.get("mlm_set", ""), r["processes"], r["repeat"])
            walls[key] = r["wall_seconds"]
        if r["contender"].startswith("mlm") and "error" not in r:
            tokens.setdefault((r["gigabytes"], r.get("mlm_set", "")), r["tokens"])
    first = next((r.get("mlm_set", "") for r in runs if r["contender"].startswith("mlm")), "")

    def named(variant: str) -> str:
        return f"`{variant}`" if variant else "the recipe as it is"

    lines = []
    for (size, variant), count in tokens.items():
        base = tokens.get((size, first))
        if variant != first and base:
            lines.append(f"\nmlm at {size:g} GB, {named(variant)}: {count:,} tokens, "
                         f"{count / base:.4f}x those of {named(first)}")
    hosts: dict[tuple, dict] = {}
    for r in runs:
        if r["contender"] == "mlm-hosts" and "error" not in r:
            hosts[(r["gigabytes"], r.get("mlm_set", ""), r["processes"], r["repeat"])] = r
    for (size, variant, n, rep), r in sorted(hosts.items()):
        one = walls.get((size, variant, 1, rep))
        ratio = f"{r['wall_seconds'] / one:.2f}x of one host's time ({one:.1f} s)" if one else ""
        base = walls.get((size, first, 1, rep)) if variant != first else None
        if base:
            ratio += (f", {r['wall_seconds'] / base:.2f}x of one host's time with "
                      f"{named(first)} ({base:.1f} s)")
        lines.append(f"\nmlm at {size:g} GB{f' `{variant}`' if variant else ''}, {n} hosts, "
                     f"repeat {rep}: hosts took "
                     + ", ".join(f"{w:.1f}" for w in r["host_wall_seconds"])
                     + f" s; slowest {r['wall_seconds']:.1f} s, {ratio}; same vocabulary "
                     f"on every host: {'yes' if r['same_vocabulary'] else 'NO'}")
    for size, variant, n in sorted({k[:3] for k in walls if k[2] > 1}):
        ratios = [walls[(size, variant, 1, rep)] / walls[(size, variant, n, rep)]
                  for (sz, v, p, rep) in sorted(walls) if (sz, v, p) == (size, variant, n)
                  and (size, variant, 1, rep) in walls]
        if ratios:
            spread = (f" ± {statistics.stdev(ratios) / len(ratios) ** 0.5:.2f} (s.e.)"
                      if len(ratios) > 1 else "")
            lines.append(f"\nmlm at {size:g} GB{f' `{variant}`' if variant else ''}, "
                         f"1 -> {n} processes: {statistics.mean(ratios):.2f}x{spread} "
                         "(per repeat: " + ", ".join(f"{x:.2f}" for x in ratios) + ")")
    return lines


def table_row(size: float, name: str, processes: int, runs: list[dict], *,
              variant: str = "") -> str:
    ok = [r for r in runs if "error" not in r]
    label = {"mlm": "mlm", "mlm-hosts": f"mlm, {processes} hosts (slowest host)"}.get(
        name, "hf (tokenizers + datasets)")
    label += f" `{variant}`" if variant else ""
    if not ok:
        return f"| {size:g} GB | {label} | {processes} | error | | | | | | | |"

    def cell(values: list[float], fmt: str) -> str:
        if len(values) == 1:
            return format(values[0], fmt)
        return f"{format(statistics.mean(values), fmt)} ± {format(statistics.stdev(values), fmt)}"

    if name == "mlm" and "phases" in ok[0]:
        label = label.replace("mlm", "mlm (steps timed in the run)", 1)
    walls = [r["wall_seconds"] for r in ok]
    tokens = ok[0]["tokens"]
    loads = ", ".join(f"{r['load_average'][0]:.1f}-{r['load_average'][1]:.1f}" for r in ok)
    return (f"| {size:g} GB | {label} | {processes} | {cell(walls, '.1f')} | {tokens:,} "
            f"| {cell([r['tokens'] / r['wall_seconds'] for r in ok], ',.0f')} "
            f"| {cell([r['peak_tree_rss_mb'] for r in ok], ',.0f')} "
            f"| {cell([r['max_process_rss_mb'] for r in ok], ',.0f')} "
            f"| {cell([r['disk_bytes'] / r['tokens'] for r in ok], '.2f')} "
            f"| {ok[0]['vocabulary_size']:,} | {loads} |")


def print_breakdown(breakdown: dict) -> None:
    print(f"\nwhere mlm's time goes, {breakdown['gigabytes']:g} GB (a run with timed steps: "
          f"{breakdown['wall_seconds']:.1f} s wall, load "
          f"{breakdown['load_average'][0]:.1f}-{breakdown['load_average'][1]:.1f}):\n")
    if "error" in breakdown:
        print(f"error: {breakdown['error']}")
        return
    phases = breakdown["phases"]
    wall = breakdown["wall_seconds"]
    print("| step (a line starting with - is part of the step above it) | seconds "
          "| share of wall |\n|---|---:|---:|")
    for label, seconds, depth in breakdown_rows(phases, wall=wall):
        print(f"| {'- ' * depth}{label} | {seconds:.1f} | {seconds / wall:.0%} |")


def breakdown_rows(phases: dict, *, wall: float) -> list[tuple[str, float, int]]:
    """(label, seconds, depth) of mlm's timed steps, each step before its parts."""
    top = ("imports: mlm's data modules", "imports: TensorFlow, keras-hub, mlm.cli",
           "scan and hash the corpus", "vocabulary (all)", "build the keras-hub tokenizer",
           "tokenize (all)")
    parts = {"vocabulary (all)": "vocabulary: ", "tokenize train": "tokenize train: ",
             "tokenize held_out": "tokenize held_out: "}
    rows = []

    def add(label: str, depth: int) -> None:
        if label not in phases:
            return
        rows.append((label, phases[label], depth))
        prefix = parts.get(label)
        children = [k for k in phases if prefix and k.startswith(prefix)]
        for child in children:  # "vocabulary: a" and then "vocabulary: a: b" under it
            if not any(child.startswith(other + ":") for other in children if other != child):
                rows.append((child, phases[child], depth + 1))
                rows.extend((k, phases[k], depth + 2) for k in children
                            if k.startswith(child + ":"))
        if label == "tokenize (all)":
            add("tokenize train", depth + 1)
            add("tokenize held_out", depth + 1)

    for label in top:
        add(label, 0)
    inside = phases["mlm prepare (all)"] - sum(phases.get(k, 0.0) for k in top[2:])
    rows.append(("mlm prepare: the rest (recipe, manifest, renames)", inside, 0))
    rows.append(("process start and exit (wall - time in the child)",
                 wall - phases["total_in_child"], 0))
    return rows


def machine_summary() -> dict:
    """CPU model, cores and bf16 support, from /proc/cpuinfo."""
    info = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    fields = {}
    for line in info.splitlines():
        if ":" in line:
            key, value = line.split(":", 1)
            fields.setdefault(key.strip(), value.strip())  # the first CPU's
    flags = fields.get("flags", "").split()
    return {
        "cpu": fields.get("model name", "?"), "cores": os.cpu_count(),
        "avx512_bf16": "avx512_bf16" in flags,
        "amx": any(f.startswith("amx") for f in flags), "date": time.strftime("%Y-%m-%d %H:%M"),
        "memory_gb": os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30,
    }


def git_commit() -> str:
    done = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT,
                          capture_output=True, text=True)
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                           capture_output=True, text=True).stdout.strip()
    return (done.stdout.strip() or "?") + ("+dirty" if dirty else "")


def say(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message} (load {os.getloadavg()[0]:.1f})",
          file=sys.stderr, flush=True)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--hf-child":
        hf_child(sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5])
    elif len(sys.argv) > 1 and sys.argv[1] == "--mlm-phases":
        mlm_phases(sys.argv[2], sys.argv[4:])  # sys.argv[3] is "--"
    else:
        main()
