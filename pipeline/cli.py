"""The command line of every step, made from the settings' dataclass fields: `--name value` per
setting, `--help`, a recipe file (`--config study.yaml`) that sets any of them, one `error:`
line with a did-you-mean for a name no setting has, and docs/parameters.md
(`python -m pipeline.cli > docs/parameters.md`).

Under `mlflow run`, an entry point declares only the few parameters a student turns; MLflow passes
any other `-P name=value` on as `--name value`, so every setting reaches this parser all the same.
"""

from __future__ import annotations

import argparse
import ast
import difflib
import functools
import logging
from dataclasses import fields
from pathlib import Path

import yaml

from pipeline.errors import UserError
from pipeline.parsers import backbone_name
from pipeline.settings import STEP_SETTINGS, CompareConfig, as_params

RECIPE = "config"
log = logging.getLogger(__name__)


class _ArgumentParser(argparse.ArgumentParser):
    """argparse, but a mistake is a `UserError` (one `error:` line, exit 2, the run marked
    FAILED) rather than argparse's usage text and exit."""

    def error(self, message: str):
        names = [a.dest for a in self._actions if a.option_strings and a.dest != "help"]
        hints = []
        if message.startswith("unrecognized arguments:"):
            for word in message.split(":", 1)[1].split():
                if word.startswith("--"):
                    close = difflib.get_close_matches(word[2:], names, n=1, cutoff=0.6)
                    hints += [f"--{word[2:]}: did you mean --{close[0]}?"] if close else []
        hint = f" ({'; '.join(hints)})" if hints else ""
        raise UserError(
            f"{message}{hint}; parameters are given as --name value, and {self.prog} takes: {', '.join(names)} (--help says what each means)"
        )


def add_settings(parser: argparse.ArgumentParser, *groups: type) -> None:
    """One `--name value` option per setting, with its help and its default."""
    parser.add_argument(
        f"--{RECIPE}",
        metavar="FILE",
        default=argparse.SUPPRESS,
        help="a YAML file of name: value pairs setting any of these (given parameters override it)",
    )
    for group in groups:
        defaults = as_params(group())
        section = parser.add_argument_group(group.__name__.removesuffix("Config").lower() + " settings")
        for f in fields(group):
            shown = defaults[f.name] or "''"
            section.add_argument(
                f"--{f.name}",
                metavar="VALUE",
                default=argparse.SUPPRESS,
                help=f"{f.metadata['help']} (default: {shown})",
                type=functools.partial(f.metadata["parse"], f.name),
            )


def settings_parser(prog: str, *groups: type, description: str | None = None) -> argparse.ArgumentParser:
    parser = _ArgumentParser(prog=prog, description=description, allow_abbrev=False, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_settings(parser, *groups)
    return parser


def recipe_tokens(path: str, groups: tuple[type, ...]) -> list[str]:
    """A recipe file's settings as `--name value` tokens. One recipe may serve several steps: a
    setting of another step is left to it, and said; a name no step has is an error."""
    if not path:
        return []
    try:
        loaded = yaml.safe_load(Path(path).expanduser().read_text())
    except OSError as e:
        raise UserError(f"config {path!r} cannot be read ({e.strerror or e}); give the path of a YAML file of name: value pairs") from None
    except yaml.YAMLError as e:
        raise UserError(f"config {path!r} is not valid YAML: {str(e).splitlines()[0]}") from None
    if loaded is None:
        return []
    if not isinstance(loaded, dict):
        raise UserError(f"config {path!r} must hold name: value pairs (a YAML mapping), not a {type(loaded).__name__}")
    names = [f.name for group in groups for f in fields(group)]
    anywhere = {f.name for step_groups in STEP_SETTINGS.values() for group in step_groups for f in fields(group)}
    tokens, elsewhere = [], []
    for key, value in loaded.items():
        if key in names:
            tokens += [f"--{key}", _as_text(value)]
        elif key in anywhere:
            elsewhere.append(str(key))
        else:
            close = difflib.get_close_matches(str(key), sorted(anywhere), n=1, cutoff=0.6)
            raise UserError(
                f"config {path!r} sets {key!r}, which is no setting"
                + (f"; did you mean {close[0]}?" if close else "")
                + " (docs/parameters.md lists them)"
            )
    if elsewhere:
        log.info("config %s: %s set for other steps, not this one", path, ", ".join(elsewhere))
    return tokens


def _as_text(value) -> str:
    """A YAML value as the command line would give it."""
    if value is None:
        return "auto"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (list, tuple)):
        return ",".join(_as_text(v) for v in value)
    return str(value)


def _split_recipe(argv: list[str]) -> tuple[str, list[str]]:
    """The recipe path given with `--config` (last one wins) and the other tokens."""
    path, rest, k = "", [], 0
    while k < len(argv):
        token = argv[k]
        if token == f"--{RECIPE}" and k + 1 < len(argv):
            path, k = argv[k + 1], k + 2
            continue
        if token.startswith(f"--{RECIPE}="):
            path, k = token.split("=", 1)[1], k + 1
            continue
        rest.append(token)
        k += 1
    return path, rest


def parse_cli(argv: list[str], *groups: type, prog: str = "this entry point", description: str | None = None) -> tuple:
    """Fill each settings group from `--name value` pairs and a `--config` recipe; every name
    must belong to some group. `--help` prints every setting with its help and default, and exits.

    A value given on the command line wins over the recipe's, unless it is the setting's default:
    `mlflow run` passes every parameter its entry point declares, with its default where the user
    gave none, and a recipe must still be able to set those."""
    path, rest = _split_recipe(list(argv))
    parser = settings_parser(prog, *groups, description=description)
    given = vars(parser.parse_args(rest))
    recipe = vars(parser.parse_args(recipe_tokens(path, groups)))
    defaults = {f.name: f.default for group in groups for f in fields(group)}
    chosen = {name: given[name] for name in given if name != RECIPE}
    for name, value in recipe.items():
        if name not in chosen or chosen[name] == defaults[name]:
            chosen[name] = value
    result = tuple(group(**{f.name: chosen[f.name] for f in fields(group) if f.name in chosen}) for group in groups)
    _check_together(result)
    return result


def from_params(params: dict[str, str], *groups: type) -> tuple:
    """Settings read back from a run's logged parameters; keys of other groups are ignored."""
    names = {f.name for group in groups for f in fields(group)}
    return parse_cli([token for key, value in params.items() if key in names for token in (f"--{key}", value)], *groups)


def _check_together(groups: tuple) -> None:
    for g in groups:
        if isinstance(g, CompareConfig):
            bad = [m for m in g.modes if m not in ("frozen", "finetune")]
            if bad:
                raise UserError(f"modes must list frozen and/or finetune, got {', '.join(bad)}")
            for b in g.backbones:
                backbone_name("backbones", b)


def _purpose(step: str) -> str:
    """What a step does: its module docstring's first sentence, after `name:`. Read as text, so
    writing the page imports no step (nor MLflow)."""
    source = Path(__file__).with_name("steps") / f"{step}.py"
    doc = ast.get_docstring(ast.parse(source.read_text())) or ""
    return " ".join(doc.split("\n\n")[0].split()).removeprefix(f"{step}:").strip().rstrip(".")


def parameters_markdown() -> str:
    """docs/parameters.md: every setting of every group, its default, the steps that take it and
    what it means, made from the dataclass fields."""
    groups: dict[type, list[str]] = {}
    for step, step_groups in STEP_SETTINGS.items():
        for group in step_groups:
            groups.setdefault(group, []).append(step)
    lines = [
        "# Entry points and parameters",
        "",
        "Generated from the settings' dataclasses (`pipeline/settings.py`) and the steps' docstrings by "
        "`python -m pipeline.cli > docs/parameters.md`; a test fails when this file is stale.",
        "",
        "| entry point | does |",
        "|---|---|",
        *(f"| `{step}`{' (default)' if step == 'main' else ''} | {_purpose(step)} |" for step in STEP_SETTINGS),
        "",
        "Every setting is passed as `-P name=value` to `mlflow run` (or `--name value` to `python -m pipeline <step>`), or set "
        "in a recipe file given as `-P config=study.yaml` (name: value pairs; a parameter given with a value other than its "
        "default overrides the recipe's). `MLproject` declares only the few each entry point's users turn; MLflow passes any "
        "other `-P name=value` on as `--name value`. A value is logged as typed (`lr=auto`); where the step resolves it to "
        "something else, the resolved value is logged beside it (`lr_resolved`). Every run logs the settings it resolved as "
        "`settings.yaml`, itself a recipe.",
        "",
    ]
    for group, steps in groups.items():
        defaults = as_params(group())
        lines += [
            f"## {group.__name__.removesuffix('Config')} settings ({', '.join(steps)})",
            "",
            "| parameter | default | meaning |",
            "|---|---|---|",
        ]
        for f in fields(group):
            default = (defaults[f.name] or '""').replace("|", "\\|")
            lines.append(f"| `{f.name}` | `{default}` | {f.metadata['help'].replace('|', '/')} |")
        lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    print(parameters_markdown(), end="")
