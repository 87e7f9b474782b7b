"""Quality metrics of a quantized model's logits, against labels and against the FP32 reference logits.

Definitions (``METRICS_VERSION`` 1), all computed in float64:

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
"""

from __future__ import annotations

import numpy as np

METRICS_VERSION = 1
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
