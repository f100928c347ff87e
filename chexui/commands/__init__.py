"""The `chexui` commands, one module per group; `chexui.cli` assembles them into the app.

Each command is thin: it parses its options, calls one public function of chexui or the engine, and
prints. A `UserError` raised anywhere below a command is turned into a one-line error and exit 2 by
`chexui.cli.Commands` (the one error handler); shared options live in `common`. Heavy modules (torch,
pandas, textual) are imported inside the commands so `chexui --help` stays fast.
"""
