"""The build side of moerm-lite (torch): data -> model -> train -> evaluate -> graphs -> release.

Each layer is a subpackage that imports only from the layers before it (``tests/test_layers.py``):

- ``data``: comparison records from ../shared/data, the contrast pairs, degradation families, simulated
  attribute and taste users (``moerm_build.data`` itself holds the sources and their licences);
- ``model``: the MoE reward head and the backbone in torch;
- ``train``: embeddings and their cache, training, the read-outs fitted after it, backbone fine-tuning;
- ``evaluate``: featurizers, metrics, the real-text suite, bad replies and reward hacking, parity, the
  report a model card is written from;
- ``graphs``: ONNX export of the backbone and the head, quantization;
- ``release``: the model folder, its card, your own data on top of a model.

``python -m moerm_build --help`` lists the commands; the runtime (``moerm_lite``) never imports this.
"""
