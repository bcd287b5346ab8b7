"""The README documents every setting, metric and CLI command the code has."""

import re
from pathlib import Path

import typer.main
from pydantic import AliasChoices

from spendgate.cli import COMMAND_DOCS, app
from spendgate.config import Settings
from spendgate.metrics import METRIC_DOCS, GatewayMetrics

README = (Path(__file__).parent.parent / "README.md").read_text(encoding="utf-8")


def test_every_setting_and_alias_is_in_the_readme():
    missing = []
    for field in Settings.model_fields.values():
        alias = field.validation_alias
        assert isinstance(alias, AliasChoices)
        missing += [name for name in alias.choices if f"`{name}`" not in README]
    assert missing == []


def test_every_metric_is_registered_and_documented():
    registered = {
        sample_name
        for metric in GatewayMetrics(user_labels=True).registry.collect()
        for sample_name in [metric.name + ("_total" if metric.type == "counter" else "")]
        if not sample_name.startswith("process_")  # prometheus-client's own, documented there
    }
    assert registered == set(METRIC_DOCS)
    assert [name for name in METRIC_DOCS if f"`{name}`" not in README] == []


def _command_paths(group: typer.Typer, prefix: str = "") -> set[str]:
    click_group = typer.main.get_command(group)
    paths: set[str] = set()

    def walk(command, path):
        subcommands = getattr(command, "commands", None)
        if subcommands:
            for name, sub in subcommands.items():
                walk(sub, f"{path} {name}".strip())
        else:
            paths.add(path)

    walk(click_group, prefix)
    return paths


def test_every_cli_command_is_registered_and_documented():
    assert _command_paths(app) == set(COMMAND_DOCS)
    missing = [cmd for cmd in COMMAND_DOCS if not re.search(rf"`spendgate {cmd}[` ]", README)]
    assert missing == []


def test_quick_start_is_exactly_the_two_commands():
    block = README.split("## Quick start", 1)[1].split("```sh", 1)[1].split("```", 1)[0]
    assert block.strip().splitlines() == ["make run", "make test"]
