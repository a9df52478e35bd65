"""The ``duplex`` command line: one typer app, each component contributes its sub-commands."""

from __future__ import annotations

import typer

from duplex.loadtest import cli as loadtest_cli
from duplex.model import cli as model_cli
from duplex.model.corpus import cli as corpus_cli
from duplex.operator import cli as operator_cli
from duplex.serving import cli as serving_cli
from duplex.serving.agent import cli as agent_cli
from duplex.serving.picker import keys_cli

app = typer.Typer(name="duplex", help="Serve full-duplex conversation models.", no_args_is_help=True)
app.add_typer(model_cli.app, name="model")
app.add_typer(corpus_cli.app, name="corpus")
app.add_typer(keys_cli.app, name="keys")  # duplex keys hash
operator_cli.register(app)  # duplex crd, duplex operator
serving_cli.register(app)  # duplex engine, gateway, up, talk
agent_cli.register(app)  # duplex agent
loadtest_cli.register(app)  # duplex loadtest


def main() -> None:
    app()
