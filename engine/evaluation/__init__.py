"""Evaluation: predictions and per-class AUROC, and what a run ships (`evaluate`, `metrics`), the
patient bootstrap (CIs, paired differences, seed arms: `bootstrap`), operating points and calibration
(`operating`), and the per-image predictions kept in a run dir (`predictions`).
"""
