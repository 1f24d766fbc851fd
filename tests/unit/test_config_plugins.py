"""Where ``[plugins.NAME]`` finds a plugin's code (`pbx.config`), and what a mistake says.

A product plugin is named (the table's name, or ``module = "name"``) and
found in the ``plugins/`` folder beside the `pbx` package; a plugin of the
administrator's own is a path, like every path relative to the config file.
Each error test asserts the whole line, as the administrator reads it.
"""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from pbx.config import PLUGINS_DIR, Config, ConfigError, parse_config

ROOT = Path(__file__).resolve().parents[2]
SIP = '[sip]\ndomain = "pbx.test"\nudp = "127.0.0.1:0"\n'


@pytest.fixture
def shipped(tmp_path: Path) -> Path:
    """A product plugins folder with a module plugin and a package plugin."""
    folder = tmp_path / "product" / "plugins"
    (folder / "presence").mkdir(parents=True)
    (folder / "presence" / "__init__.py").write_text("")
    (folder / "relay.py").write_text("")
    (folder / "not-a-name.py").write_text("")
    return folder


def parse(text: str, tmp_path: Path, plugins_dir: Path) -> Config:
    return parse_config(tomllib.loads(SIP + text), str(tmp_path / "etc" / "pbx.toml"),
                        plugins_dir=plugins_dir)


def problems(text: str, tmp_path: Path, plugins_dir: Path) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse(text, tmp_path, plugins_dir)
    return [str(problem) for problem in info.value.problems]


def test_the_product_plugins_are_the_folder_beside_the_pbx_package() -> None:
    assert ROOT / "plugins" == PLUGINS_DIR
    assert PLUGINS_DIR.is_dir()


def test_a_table_without_module_is_the_product_plugin_of_its_name(
        tmp_path: Path, shipped: Path) -> None:
    config = parse("[plugins.relay]\n[plugins.presence.settings]\nwatchers = 'all'\n",
                   tmp_path, shipped)

    assert [(p.name, p.module) for p in config.plugins] == [
        ("relay", shipped / "relay.py"),
        ("presence", shipped / "presence" / "__init__.py"),
    ]
    assert dict(config.plugins[1].settings) == {"watchers": "all"}


def test_module_may_name_a_product_plugin_under_another_table_name(
        tmp_path: Path, shipped: Path) -> None:
    config = parse('[plugins.second_relay]\nmodule = "relay"\n', tmp_path, shipped)

    assert config.plugins[0].module == shipped / "relay.py"


def test_a_path_is_a_plugin_of_ones_own_relative_to_the_config_file(
        tmp_path: Path, shipped: Path) -> None:
    (tmp_path / "site" / "crm").mkdir(parents=True)
    (tmp_path / "site" / "crm" / "__init__.py").write_text("")
    (tmp_path / "site" / "relay.py").write_text("")

    config = parse('[plugins.crm]\nmodule = "../site/crm"\n'
                   '[plugins.relay]\nmodule = "../site/relay.py"\n', tmp_path, shipped)

    assert [p.module for p in config.plugins] == [
        tmp_path / "site" / "crm" / "__init__.py", tmp_path / "site" / "relay.py"]


def test_an_unknown_product_plugin_is_named_with_those_there_are(
        tmp_path: Path, shipped: Path) -> None:
    source = tmp_path / "etc" / "pbx.toml"
    hint = ("(there are: presence, relay); for a plugin of your own, give module ="
            ' "path/to/plugin.py", relative to the folder of the config file')

    assert problems('[plugins.voicemail]\n[plugins.other]\nmodule = "mailbox"\n'
                    '[plugins.dots]\nmodule = "x.y"\n', tmp_path, shipped) == [
        f'{source}: plugins.voicemail: no plugin "voicemail" among the product\'s plugins in'
        f" {shipped} {hint}",
        f'{source}: plugins.other.module: no plugin "mailbox" among the product\'s plugins in'
        f" {shipped} {hint}",
        f'{source}: plugins.dots.module: no plugin "x.y" among the product\'s plugins in'
        f" {shipped} {hint}",
    ]


def test_an_empty_product_folder_says_there_are_none_yet(tmp_path: Path) -> None:
    [problem] = problems("[plugins.relay]\n", tmp_path, tmp_path / "nowhere")

    assert problem.endswith("in " + str(tmp_path / "nowhere") + " (there are none yet); for a"
                            ' plugin of your own, give module = "path/to/plugin.py", relative'
                            " to the folder of the config file")


def test_a_path_that_is_not_a_plugin_says_what_was_expected(
        tmp_path: Path, shipped: Path) -> None:
    (tmp_path / "site" / "empty").mkdir(parents=True)
    source = tmp_path / "etc" / "pbx.toml"
    site = tmp_path / "site"

    assert problems('[plugins.a]\nmodule = "../site/empty"\n'
                    '[plugins.b]\nmodule = "../site/gone.py"\n'
                    "[plugins.c]\nmodule = 7\n", tmp_path, shipped) == [
        f'{source}: plugins.a.module: expected a plugin\'s .py file or a package folder holding'
        f' __init__.py, got "../site/empty" ({site / "empty"}: it holds no __init__.py)',
        f"{source}: plugins.b.module: file not found: {site / 'gone.py'} (\"../site/gone.py\" is"
        f" relative to the folder of the config file, {tmp_path / 'etc'})",
        f"{source}: plugins.c.module: expected a string, got 7 (an integer)",
    ]
