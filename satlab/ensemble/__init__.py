"""Ensembles from cached probabilities: which models to combine, and does SAT predict the gain?

`predict` (one Lightning prediction pass per model, cached), `combine` (combine rules and the scorer), `pairs`,
`teams` (selection strategies), `stats` (correlations with bootstrap CIs and permutation p-values), `plots`,
`report`. No Hydra, no wandb here.
"""
