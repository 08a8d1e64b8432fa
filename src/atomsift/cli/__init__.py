"""The `atomsift` command: one typer app, one module per subcommand group."""

from __future__ import annotations

import errno
import sys
import traceback
import warnings
from typing import NoReturn

import typer

from atomsift import __version__
from atomsift.errors import AtomsiftError

app = typer.Typer(
    name="atomsift",
    help="Choose pretraining data for interatomic potentials by chemical similarity, then train.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"atomsift {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    debug: bool = typer.Option(False, "--debug", help="Show Python tracebacks on errors."),
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version."),
) -> None:
    """atomsift: read atomistic datasets, measure their similarity, pretrain and finetune."""


_REGISTERED = False


def _flags_take_no_value() -> None:
    """typer 0.29 labels on/off flags `<bool>` in --help, as if `--overwrite <bool>` took a value: no label."""
    from typer.core import TyperOption

    labelled = TyperOption.display_type_rich

    def display_type_rich(self: TyperOption, ctx: typer.Context) -> str | None:
        return None if self.is_flag and self.metavar is None else labelled(self, ctx)

    TyperOption.display_type_rich = display_type_rich  # type: ignore[method-assign]


def _register() -> None:
    global _REGISTERED
    if _REGISTERED:
        return
    _REGISTERED = True
    _flags_take_no_value()
    from atomsift.cli import csi, data, demo, experiment, model, train

    app.add_typer(data.app, name="data")
    app.add_typer(model.app, name="model")
    app.command("csi")(csi.csi)
    app.command("select")(csi.select)
    app.command("demo")(demo.demo)
    app.command("pretrain")(train.pretrain)
    app.command("finetune")(train.finetune)
    app.command("evaluate")(train.evaluate)
    app.command("experiment")(experiment.experiment)


def _one_line_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """Warnings on the command line: one line, no source echo (--debug restores Python's format)."""
    typer.secho(f"warning: {message}", err=True, fg=typer.colors.YELLOW)


def _interrupted() -> None:
    """The one Ctrl-C line: what was kept and how to resume (set by the command with common.on_interrupt)."""
    from atomsift.cli.common import interrupt_hint

    # on a line of its own: a progress bar may have left the cursor mid-line
    typer.secho(f"\ninterrupted (Ctrl-C): {interrupt_hint()}.", err=True, fg=typer.colors.YELLOW)


def _fail(text: str, code: int) -> NoReturn:
    """The one 'error:' paragraph on stderr, then exit with `code` (2: bad input, 1: a bug)."""
    typer.secho(f"error: {text}", err=True, fg=typer.colors.RED)
    sys.exit(code)


_PATH_ERRNOS = {
    errno.EACCES,  # permission denied
    errno.EPERM,
    errno.ENOENT,  # no such file or folder
    errno.ENOTDIR,  # a file where a folder must be
    errno.EISDIR,
    errno.EEXIST,
    errno.EROFS,  # read-only file system
    errno.ENOSPC,  # no space left
    errno.EDQUOT,
    errno.ENAMETOOLONG,
}


def _path_problem(exc: OSError) -> bool:
    """Whether an OSError is about the path it names (bad input: exit 2) rather than a bug."""
    return exc.errno in _PATH_ERRNOS


def _unexpected(exc: BaseException, debug: bool) -> NoReturn:
    """A bug: Python's traceback with --debug, else one line asking for it (exit 1)."""
    if debug:
        raise exc
    _fail(
        f"unexpected {type(exc).__name__}: {exc}. Fix: re-run with --debug for the traceback and report it "
        "with the command that triggered it.",
        1,
    )


def main(argv: list[str] | None = None) -> None:
    """Entry point of the console script: exit code 0 done, 1 unexpected error, 2 user error, 130 Ctrl-C.

    User errors print as one paragraph; Ctrl-C prints one line saying what was kept (each command sets it with
    atomsift.cli.common.on_interrupt).
    """
    args = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args
    if debug:  # accepted anywhere on the line, handled by the root callback
        args = ["--debug"] + [a for a in args if a != "--debug"]
    _register()
    if not debug:
        warnings.showwarning = _one_line_warning
    try:
        code = app(args=args, prog_name="atomsift", standalone_mode=False)
    except SystemExit as exc:
        if exc.code == 130:  # typer turns Ctrl-C inside a command into exit code 130, silently
            _interrupted()
        raise
    except typer.TyperException as exc:  # click's usage errors: an unknown option, a bad or missing value
        if type(exc).__name__ == "NoArgsIsHelpError":  # `atomsift` or `atomsift data` alone: the help
            exc.show()  # type: ignore[attr-defined]
            sys.exit(getattr(exc, "exit_code", 2))
        context = getattr(exc, "ctx", None)
        command = context.command_path if context is not None else "atomsift"
        message = exc.format_message().rstrip(".")  # click ends some messages with a full stop, some not
        end = "" if message.endswith("?") else "."  # "Did you mean 'inspect'?"
        _fail(f"{message}{end} Fix: `{command} --help` lists its options.", getattr(exc, "exit_code", 2))
    except typer.Abort:
        _fail("aborted.", 1)
    except AtomsiftError as exc:
        if debug:  # the traceback, then the same exit code as without --debug (2: bad input, not a bug)
            traceback.print_exc()
        _fail(exc.message(), 2)
    except KeyboardInterrupt:
        _interrupted()
        sys.exit(130)
    except OSError as exc:
        if not exc.filename or not _path_problem(exc):  # not about a path the user gave: a bug
            _unexpected(exc, debug)
        if debug:  # the traceback, then the same exit code as without --debug (2: bad input, not a bug)
            traceback.print_exc()
        # a path that cannot be written or read (an --out under a read-only folder, a file where a folder must
        # be): bad input, named as such, not an internal error
        where = f"{exc.filename}" + (f" -> {exc.filename2}" if exc.filename2 else "")
        _fail(
            f"{exc.strerror or type(exc).__name__}: {where}. Fix: check the path (a folder where one is needed, no "
            "file in its way), that you may write there and that its disk has room.",
            2,
        )
    except Exception as exc:  # noqa: BLE001  (a bug: one line, or the traceback with --debug)
        _unexpected(exc, debug)
    if code == 130:  # Ctrl-C inside a command (typer's Exit(130))
        _interrupted()
    if isinstance(code, int) and code:
        sys.exit(code)
