"""Pretraining: the contrastive objective and the loop that optimises it, single process or under torchrun.

``losses`` (InfoNCE between view pairs; the only place that gathers across ranks), ``optim`` (optimizer and
schedule), ``distributed`` (guarded collectives: single-process code just works), ``trainer`` (one optimizer
step: views, augment, mix, loss), ``pretrain`` (``avssl pretrain``: the loop, metrics, checkpoints, resume),
``flops`` (FLOPs of a training step).
"""
