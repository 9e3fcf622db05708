"""The `rfdeploy` command line. It only parses options and delegates to the library."""

from __future__ import annotations

import sys

import click

from rfdeploy import __version__
from rfdeploy.errors import RfdeployError


class _Group(click.Group):
    """Turns library errors into one clear line on stderr and the documented exit code."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except RfdeployError as e:
            click.secho(f"error: {e}", fg="red", err=True)
            sys.exit(e.exit_code)
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            sys.exit(130)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="rfdeploy")
def main():
    """Deploy RefineFace face detection with the CRFace confidence ranker.

    Flow: checkpoint -> export (ONNX) -> calibrate / build-engine (TensorRT) -> infer.
    """


@main.command()
def version():
    """Print rfdeploy's version and the versions of the backends it can use."""
    from rfdeploy.env import backend_versions

    click.echo(f"rfdeploy {__version__}")
    for name, ver in backend_versions().items():
        click.echo(f"  {name:<14} {ver or 'not installed'}")


if __name__ == "__main__":
    main()
