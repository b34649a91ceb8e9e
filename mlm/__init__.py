"""mlm: masked language model pretraining on keras-hub."""
