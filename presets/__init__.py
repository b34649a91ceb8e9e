"""Named recipes for `mlm pretrain --recipe NAME`."""
