"""``LocalLabelPropagation``: the propagation of ``python -m llp.propagate`` as a
scikit-learn estimator for data held in memory (also importable as
``llp.propagate.LocalLabelPropagation``).

    model = LocalLabelPropagation().fit(X, y)     # y: -1 = unlabeled; method="auto" chooses
    model.chosen_                 # what auto chose, and every candidate's cross-validated accuracy
    model.transduction_           # [N] a label for every training row (labeled rows keep theirs)
    model.label_distributions_    # [N, C] class shares, rows sum to 1 (labeled rows one-hot)
    model.predict(X_new), model.predict_proba(X_new)

Rows are L2-normalised (cosine similarity), as in the CLI. ``predict`` for new rows:
``llp``, ``knn`` and ``ratio`` let the new rows vote among the labeled training rows with
the fitted per-row bias (the local densities: eq. 5, exactly as an unlabeled training
row); ``diffusion`` takes one diffusion step into the new rows: each new row's shares are
the ``max(s, 0) ** gamma``-weighted mean of the fitted shares of its ``graph_k`` most
similar training rows (``llp.method.diffusion.extend``), without solving the graph again.
"""
from __future__ import annotations

import numpy as np
import torch
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted, validate_data

from . import diffusion
from .choice import choose
from .propagation import Comm, NonFiniteRow, Problem, Rows, Settings, check_settings, fit, stream_votes

_D = Settings()  # every parameter but ``device`` defaults as the tool's flag does


def _unlabeled(y: np.ndarray) -> np.ndarray:
    """-1 marks an unlabeled sample (as in ``sklearn.semi_supervised``); string labels have none."""
    if y.dtype.kind in "iuf":
        return y == -1
    return np.array([isinstance(v, (int, float, np.number)) and v == -1 for v in y], dtype=bool)


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("device='cuda': no CUDA device is available")
    if name not in ("cpu", "cuda"):
        raise ValueError(f"device must be 'auto', 'cpu' or 'cuda', got {name!r}")
    return torch.device(name)


class LocalLabelPropagation(ClassifierMixin, BaseEstimator):
    """Local Label Propagation (Zhuang et al., ICLR 2020, eq. 4-5) over fixed features,
    transductive like ``sklearn.semi_supervised.LabelSpreading``.

    Parameters
    ----------
    method : {"auto", "llp", "knn", "ratio", "diffusion"}
        ``auto``: the method and its settings with the best cross-validated accuracy on the
        labeled rows (``llp.method.choice``; it sets k, tau, graph_k, alpha and metric itself);
        ``llp``: density-weighted vote of the k best labeled rows (eq. 5); ``knn``: the
        same without density (NoDW); ``ratio``: the paper's ratio-based weighting, a
        constant factor that gives knn's votes (see ``llp.method.propagation``); ``diffusion``:
        DLP-style diffusion on a kNN graph.
    k : int, labeled neighbours that vote (llp, knn, ratio); at most the number of labeled samples.
    t : int, nearest unlabeled rows in a labeled row's local density (clamped to their number).
    tau : float, temperature of the similarities.
    backend : str, ``llp_kernels`` backend ("auto", "reference", "cpu", "triton", "cuda").
    device : {"auto", "cpu", "cuda"}
    chunk_rows : int, rows scored at a time (bounds the working memory).
    graph_k, gamma, alpha, cg_iters, cg_tol, metric : the diffusion graph's degree, edge
        exponent, diffusion weight, conjugate-gradient iterations per class and tolerance, and
        whether its neighbours are by cosine similarity or Euclidean distance.

    Each parameter but ``device`` defaults to the propagation tool's default
    (``llp.method.propagation.Settings``; k, t and tau: ``llp_kernels.defaults``).

    Attributes
    ----------
    classes_ : [C] the labels seen (y != -1), sorted.
    transduction_ : [N] label of every training sample.
    label_distributions_ : [N, C] class shares of every training sample (rows sum to 1).
    log_density_ : [M] float32 local log-density of each labeled sample (llp), else None.
    chosen_ : dict, with ``method="auto"``: the chosen candidate, its settings and every
        candidate's cross-validated accuracy; else None.
    labeled_indices_ : [M] positions of the labeled samples in X.
    n_features_in_ : int.
    """

    def __init__(self, method=_D.method, k=_D.k, t=_D.t, tau=_D.tau, backend=_D.backend, device="auto",
                 chunk_rows=_D.chunk_rows, graph_k=_D.graph_k, gamma=_D.gamma, alpha=_D.alpha,
                 cg_iters=_D.cg_iters, cg_tol=_D.cg_tol, metric=_D.metric):
        params = dict(locals())
        del params["self"]
        for name, value in params.items():  # each parameter kept as given (scikit-learn's rule)
            setattr(self, name, value)

    def _settings(self) -> Settings:
        s = Settings(**{name: getattr(self, name) for name in Settings.__dataclass_fields__})
        check_settings(s)
        return s

    def fit(self, X, y):
        """X [N, D] features, y [N] labels with -1 for the unlabeled samples."""
        X, y = validate_data(self, X, y, dtype=[np.float32, np.float64])
        check_classification_targets(y)
        s = self._settings()
        device = _device(self.device)
        unlabeled = _unlabeled(y)
        labeled_ids = np.flatnonzero(~unlabeled)
        if len(labeled_ids) == 0:
            raise ValueError("no labeled sample: every entry of y is -1")
        self.classes_ = np.unique(y[labeled_ids])
        if s.method not in ("diffusion", "auto") and s.k > len(labeled_ids):
            raise ValueError(f"k={s.k} neighbours cannot vote: only n_samples={len(labeled_ids)} "
                             f"labeled (lower k)")
        classes = np.full(len(y), -1, dtype=np.int64)
        classes[labeled_ids] = np.searchsorted(self.classes_, y[labeled_ids])
        problem = Problem(Rows(X, device), classes, labeled_ids, len(self.classes_))
        self.labeled_indices_ = labeled_ids
        self.chosen_, top = None, None
        try:
            if s.method == "auto":
                choice = choose(problem, s, Comm(None, problem.rows.device))
                s, top = choice.settings, choice.top_similarities
                self.chosen_ = choice.summary()
            self._fitted_settings = s
            if s.method == "diffusion":
                self._fit_diffusion(problem, s, classes, check=self.chosen_ is None)
            else:
                self._fit_vote(problem, s, top)
        except NonFiniteRow as exc:
            raise ValueError(f"X {exc}") from None
        self.transduction_ = self.classes_[self.label_distributions_.argmax(axis=1)]
        return self

    def _fit_vote(self, problem: Problem, s: Settings, top=None) -> None:
        comm = Comm(None, problem.rows.device)
        fitted = fit(problem, s, comm, top_similarities=top if s.method == "llp" else None)
        shares = np.zeros((problem.rows.n, problem.num_classes), dtype=np.float32)

        def keep(first, labels, conf, p):
            shares[first:first + len(labels)] = p

        stream_votes(problem, fitted, comm, keep, check=fitted.log_density is None and top is None, proba=True)
        self._fitted = fitted
        self.log_density_ = None if fitted.log_density is None else fitted.log_density.cpu().numpy()
        self.label_distributions_ = shares

    def _fit_diffusion(self, problem: Problem, s: Settings, classes: np.ndarray, check: bool = True) -> None:
        keys, f = diffusion.fit(problem, s, Comm(None, problem.rows.device), check=check)
        self._scale = problem.rows.scale
        shares, _, _, _ = diffusion.shares(f)
        labeled = problem.labeled_ids
        shares[labeled] = np.eye(problem.num_classes, dtype=np.float32)[classes[labeled]]
        self._keys = keys
        self.log_density_ = None
        self.label_distributions_ = shares

    def predict_proba(self, X):
        """Class shares [Q, C] of new rows (columns in ``classes_`` order)."""
        check_is_fitted(self)
        X = validate_data(self, X, dtype=[np.float32, np.float64], reset=False)
        s = self._fitted_settings
        rows = Rows(X, _device(self.device))
        out = np.empty((rows.n, len(self.classes_)), dtype=np.float32)
        try:
            for lo in range(0, rows.n, s.chunk_rows):
                hi = min(rows.n, lo + s.chunk_rows)
                queries = rows.read(lo, hi, check=True, raw=s.metric == "euclidean")
                if s.metric == "euclidean":
                    queries = (queries * self._scale).float()
                if s.method == "diffusion":
                    fitted = torch.from_numpy(self.label_distributions_).to(self._keys.device)
                    p = diffusion.extend(queries, self._keys, fitted, s)
                else:
                    p = self._fitted.proba(queries)
                out[lo:hi] = p.cpu().numpy()
        except NonFiniteRow as exc:
            raise ValueError(f"X {exc}") from None
        return out

    def predict(self, X):
        """Labels [Q] of new rows: the class with the largest share."""
        check_is_fitted(self)
        return self.classes_[self.predict_proba(X).argmax(axis=1)]
