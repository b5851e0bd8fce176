"""deltalab.reports: sweep results and tuning studies turned into a self-contained HTML report and terminal
tables (``deltalab report``).

Modules: ``load`` (results folders/files -> one pandas table; studies; tuner exports), ``figures`` (one
plotly figure per function), ``tables`` (rich tables), ``html`` (the page), ``build`` (the command's
work), ``synthetic`` (the committed sample results under ``samples/``).
"""
