"""`atomsift experiment`: the paper's grid (upstream candidates x budgets x downstream tasks x seeds) end to end.

CSI of every candidate to every downstream task, one pretraining per candidate, budget and seed, finetuning
on each downstream task (and from scratch), then results.csv / summary.json / report.md that say where the
CSI ranking predicted the finetuning ranking and where it did not (docs/experiment.md).
"""
