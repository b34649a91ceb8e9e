"""Fine-tune an encoder preset as a keras-hub `TextClassifier`, and compare encoders.

- `config`: the fine-tuning recipe (`presets/finetune.json`) and its overrides;
- `data`: labelled `.csv`/`.jsonl`/`.parquet` files or hub tasks, label maps, hold-out;
- `classifier`: the keras-hub `TextClassifier` of a preset, pretrained or fresh;
- `train`: `finetune()`, the run directory, epochs, checkpoints, best epoch;
- `metrics`, `report`: accuracy, macro-F1, per-class table, confusion matrix;
- `compare`: several encoders, one recipe, several seeds, one table;
- `classify`: labels and probabilities of texts from a classifier preset.
"""
