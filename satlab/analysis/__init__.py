"""Analyses of a SAT matrix, free of Hydra and wandb: `features` (pair features from architecture components),
`importance` (which components explain SAT), `clustering` (seed-free spectral clustering, eigengap, classical MDS),
`consistency` (Cohen's kappa of clean errors), `floors` (matrices without information, floored pairs), `plots`
(matplotlib figures) and `report` (summary stats, report.md). `satlab.tasks.analyze` wires them to the command line."""
