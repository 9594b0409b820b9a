"""Combining models' outputs into an ensemble and scoring it (accuracy, NLL, calibration error). Pure torch.

Input: per-model log-probabilities log_probs[N, S, C] (log-softmax of each model's logits) and labels[S].
Combine rules (`COMBINE_RULES`):

- `mean_softmax` (default): p = mean_m softmax(z_m); the prediction is argmax p.
- `mean_logits`: p = softmax(mean_m z_m). Since log_softmax(z_m) = z_m - logsumexp(z_m) differs from z_m by a
  per-sample constant, the mean of the log-probabilities gives exactly the same p as the mean of the logits.
- `vote`: each member votes for its argmax; most votes wins; a tie goes to the tied class with the highest mean
  probability (the mean_softmax p). A vote has no probabilities, so its NLL and calibration error are NaN.

NLL = mean over images of -log p[label]; calibration error = torchmetrics' top-label expected calibration error
(L1, `n_bins` equal-width bins) of the confidence max_c p and the correctness of argmax_c p.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
from torchmetrics.functional.classification import binary_calibration_error

from satlab.utils import SatlabError

COMBINE_RULES = ("mean_softmax", "mean_logits", "vote")
TINY = 1e-12  # floor of p[label] inside the NLL's log


def check_rule(rule: str) -> str:
    """`rule` if it is a known combine rule, else SatlabError."""
    if rule not in COMBINE_RULES:
        raise SatlabError(f"ensemble.combine={rule} is unknown; choose one of {', '.join(COMBINE_RULES)}")
    return rule


@dataclass
class Score:
    """One ensemble (or model) on S images: per-image correctness and its summary metrics."""

    correct: torch.Tensor  # [S] bool
    accuracy: float
    nll: float
    ece: float


class Scorer:
    """Scores teams of the N models from their float16 log-probabilities, without a full [S, C] pass per team.

    The sum of the members' scores (probabilities, or log-probabilities for mean_logits) is computed exactly only
    on candidate classes: each member's `top` best classes. A class outside every member's top set sums to at
    most the sum of the members' `top`-th best scores; where the best candidate beats that bound strictly, it is
    the exact argmax, and the (rare) other images are recomputed over all classes. A vote's winner is always one
    of the members' predictions. Only mean_logits needs all classes (its logsumexp, for NLL and confidence).
    """

    def __init__(self, log_probs: torch.Tensor, labels: Sequence[int] | np.ndarray | torch.Tensor,
                 rule: str = "mean_softmax", n_bins: int = 15, top: int = 5) -> None:
        self.rule = check_rule(rule)
        self.n_bins = int(n_bins)
        self.labels = torch.as_tensor(np.asarray(labels), dtype=torch.long)
        self.log_probs = log_probs  # [N, S, C], any float dtype; kept as given (float16 from the cache)
        n, s, c = log_probs.shape
        if s != len(self.labels):
            raise ValueError(f"log_probs has {s} images but there are {len(self.labels)} labels")
        self.top = max(1, min(int(top), c))
        scores, classes = [], []
        for m in range(n):  # one model at a time: no full-size float32 copy of all models
            values, best = torch.topk(log_probs[m].float(), self.top, dim=1)
            scores.append(self._space(values))
            classes.append(best)
        self.top_scores = torch.stack(scores)  # [N, S, top]: each model's best scores, best first
        self.top_classes = torch.stack(classes)  # [N, S, top]: and their classes
        self.bound = self.top_scores[:, :, -1]  # [N, S]: each model's top-th best score
        self.preds = self.top_classes[:, :, 0]  # [N, S]
        self.correct = self.preds == self.labels  # [N, S] bool
        self.accuracy = self.correct.float().mean(dim=1).numpy().astype(float)  # [N]

    @property
    def n_models(self) -> int:
        return int(self.log_probs.shape[0])

    def _space(self, log_probs: torch.Tensor) -> torch.Tensor:
        """Log-probabilities -> the scores the rule adds up (probabilities, or themselves for mean_logits)."""
        return log_probs.float() if self.rule == "mean_logits" else log_probs.float().exp()

    def _sum_at(self, members: Sequence[int], classes: torch.Tensor, rows: torch.Tensor | None = None) -> torch.Tensor:
        """Sum over members of their scores at classes [R, J] (images `rows`, default all) -> [R, J]."""
        total = torch.zeros(classes.shape, dtype=torch.float32)
        for m in members:
            source = self.log_probs[m] if rows is None else self.log_probs[m][rows]
            total += self._space(source.gather(1, classes))
        return total

    def _argmax(self, members: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """Exact (max, argmax) over classes of the members' summed scores, per image -> [S] each."""
        parts = []
        for j in members:  # candidates: member j's top classes; j's own scores there are already known
            others = [m for m in members if m != j]
            total = self.top_scores[j] + (self._sum_at(others, self.top_classes[j]) if others else 0.0)
            parts.append(total)
        classes = self.top_classes[members].permute(1, 0, 2).reshape(len(self.labels), -1)
        best, where = torch.cat(parts, dim=1).max(dim=1)
        pred = classes.gather(1, where[:, None]).squeeze(1)
        if self.top < self.log_probs.shape[2]:
            unsure = (best <= self.bound[members].sum(dim=0)).nonzero().squeeze(1)
            if unsure.numel():  # a class outside every top set could win: all classes for these images
                every = torch.arange(self.log_probs.shape[2]).expand(len(unsure), -1)
                best[unsure], pred[unsure] = self._sum_at(members, every, unsure).max(dim=1)
        return best, pred

    def score(self, members: Sequence[int]) -> Score:
        """Accuracy, NLL and calibration error of the ensemble of `members` (model indices) under the rule."""
        return self.score_teams([members])[0]

    def score_teams(self, teams: Sequence[Sequence[int]]) -> list[Score]:
        """`score` for each of many teams."""
        if any(len(team) == 0 for team in teams):
            raise ValueError("an ensemble needs at least one member")
        return [self._score_one([int(m) for m in team]) for team in teams]

    def _score_one(self, members: list[int]) -> Score:
        k, y = len(members), self.labels
        conf = nll = None
        if self.rule == "vote":
            classes = self.preds[members].T  # [S, k]: every member's vote
            votes = (classes[:, :, None] == classes[:, None, :]).sum(dim=2).float()
            mean_p = self._sum_at(members, classes) / k
            pred = classes.gather(1, (votes + 0.5 * mean_p).argmax(dim=1, keepdim=True)).squeeze(1)  # 0.5 p < 1
        else:
            best, pred = self._argmax(members)
            at_label = self._sum_at(members, y[:, None]).squeeze(1) / k
            if self.rule == "mean_softmax":
                conf = best / k
                nll = -torch.log(at_label.clamp_min(TINY)).mean()
            else:
                lse = torch.logsumexp(sum(self.log_probs[m].float() for m in members) / k, dim=1)
                conf = torch.exp(best / k - lse)
                nll = (lse - at_label).mean()
        correct = pred == y
        accuracy = float(correct.float().mean()) if len(y) else float("nan")
        if conf is None or not len(y):
            return Score(correct, accuracy, float("nan"), float("nan"))
        ece = binary_calibration_error(conf.clamp(0.0, 1.0), correct.long(), n_bins=self.n_bins, norm="l1",
                                       validate_args=False)
        return Score(correct, accuracy, float(nll), float(ece))
