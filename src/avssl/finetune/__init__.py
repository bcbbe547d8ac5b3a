"""Fine-tuning: a checkpoint's audio tower and a head trained on labelled clips, and the classifier it makes.

``data`` (splits carved as the probe carves them, crops, decoding), ``finetuner`` (model, optimizer, one step),
``run`` (``avssl finetune``: epochs, early stopping, resume), ``resume`` (what defines a run),
``validation`` (model selection), ``classifier`` (inference: ``load_classifier``,
``predict``; imports no training code), ``classify`` (``avssl classify`` over collections).
"""
