"""Web consoles: the researcher's (studies, live curves, submission), the site's (approvals, ledger,
ingestion, audit log) and the auditor's view of logs, reconciliation and reports.

Starlette apps built by :func:`console.researcher.create_app` and :func:`console.site.create_app`; the
`fedcare` command wires them to a coordinator client or a node config. Everything the browser loads
(templates, uPlot, CSS, JS) ships in this package: nothing is fetched at run time.
"""
