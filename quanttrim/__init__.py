"""Quant-Trim: train hardware-neutral checkpoints that survive whatever post-training quantization a backend applies.

Needs torch (``pip install 'qtbench[train]'``). The harness never imports this package.
"""
