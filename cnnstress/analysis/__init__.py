"""Pure-numpy analysis of stored predictions (no torch, scipy, h5py or matplotlib).

The gather job reads arrays per run from ``results.h5`` and calls these functions; the report
draws what they return. Every function takes and returns numpy arrays, plain dicts or small frozen
dataclasses.

Modules:

- ``metrics``     softmax, accuracy, confusion matrices, per-class accuracy, high-confidence
                  failures, threshold counts, confidence histograms, per-class deltas.
- ``calibration`` ECE and reliability bins, NLL, Brier score, temperature scaling.
- ``compare``     baseline vs variant over seeds: disagreement, McNemar, t-intervals, paired
                  bootstrap, seed noise floor, persistent failures, a plain-words verdict.
- ``verdicts``    one comparison per metric: runs paired by seed, t-intervals, the noise floor,
                  Benjamini-Hochberg over a table, power (docs/statistics.md).
- ``failures``    canonical failure cases across seeds, ``failures.json`` records.
- ``gradcam``     bilinear upsampling, map normalisation, energy inside a mask, curve AUC.
- ``robustness``  corruption tables, classes that break first under corruption.
- ``shortcut``    background-shortcut accuracy (aligned vs conflicting images).
- ``ood``         out-of-distribution scores from logits (msp, max logit, energy), AUROC, AUPR,
                  FPR at 95% TPR, score histograms.
- ``selective``   abstaining on low confidence: risk-coverage curve, AURC, E-AURC, accuracy at a
                  coverage.
- ``sanity``      explanation sanity checks (cascading weight randomisation): per-map Spearman,
                  top-k overlap, the randomisation curve.
- ``adversarial`` accuracy against perturbation budget epsilon.

Nothing is imported here on purpose: ``import cnnstress.analysis.metrics`` loads only numpy.
"""

from __future__ import annotations
