"""Anomaly scoring of a query image against its defect-free reference rendering, and the PAD benchmark metrics.

``backbone`` loads the frozen ImageNet CNN (offline EfficientNet-Lite0 by default), ``anomaly_map`` turns a
query/reference pair into an anomaly map and an image score, and ``metrics`` computes the dataset-level
AUROC / AUPRO / F1-max numbers of one class. Submodules are imported explicitly (``from
pad_nerfstudio.anomaly.metrics import pixel_aupro``) so that importing this package stays free of torch and timm.
"""
