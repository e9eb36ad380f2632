"""What every `onnxopt` command shares: the exit-code mapping of errors, logging set-up,
and the options several commands take (provider, seed, -v/-q after the command name)."""

from __future__ import annotations

import logging
import os
import signal
import sys
import traceback

import click

from onnxopt.errors import OnnxoptError


class ExitCodeGroup(click.Group):
    """Maps errors to exit codes: 2 for user errors (one line), 1 for bugs (hint to use -v)."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except OnnxoptError as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(exc.exit_code)
        except (click.ClickException, click.exceptions.Exit, click.Abort, SystemExit):
            raise
        except BrokenPipeError:
            # The reader (e.g. `head`) is gone; silence the flush of stdout at exit.
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            sys.exit(0)
        except KeyboardInterrupt:
            click.echo("interrupted: no output written", err=True)
            sys.exit(130)
        except Exception as exc:
            if logging.getLogger().isEnabledFor(logging.DEBUG):
                traceback.print_exc()
            first = str(exc).splitlines()[0] if str(exc) else ""
            click.echo(
                f"internal error: {type(exc).__name__}: {first} (rerun with -v for the traceback)",
                err=True,
            )
            sys.exit(1)


def interrupt_on_sigterm() -> None:
    """Turn SIGTERM into KeyboardInterrupt so temporary files are cleaned up on the way out."""

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupt)


def setup_logging(verbose: int, quiet: bool) -> None:
    level = (
        logging.ERROR
        if quiet
        else (logging.DEBUG if verbose > 1 else logging.INFO if verbose else logging.WARNING)
    )
    logging.basicConfig(
        level=level, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr, force=True
    )


def provider_option(text: str):
    choices = click.Choice(["cpu", "cuda"])
    return click.option("--provider", type=choices, default="cpu", show_default=True, help=text)


def seed_option(text: str):
    return click.option("--seed", type=int, default=0, show_default=True, help=text)


def verbosity_options(command):
    """-v/-q on a command, after its name: the same meaning as before it (they add up)."""

    def more_verbose(ctx: click.Context, param: click.Parameter, value: int) -> None:
        if value:
            ctx.obj["verbose"] += value
            setup_logging(ctx.obj["verbose"], ctx.obj["quiet"])

    def quieter(ctx: click.Context, param: click.Parameter, value: bool) -> None:
        if value:
            ctx.obj["quiet"] = True
            setup_logging(ctx.obj["verbose"], ctx.obj["quiet"])

    command = click.option(
        "-v",
        "--verbose",
        count=True,
        expose_value=False,
        callback=more_verbose,
        help="More logging (-vv: debug, tracebacks); also before the command.",
    )(command)
    return click.option(
        "-q",
        "--quiet",
        is_flag=True,
        expose_value=False,
        callback=quieter,
        help="Only errors on stderr, no table; also before the command.",
    )(command)
