"""Breast-ultrasound tumour classification pipeline: one module per DVC stage plus shared parts."""
