"""mlm: masked language model pretraining on keras-hub.

The public API is imported lazily, so `import mlm` stays cheap:

```python
import mlm
recipe = mlm.load_recipe("bert_tiny_en_uncased")
summary = mlm.pretrain(recipe, run_dir="runs/demo")
```
"""

import importlib

_EXPORTS = {
    "load_recipe": "mlm.config",
    "apply_overrides": "mlm.config",
    "Recipe": "mlm.config",
    "MlmError": "mlm.errors",
    "pretrain": "mlm.pretraining",
    "continue_pretraining": "mlm.pretraining",
    "prepare": "mlm.preparing",
    "evaluate_preset": "mlm.evaluate",
    "fill_mask": "mlm.predict",
    "load_masked_lm": "mlm.preset_loading",
    "export_checkpoint": "mlm.run.export",
    "export_transformers": "mlm.run.hf_export",
    "train_vocabulary": "mlm.data.vocab",
    "write_report": "mlm.run.report",
    "build_report": "mlm.run.report",
    "finetune": "mlm.finetuning.train",
    "compare": "mlm.finetuning.compare",
    "classify": "mlm.finetuning.classify",
}


def __getattr__(name):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'mlm' has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + list(_EXPORTS))

