"""Fine-tuning a delivered model on the few labeled samples of one site.

- ``split``: the stratified held-out split of multi-label samples;
- ``gate``: the pure promotion rule (macro-F1 margin, no label losing too much);
- ``methods``: linear probe, LoRA, last blocks, full; the default from sample count + hardware;
- ``augment``: drone-suited augmentations (flips, rotations, colour jitter, blur, scale);
- ``job``: one job end to end (load, split, train with checkpoints, evaluate, export);
- ``worker``: ``python -m models.finetune.worker JOB_DIR``, the process the daemon runs.

Imports nothing from ``daemon`` or ``provisioning``: a notebook can fine-tune with ``run_job``.
"""

from models.finetune.gate import Comparison, compare
from models.finetune.split import TooFewSamples, stratified_split

__all__ = ["Comparison", "TooFewSamples", "compare", "stratified_split"]
