"""Labelled hub tasks by name (`--task glue/sst2`): their standard splits and columns.

Read through `datasets` when online; offline, the same one-line network
error as hub corpora and presets.
"""

import dataclasses

from mlm.errors import MlmError
from mlm.finetuning.data import Examples, check_validation_labels


@dataclasses.dataclass(frozen=True)
class HubTask:
    """Where a task's examples live on the hub and which columns hold them."""

    # `datasets.load_dataset` path and configuration name.
    path: str
    config: str
    # Column of the text, and of the second text of a pair (empty: single texts).
    text_column: str
    text_pair_column: str = ""
    # Split used for validation (the test splits of GLUE have no labels).
    validation_split: str = "validation"


# GLUE's classification tasks (https://gluebenchmark.com); STS-B is a
# regression task and is left out.
TASKS = {
    "glue/cola": HubTask("nyu-mll/glue", "cola", "sentence"),
    "glue/sst2": HubTask("nyu-mll/glue", "sst2", "sentence"),
    "glue/mrpc": HubTask("nyu-mll/glue", "mrpc", "sentence1", "sentence2"),
    "glue/qqp": HubTask("nyu-mll/glue", "qqp", "question1", "question2"),
    "glue/mnli": HubTask("nyu-mll/glue", "mnli", "premise", "hypothesis",
                         validation_split="validation_matched"),
    "glue/qnli": HubTask("nyu-mll/glue", "qnli", "question", "sentence"),
    "glue/rte": HubTask("nyu-mll/glue", "rte", "sentence1", "sentence2"),
    "glue/wnli": HubTask("nyu-mll/glue", "wnli", "sentence1", "sentence2"),
}


def load_hub_task(name: str) -> tuple[Examples, Examples, tuple[str, ...]]:
    """Training and validation examples of a named task, and its class names."""
    if name not in TASKS:
        raise MlmError(
            f"unknown task '{name}'; choose one of: {', '.join(TASKS)}, or pass labelled "
            f"files with --train and --validation."
        )
    from mlm.data.corpus import check_hub_reachable

    check_hub_reachable(name)  # one line, fast, when offline
    task = TASKS[name]
    train = _load_split(name, task, split="train")
    validation = _load_split(name, task, split=task.validation_split)
    names = tuple(train.features["label"].names)
    train_examples, validation_examples = (_examples(d, task, names=names)
                                           for d in (train, validation))
    check_validation_labels(validation_examples, names=names)
    return train_examples, validation_examples, names


def _load_split(name: str, task: HubTask, *, split: str):
    import datasets

    try:
        return datasets.load_dataset(task.path, task.config, split=split)
    except (OSError, ValueError) as e:  # no network, no such dataset, a bad split
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise MlmError(
            f"could not download dataset '{name}' (split '{split}'): {first}; check the "
            f"network, or pass labelled files with --train and --validation."
        ) from None


def _examples(dataset, task: HubTask, *, names: tuple[str, ...]) -> Examples:
    texts = tuple(str(t) for t in dataset[task.text_column])
    pairs = (tuple(str(t) for t in dataset[task.text_pair_column])
             if task.text_pair_column else None)
    labels = tuple(names[int(i)] for i in dataset["label"])
    return Examples(texts=texts, pairs=pairs, labels=labels)
