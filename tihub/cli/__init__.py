"""The `tihub` command line: a thin layer over the library.

Commands are loaded lazily from their modules (see COMMANDS), so `tihub inspect` never imports
the catalogue, the network stack or torch unless it needs them.
"""

from __future__ import annotations

import errno
import importlib
import os
import sys

import click

from tihub import __version__
from tihub.errors import TihubError

# command name -> "module:attribute"; each module holds the commands of one concern.
COMMANDS: dict[str, str] = {
    "inspect": "tihub.cli.inspect:inspect_cmd",
    "hash": "tihub.cli.hash:hash_cmd",
    "convert": "tihub.cli.convert:convert_cmd",
    "sources": "tihub.cli.catalog:sources_cmd",
    "sync": "tihub.cli.catalog:sync_cmd",
    "search": "tihub.cli.catalog:search_cmd",
    "show": "tihub.cli.catalog:show_cmd",
    "fetch": "tihub.cli.collection:fetch_cmd",
    "import": "tihub.cli.collection:import_cmd",
    "list": "tihub.cli.collection:list_cmd",
    "remove": "tihub.cli.collection:remove_cmd",
    "export": "tihub.cli.collection:export_cmd",
    "compat": "tihub.cli.collection:compat_cmd",
    "similar": "tihub.cli.knowledge:similar_cmd",
    "dupes": "tihub.cli.knowledge:dupes_cmd",
    "explain": "tihub.cli.knowledge:explain_cmd",
    "outdated": "tihub.cli.knowledge:outdated_cmd",
    "prompt": "tihub.cli.engine:prompt_cmd",
    "generate": "tihub.cli.engine:generate_cmd",
    "png-info": "tihub.cli.engine:png_info_cmd",
    "grid": "tihub.cli.engine:grid_cmd",
    "verify": "tihub.cli.engine:verify_cmd",
    "train": "tihub.cli.train:train_cmd",
    "farm": "tihub.cli.farm:farm_cmd",
    "demo": "tihub.cli.demo:demo_cmd",
    "db": "tihub.cli.db:db_cmd",
    "serve": "tihub.cli.serve:serve_cmd",
}


class LazyGroup(click.Group):
    """A group whose commands are imported only when used (or listed in --help)."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(COMMANDS)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        target = COMMANDS.get(name)
        if target is None:
            return None
        module_name, attr = target.split(":")
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name == module_name:
                return None  # command not built yet
            raise
        return getattr(module, attr, None)

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        # Remember --json before click parses: a failure then answers in JSON too.
        ctx.meta["tihub.json"] = "--json" in args
        return super().parse_args(ctx, args)

    def invoke(self, ctx: click.Context):  # type: ignore[no-untyped-def]
        as_json = bool(ctx.meta.get("tihub.json"))
        try:
            return super().invoke(ctx)
        except TihubError as exc:
            _command_failed(ctx, str(exc), as_json, 1)
        except KeyboardInterrupt:
            click.echo("Interrupted.", err=True)
            ctx.exit(130)
        except click.ClickException as exc:
            if as_json:  # usage errors still print their usage on stderr (exit 2)
                _json_failure(exc.format_message())
            raise
        except (click.exceptions.Exit, click.Abort, SystemExit):
            raise
        except OSError as exc:
            if exc.errno == errno.EPIPE:
                raise  # click's main() exits quietly on a closed pipe (`tihub search x | head -1`)
            _command_failed(ctx, f"{exc.strerror or exc}{': ' + str(exc.filename) if exc.filename else ''}; check the path and its permissions.", as_json, 1)
        except Exception as exc:  # pragma: no cover - last resort, still one line
            if os.environ.get("TIHUB_DEBUG"):
                raise
            _command_failed(ctx, f"internal error {type(exc).__name__}: {exc} (set TIHUB_DEBUG=1 for details).", as_json, 2)


def _json_failure(message: str) -> None:
    import json

    click.echo(json.dumps({"ok": False, "error": " ".join(message.split())}, ensure_ascii=False))


def _command_failed(ctx: click.Context, message: str, as_json: bool, code: int) -> None:
    """A whole-command failure: one sentence on stderr, and the JSON failure object with --json."""
    from tihub.tables import safe_text

    click.echo(f"Error: {safe_text(message)}", err=True)
    if as_json:
        _json_failure(message)
    ctx.exit(code)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option("--home", type=click.Path(file_okay=False), envvar="TIHUB_HOME", help="Workspace folder (default: $TIHUB_HOME, else the current folder).")
@click.option("--db", "db_url", metavar="URL", envvar="TIHUB_DB", help="Catalogue database URL (default: sqlite:///WORKSPACE/catalog.db).")
@click.option("-v", "--verbose", is_flag=True, help="Show third-party libraries' notes and warnings too.")
@click.version_option(__version__, prog_name="tihub")
@click.pass_context
def cli(ctx: click.Context, home: str | None, db_url: str | None, verbose: bool) -> None:
    """tihub: find, fetch, check, use and train textual-inversion embeddings.

    \b
    Example:
      tihub sync                       # index the sources in sources.yaml
      tihub search "watercolor" --base sd1
      tihub fetch easynegative
      tihub compat --model-hash 7460a6fa
    """
    from tihub.cli._common import Context

    if not verbose:
        _quiet_third_party()
    ctx.obj = Context(home=home, db_url=db_url, verbose=verbose)


def _quiet_third_party() -> None:
    """Silence the notes other libraries print on import and use (torchvision fallbacks, torchsde
    warnings); tihub's own warnings still show. `tihub --verbose` keeps them."""
    import warnings

    for var in ("TRANSFORMERS_VERBOSITY", "DIFFUSERS_VERBOSITY"):
        os.environ.setdefault(var, "error")
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    for module in ("torchsde", "transformers", "diffusers", "torch", "huggingface_hub", "accelerate"):
        warnings.filterwarnings("ignore", module=module + r"(\..*)?$")


def main() -> None:  # pragma: no cover
    cli(prog_name="tihub")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
