"""Pretraining: the contrastive objective and the loop that optimises it, single process or under torchrun.

``losses`` (InfoNCE between view pairs; the only place that gathers across ranks), ``optim`` (optimizer and
schedule), ``distributed`` (guarded collectives: single-process code just works), ``trainer`` (one optimizer
step: views, augment, mix, loss), ``pretrain`` (``avssl pretrain``: the loop, metrics, checkpoints, resume),
``validation`` (held-out losses and retrieval while training), ``retrieval`` (the audio <-> video
retrieval score, also used by ``avssl eval --retrieval``), ``flops`` (FLOPs of a training step).
"""
