"""Quality metrics of a quantized model's logits, against labels and against the FP32 reference logits.

Definitions (``METRICS_VERSION`` 2: version 1's classification metrics unchanged, plus the segmentation and
tensor metrics at the end of this docstring), all computed in float64.

Classification (logits N×C):

- ``top1`` / ``top5``: fraction of samples whose label is among the k highest logits. Ties resolve to the lower
  class index (a stable descending sort), so top-1 is exactly ``argmax`` and top-k ⊇ top-1.
- ``top1_agreement``: fraction of samples where argmax(Q) == argmax(FP); ``1 − flip rate``.
- ``kl_fp``: mean over samples of KL(softmax(FP) ‖ softmax(Q)) in nats.
- ``logit_cosine``: mean over samples of the cosine similarity of the logit vectors (1 when a vector is zero in
  both, 0 when in one).
- ``sqnr_db``: 10·log10(Σ FP² / Σ (FP − Q)²) over all logits; +inf when Q equals FP exactly.
- ``max_abs_err``: max |FP − Q|.
- ``ece`` / ``mce``: expected / maximum calibration error over 15 equal-width bins of confidence = max softmax;
  bin b holds confidences in (b/15, (b+1)/15] (the first bin also holds 0). ECE = Σ_b (n_b/N)·|acc_b − conf_b|,
  MCE = max over non-empty bins.
- ``nll``: mean −log softmax(Q)[label].
- ``brier``: mean over samples of Σ_c (p_c − 1[c = label])² (multi-class Brier score, range [0, 2]).

Segmentation (per-pixel class logits N×C×H×W; masks N×H×W):

- confusion matrix M[t, p] = pixels with true class t predicted as p, over all pixels of all samples (pixels
  whose label equals ``ignore_index`` are left out).
- ``iou_c`` = M[c,c] / (Σ_p M[c,p] + Σ_t M[t,c] − M[c,c]); a class absent from both truth and prediction has no
  IoU (excluded), a class present in one only has IoU 0. ``miou`` = mean over classes that have an IoU.
- ``pixel_accuracy`` = trace(M) / ΣM.
- against the FP32 model's own masks (argmax over C; no labels needed): ``miou_fp`` (the FP mask as the truth)
  and ``mask_agreement`` (fraction of pixels whose argmax equals the FP argmax).
- ``pixel_ece``: ECE (15 bins, as above) over a fixed, seeded sample of at most 65,536 pixels per batch.

Tensor outputs (embeddings, features, probability masks, detector heads), each against the FP32 output:

- ``sqnr_db`` and ``max_abs_err`` as above, over every element.
- ``cosine``: mean over samples of the cosine similarity of the flattened per-sample tensors.
- ``rel_l2``: mean over samples of ‖Q − FP‖₂ / ‖FP‖₂ (0 when both are zero, inf when only FP is).
- ``retrieval_agreement@k`` (embeddings N×D, opt-in): for each sample, the k nearest other samples by cosine
  similarity under Q and under FP; the mean fraction of the FP neighbours that Q also returns.
"""

from __future__ import annotations

import numpy as np

METRICS_VERSION = 2
ECE_BINS = 15


def log_softmax(logits: np.ndarray) -> np.ndarray:
    z = np.asarray(logits, dtype=np.float64)
    z = z - z.max(axis=1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


def softmax(logits: np.ndarray) -> np.ndarray:
    return np.exp(log_softmax(logits))


def topk_accuracy(logits: np.ndarray, labels: np.ndarray, k: int) -> float:
    """Fraction of samples whose label is among the top ``k`` logits (ties → lower index ranks first)."""
    logits = np.asarray(logits)
    k = min(k, logits.shape[1])
    order = np.argsort(-logits, axis=1, kind="stable")[:, :k]
    return float(np.mean(np.any(order == np.asarray(labels)[:, None], axis=1)))


def top1_agreement(logits: np.ndarray, ref_logits: np.ndarray) -> float:
    return float(np.mean(np.argmax(logits, axis=1) == np.argmax(ref_logits, axis=1)))


def kl_divergence(ref_logits: np.ndarray, logits: np.ndarray) -> float:
    """Mean KL(softmax(ref) ‖ softmax(logits)) in nats."""
    lp, lq = log_softmax(ref_logits), log_softmax(logits)
    return float(np.mean(np.sum(np.exp(lp) * (lp - lq), axis=1)))


def logit_cosine(logits: np.ndarray, ref_logits: np.ndarray) -> float:
    a = np.asarray(logits, dtype=np.float64)
    b = np.asarray(ref_logits, dtype=np.float64)
    na, nb = np.linalg.norm(a, axis=1), np.linalg.norm(b, axis=1)
    both_zero = (na == 0) & (nb == 0)
    denom = np.where(na * nb == 0, 1.0, na * nb)
    cos = np.where(na * nb == 0, 0.0, np.sum(a * b, axis=1) / denom)
    return float(np.mean(np.where(both_zero, 1.0, cos)))


def sqnr_db(logits: np.ndarray, ref_logits: np.ndarray) -> float:
    ref = np.asarray(ref_logits, dtype=np.float64)
    noise = float(np.sum((ref - np.asarray(logits, dtype=np.float64)) ** 2))
    signal = float(np.sum(ref**2))
    if noise == 0.0:
        return float("inf")
    if signal == 0.0:
        return float("-inf")
    return 10.0 * np.log10(signal / noise)


def max_abs_error(logits: np.ndarray, ref_logits: np.ndarray) -> float:
    return float(np.max(np.abs(np.asarray(logits, np.float64) - np.asarray(ref_logits, np.float64))))


def calibration_bins(probs: np.ndarray, labels: np.ndarray, n_bins: int = ECE_BINS) -> dict[str, np.ndarray]:
    """Per-bin count, mean confidence and accuracy (the data of a reliability diagram)."""
    conf = probs.max(axis=1)
    correct = (np.argmax(probs, axis=1) == labels).astype(np.float64)
    idx = np.clip(np.ceil(conf * n_bins).astype(int) - 1, 0, n_bins - 1)
    count = np.bincount(idx, minlength=n_bins).astype(np.float64)
    conf_sum = np.bincount(idx, weights=conf, minlength=n_bins)
    acc_sum = np.bincount(idx, weights=correct, minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        return {
            "count": count,
            "confidence": np.where(count > 0, conf_sum / count, np.nan),
            "accuracy": np.where(count > 0, acc_sum / count, np.nan),
        }


def ece_mce(probs: np.ndarray, labels: np.ndarray, n_bins: int = ECE_BINS) -> tuple[float, float]:
    bins = calibration_bins(probs, labels, n_bins)
    nonempty = bins["count"] > 0
    gaps = np.abs(bins["accuracy"][nonempty] - bins["confidence"][nonempty])
    weights = bins["count"][nonempty] / bins["count"].sum()
    return float(np.sum(weights * gaps)), float(gaps.max())


def nll(logits: np.ndarray, labels: np.ndarray) -> float:
    lp = log_softmax(logits)
    return float(-np.mean(lp[np.arange(len(labels)), labels]))


def brier(probs: np.ndarray, labels: np.ndarray) -> float:
    onehot = np.zeros_like(probs)
    onehot[np.arange(len(labels)), labels] = 1.0
    return float(np.mean(np.sum((probs - onehot) ** 2, axis=1)))


def quality(logits: np.ndarray, ref_logits: np.ndarray | None, labels: np.ndarray | None) -> dict[str, float]:
    """Every metric that the available references allow; absent ones are NaN (never a made-up number)."""
    logits = np.asarray(logits)
    if logits.ndim != 2:
        raise ValueError(f"expected logits of shape (samples, classes), got {logits.shape}")
    nan = float("nan")
    out = dict.fromkeys(
        (
            "top1",
            "top5",
            "ece",
            "mce",
            "nll",
            "brier",
            "top1_agreement",
            "kl_fp",
            "logit_cosine",
            "sqnr_db",
            "max_abs_err",
        ),
        nan,
    )
    if labels is not None:
        labels = np.asarray(labels).astype(np.int64)
        if labels.shape != (len(logits),):
            raise ValueError(f"labels shape {labels.shape} does not match {len(logits)} samples")
        if labels.min() < 0 or labels.max() >= logits.shape[1]:
            raise ValueError(f"labels must lie in [0, {logits.shape[1] - 1}] for {logits.shape[1]} classes")
        probs = softmax(logits)
        out["top1"] = topk_accuracy(logits, labels, 1)
        out["top5"] = topk_accuracy(logits, labels, 5)
        out["ece"], out["mce"] = ece_mce(probs, labels)
        out["nll"] = nll(logits, labels)
        out["brier"] = brier(probs, labels)
    if ref_logits is not None:
        ref_logits = np.asarray(ref_logits)
        if ref_logits.shape != logits.shape:
            raise ValueError(f"reference logits {ref_logits.shape} and logits {logits.shape} differ in shape")
        out["top1_agreement"] = top1_agreement(logits, ref_logits)
        out["kl_fp"] = kl_divergence(ref_logits, logits)
        out["logit_cosine"] = logit_cosine(logits, ref_logits)
        out["sqnr_db"] = sqnr_db(logits, ref_logits)
        out["max_abs_err"] = max_abs_error(logits, ref_logits)
    return out


# ---------------------------------------------------------------------------------------------------------
# Segmentation
# ---------------------------------------------------------------------------------------------------------
def confusion_matrix(
    pred: np.ndarray, truth: np.ndarray, num_classes: int, ignore_index: int | None = None
) -> np.ndarray:
    """C×C pixel counts, rows = truth, columns = prediction; labels outside [0, C) other than ``ignore_index``
    raise (a mask from another label set would silently score as wrong pixels)."""
    p = np.asarray(pred).reshape(-1).astype(np.int64)
    t = np.asarray(truth).reshape(-1).astype(np.int64)
    if p.shape != t.shape:
        raise ValueError(f"prediction ({p.size} pixels) and mask ({t.size} pixels) differ in size")
    if ignore_index is not None:
        keep = t != ignore_index
        p, t = p[keep], t[keep]
    if t.size and (t.min() < 0 or t.max() >= num_classes):
        raise ValueError(
            f"mask labels must lie in [0, {num_classes - 1}] (or be ignore_index), got {t.min()}..{t.max()}"
        )
    return np.bincount(t * num_classes + p, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def iou_per_class(cm: np.ndarray) -> np.ndarray:
    """IoU per class from a confusion matrix; NaN for a class absent from both truth and prediction."""
    cm = np.asarray(cm, dtype=np.float64)
    tp = np.diag(cm)
    union = cm.sum(axis=0) + cm.sum(axis=1) - tp
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(union > 0, tp / np.where(union > 0, union, 1.0), np.nan)


def mean_iou(cm: np.ndarray) -> float:
    iou = iou_per_class(cm)
    return float(np.nanmean(iou)) if np.any(~np.isnan(iou)) else float("nan")


def pixel_accuracy(cm: np.ndarray) -> float:
    total = float(np.sum(cm))
    return float(np.trace(cm)) / total if total else float("nan")


def sample_pixels(logits: np.ndarray, max_pixels: int, seed: int) -> np.ndarray:
    """Indices into the flattened N·H·W pixels of ``logits`` (N×C×H×W): all of them, or a seeded sample."""
    n_pix = logits.shape[0] * int(np.prod(logits.shape[2:]))
    if n_pix <= max_pixels:
        return np.arange(n_pix)
    return np.sort(np.random.default_rng(seed).choice(n_pix, max_pixels, replace=False))


def pixels_as_rows(logits: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """Per-pixel class-logit rows (P×C) at flattened pixel indices ``idx``."""
    c = logits.shape[1]
    return np.moveaxis(np.asarray(logits), 1, -1).reshape(-1, c)[idx]


# ---------------------------------------------------------------------------------------------------------
# Tensors
# ---------------------------------------------------------------------------------------------------------
def per_sample_cosine(q: np.ndarray, ref: np.ndarray) -> np.ndarray:
    """Cosine similarity of each sample's flattened tensor (1 when both are zero, 0 when one is)."""
    a = np.asarray(q, dtype=np.float64).reshape(len(q), -1)
    b = np.asarray(ref, dtype=np.float64).reshape(len(ref), -1)
    na, nb = np.linalg.norm(a, axis=1), np.linalg.norm(b, axis=1)
    cos = np.sum(a * b, axis=1) / np.where(na * nb == 0, 1.0, na * nb)
    return np.where((na == 0) & (nb == 0), 1.0, np.where(na * nb == 0, 0.0, cos))


def per_sample_rel_l2(q: np.ndarray, ref: np.ndarray) -> np.ndarray:
    a = np.asarray(q, dtype=np.float64).reshape(len(q), -1)
    b = np.asarray(ref, dtype=np.float64).reshape(len(ref), -1)
    err, nb = np.linalg.norm(a - b, axis=1), np.linalg.norm(b, axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(nb > 0, err / np.where(nb > 0, nb, 1.0), np.where(err > 0, np.inf, 0.0))


def retrieval_agreement(q: np.ndarray, ref: np.ndarray, k: int) -> float:
    """Mean fraction of each sample's k FP nearest neighbours (cosine, self excluded) that Q also returns."""
    a = np.asarray(q, dtype=np.float64).reshape(len(q), -1)
    b = np.asarray(ref, dtype=np.float64).reshape(len(ref), -1)
    n = len(a)
    if n < 2:
        return float("nan")
    k = min(k, n - 1)

    def neighbours(x: np.ndarray) -> np.ndarray:
        x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-300)
        sim = x @ x.T
        np.fill_diagonal(sim, -np.inf)
        return np.argsort(-sim, axis=1, kind="stable")[:, :k]

    nq, nr = neighbours(a), neighbours(b)
    return float(np.mean([len(np.intersect1d(nq[i], nr[i])) / k for i in range(n)]))
