"""Distillation's engine: a trainable torch view of an ONNX graph (`graph_module`, run through
the handler table in `handlers`), what trains in it (`trainables`), and the training loop that
writes what it learned back into the graph (`run`). The only package that imports torch."""
