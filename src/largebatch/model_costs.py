"""Per-image costs of the built-in models, without importing torch (for ``largebatch plan``).

TEMPORARY copy on the ``plan`` branch: the models branch writes the real table from its cost
counter, and the lead takes that version at merge. Shape: name -> {"macs", "params",
"input_size", "in_channels"}; MACs are multiply-accumulates of convolutions and linear layers
for one image at ``input_size`` (forward pass only).
"""

from __future__ import annotations

MODEL_COSTS: dict[str, dict[str, int]] = {
    "resnet18": {"macs": 1_814_073_344, "params": 11_689_512, "input_size": 224, "in_channels": 3},
    "resnet34": {"macs": 3_663_761_920, "params": 21_797_672, "input_size": 224, "in_channels": 3},
    "resnet50": {"macs": 4_089_184_256, "params": 25_557_032, "input_size": 224, "in_channels": 3},
    # PROVISIONAL: counted on an AlexNet with the single-tower widths (64, 192, 384, 256, 256),
    # BatchNorm after every conv and hidden linear layer; the models branch's AlexNet-BN replaces it.
    "alexnet_bn": {"macs": 714_188_480, "params": 61_118_376, "input_size": 224, "in_channels": 3},
    # Counted with forward hooks on the fast_resnet of largebatch.models (10 classes, 1x28x28).
    "fast_resnet": {"macs": 9_145_216, "params": 116_602, "input_size": 28, "in_channels": 1},
}
