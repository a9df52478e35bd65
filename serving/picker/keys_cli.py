"""``duplex keys hash``: the keys-file line of an API key read from stdin (the key never appears in argv,
shell history or the process list)."""

from __future__ import annotations

import sys

import typer

from .auth import key_line

app = typer.Typer(help="API keys of the front door (stored hashed).", no_args_is_help=True)


@app.command("hash")
def hash_key(
    name: str = typer.Option("", help="Key id shown in quota messages and logs (A-Z a-z 0-9 _ . @ -)"),
) -> None:
    """Read one key from stdin, print its ``NAME:sha256:HEX`` line for the front door's ``gateway.api_keys_file``."""
    key = sys.stdin.readline().rstrip("\r\n")
    try:
        typer.echo(key_line(key, name))
    except ValueError as e:
        typer.echo(f"duplex keys hash: {e}", err=True)
        raise typer.Exit(2) from None
