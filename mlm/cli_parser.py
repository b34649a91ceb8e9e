"""The grammar of the `mlm` command line: every command and its options.

Declarations only: `mlm.cli` parses argv with `build_parser()` and runs the
command; nothing here reads argv or runs anything.
"""

import argparse


def build_parser() -> argparse.ArgumentParser:
    """The parser of every `mlm` command and its options."""
    parser = argparse.ArgumentParser(
        prog="mlm", description="Masked language model pretraining on keras-hub."
    )
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("pretrain", help="learn a vocabulary and pretrain a MaskedLM from raw text")
    p.add_argument("--recipe",
                   help="recipe name in presets/ or a JSON file (default: bert_tiny_en_uncased; "
                   "with --budget, the recipe measured best for that budget: README, "
                   "\"Recipes by budget\")")
    _add_run_arguments(p, default_run_dir="runs/demo")
    _add_backend_arguments(p)

    p = sub.add_parser("continue", help="continue MLM pretraining of a preset on a new corpus")
    p.add_argument("--preset", required=True,
                   help="keras-hub handle, keras-hub preset folder, or HuggingFace checkpoint "
                   "folder")
    p.add_argument("--recipe", default="continue_pretraining",
                   help="training settings (default: %(default)s)")
    _add_run_arguments(p, default_run_dir="runs/continued")
    _add_backend_arguments(p)

    p = sub.add_parser("prepare", help="read, learn a vocabulary for and tokenize a corpus once, "
                       "into a folder that runs train from (--data)")
    _add_corpus_arguments(p)
    p.add_argument("--recipe", default="bert_tiny_en_uncased",
                   help="the recipe whose architecture, vocab and corpus settings to prepare "
                   "for (default: %(default)s)")
    p.add_argument("--vocab", metavar="DIR",
                   help="copy this vocabulary folder (a run's vocab/, mlm vocab --out) instead "
                   "of learning one")
    p.add_argument("--set", nargs="+", default=[], metavar="SECTION.FIELD=VALUE",
                   help="override any recipe field, e.g. --set vocab.size=50000")
    p.add_argument("--out", required=True, help="the prepared corpus folder to write")
    p.add_argument("--hosts", type=int, default=1,
                   help="prepare one host's share of the training documents for a run on this "
                   "many hosts (default: %(default)s, all of them)")
    p.add_argument("--host", type=int, default=0,
                   help="with --hosts: the host whose share to prepare, 0 to hosts-1 (its "
                   "--process-id)")
    p.add_argument("--workers", type=int, metavar="N",
                   help="count words and tokenize in N processes, each on a contiguous range "
                   "of the documents (the same folder as 1); for machines with more cores than "
                   "one process keeps busy (default: 1)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing prepared corpus")
    p.add_argument("--quiet", action="store_true", help="print only errors and the result")

    p = sub.add_parser("evaluate", help="held-out masked accuracy and perplexity of a preset")
    p.add_argument("preset", help="preset folder (e.g. runs/demo/preset) or keras-hub handle")
    p.add_argument("--corpus", nargs="+", required=True, metavar="PATH")
    p.add_argument("--text-column", default="text")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--max-batches", type=int, default=0, help="0: every window")
    p.add_argument("--seed", type=int, default=0, help="seed of the fixed evaluation masks")
    p.add_argument("--selection-rate", type=float, metavar="RATE",
                   help="fraction of tokens to mask (default: the preset's own rate)")

    p = sub.add_parser("predict", help="top-k fillers for each [MASK] in a text")
    p.add_argument("preset")
    p.add_argument("text", nargs="+")
    p.add_argument("--top-k", type=int, default=5)

    p = sub.add_parser("export", help="copy a checkpoint of a run to a preset folder")
    p.add_argument("run_dir", help="a run directory (or, with --format transformers, a preset)")
    p.add_argument("--step", type=int, default=None, help="default: the newest checkpoint")
    p.add_argument("--out", required=True)
    p.add_argument("--format", choices=("keras-hub", "transformers"), default="keras-hub",
                   help="a keras-hub preset, or a HuggingFace transformers folder")
    p.add_argument("--overwrite", action="store_true",
                   help="--format transformers: replace an existing --out")

    p = sub.add_parser("vocab", help="learn a vocabulary from a corpus")
    p.add_argument("--corpus", nargs="+", default=None, metavar="PATH")
    p.add_argument("--text-column", default="text")
    p.add_argument("--architecture", default="bert",
                   help="the tokenizer family and special tokens of this architecture's row")
    p.add_argument("--size", type=int, default=30522)
    p.add_argument("--cased", action="store_true", help="keep case (default: uncased)")
    p.add_argument("--min-frequency", type=int, default=2)
    p.add_argument("--byte-fallback", action="store_true",
                   help="sentencepiece rows: spell characters left out as UTF-8 bytes, not <unk>")
    p.add_argument("--out", required=True,
                   help="output folder for the vocabulary files (e.g. vocabulary.txt)")

    p = sub.add_parser("report", help="rebuild RUN_DIR/report.md from the run's files")
    p.add_argument("run_dir")
    p.add_argument("--examples", type=int, default=3,
                   help="fill-mask examples from held-out text (default: %(default)s)")

    p = sub.add_parser("recipes", help="list the recipes in presets/ (--fields: their fields)")
    p.add_argument("--fields", action="store_true",
                   help="list every recipe field with its default and what it does")

    p = sub.add_parser("finetune", help="fine-tune a preset as a text classifier on labelled data")
    p.add_argument("preset", help="mlm or keras-hub preset folder, keras-hub handle, HuggingFace "
                   "folder; random:PRESET for its architecture with fresh weights")
    _add_finetune_arguments(p, default_run_dir="runs/finetune")
    p.add_argument("--resume", action="store_true", help="continue the run in --run-dir")

    p = sub.add_parser("compare", help="fine-tune several encoders over seeds and compare them")
    p.add_argument("presets", nargs="+", metavar="PRESET",
                   help="encoders as for finetune; random:PRESET is the untrained baseline")
    p.add_argument("--seeds", type=int, default=3, help="runs per encoder (default: %(default)s)")
    _add_finetune_arguments(p, default_run_dir="runs/compare")

    p = sub.add_parser("classify", help="label and probability of each text from a classifier")
    p.add_argument("preset", help="classifier preset folder (e.g. runs/finetune/preset)")
    p.add_argument("text", nargs="+")
    p.add_argument("--pair", nargs="+", default=None, metavar="TEXT",
                   help="second texts of sentence pairs, one per text")
    return parser


def _add_finetune_arguments(p: argparse.ArgumentParser, *, default_run_dir: str) -> None:
    p.add_argument("--train", metavar="FILE", help="labelled .csv, .jsonl or .parquet file")
    p.add_argument("--validation", metavar="FILE",
                   help="labelled validation file (default: a stratified hold-out of --train)")
    p.add_argument("--task", metavar="NAME",
                   help="a hub task instead of files, e.g. glue/sst2 (needs the network)")
    p.add_argument("--text-column", help="override text_column (default: text)")
    p.add_argument("--text-pair-column", help="second text of sentence pairs (NLI, paraphrase)")
    p.add_argument("--label-column", help="override label_column (default: label)")
    p.add_argument("--recipe", default="finetune",
                   help="fine-tuning recipe name in presets/ or a JSON file (default: %(default)s)")
    p.add_argument("--epochs", type=int, help="override epochs (0: from the training set's size)")
    p.add_argument("--batch-size", type=int, help="override batch_size")
    p.add_argument("--learning-rate", type=float, help="override learning_rate")
    p.add_argument("--sequence-length", type=int, help="override sequence_length (0: as needed)")
    p.add_argument("--set", nargs="+", default=[], metavar="FIELD=VALUE",
                   help="override any recipe field, e.g. --set warmup_fraction=0.06")
    p.add_argument("--run-dir", default=default_run_dir, help="run folder (default: %(default)s)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --run-dir")
    p.add_argument("--quiet", action="store_true", help="print only errors and the result")


def _add_corpus_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--corpus", nargs="+", default=None, metavar="PATH",
                   help="text files, folders, globs or a hub dataset (default: the sample corpus)")
    p.add_argument("--held-out", nargs="+", default=None, metavar="PATH",
                   help="held-out files (default: a hashed fraction of the corpus)")


def _add_run_arguments(p: argparse.ArgumentParser, *, default_run_dir: str) -> None:
    _add_corpus_arguments(p)
    p.add_argument("--data", metavar="DIR",
                   help="train from a prepared corpus (mlm prepare --out DIR) instead of "
                   "--corpus: no text read, no vocabulary learned, nothing tokenized")
    p.add_argument("--run-dir", default=default_run_dir,
                   help="run directory (default: %(default)s)")
    p.add_argument("--steps", type=int, help="override train.steps")
    p.add_argument("--budget", metavar="DURATION",
                   help="train for this much training time instead of train.steps, e.g. 10m "
                   "or 2h (train.budget)")
    p.add_argument("--batch-size", type=int, help="override train.batch_size")
    p.add_argument("--learning-rate", type=float, help="override train.learning_rate")
    p.add_argument("--sequence-length", type=int, help="override model.sequence_length")
    p.add_argument("--set", nargs="+", default=[], metavar="SECTION.FIELD=VALUE",
                   help="override any recipe field, e.g. --set train.warmup_fraction=0.05")
    p.add_argument("--deterministic", action="store_true",
                   help="seeded, deterministic ops: a killed and resumed run ends with the "
                   "weights of an uninterrupted one (sets train.deterministic)")
    p.add_argument("--resume", action="store_true", help="continue the run in --run-dir")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --run-dir")
    p.add_argument("--quiet", action="store_true", help="print only errors and the summary")


def _add_backend_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("backend and multi-process training (see README, Scaling out)")
    g.add_argument("--backend", choices=("tensorflow", "jax"), default=None,
                   help="keras backend (default: $KERAS_BACKEND, else tensorflow; jax for a "
                   "multi-process run)")
    g.add_argument("--distributed", action="store_true",
                   help="join a multi-process JAX run; without the three options below JAX "
                   "detects them from the launcher (Slurm, Open MPI, Cloud TPU VM)")
    g.add_argument("--coordinator", metavar="HOST:PORT",
                   help="address of process 0's coordinator service (implies --distributed)")
    g.add_argument("--num-processes", type=int, metavar="N", help="processes in the run")
    g.add_argument("--process-id", type=int, metavar="I", help="this process, 0 to N-1")
    g.add_argument("--init-timeout", type=int, default=300, metavar="SECONDS",
                   help="wait this long for every process to join (default: %(default)s)")
    g.add_argument("--heartbeat-timeout", type=int, default=100, metavar="SECONDS",
                   help="declare a silent process dead and stop the others after this long "
                   "(default: %(default)s)")
