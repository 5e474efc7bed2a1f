"""The paper's ablation tables (docs/paper.md Table 2a-2g, and 3) run as Ray Tune trials of fit(), one MLflow
parent run per table and a child per row and seed, and the table rebuilt from MLflow alone.

    tables.py   the tables as data; rows placed on the base preset's layout
    stats.py    mean ± 95% t-interval over seeds
    runs.py     the parent run, its spec, its children (through nlray.tracking)
    report.py   the table from MLflow: markdown, CSV, chart
    runner.py   plan -> parent run -> Tune trials (finished ones skipped) -> report

Entry points: jobs/ablate.py, jobs/report.py.
"""
