"""Pins what host_relay.conf.oslo_private relies on in oslo.config's private API.

If an oslo.config upgrade renames or changes one of these, this file fails
first and names the behaviour, instead of a config error message silently
losing its file or line.
"""

from __future__ import annotations

import os
import textwrap

import pytest
from oslo_config import cfg

from host_relay.conf import oslo_private


def _conf() -> cfg.ConfigOpts:
    conf = cfg.ConfigOpts()
    conf.register_opts([cfg.IntOpt("top", default=1)])
    conf.register_group(cfg.OptGroup("grp"))
    conf.register_opts([cfg.StrOpt("inner", default="x"), cfg.FloatOpt("f", default=0.5)],
                       group="grp")
    return conf


def test_all_opts_yields_every_registered_option_with_its_group():
    conf = _conf()
    got = [(group, opt.dest) for group, opt in oslo_private.all_opts(conf)]
    ours = [pair for pair in got if pair[1] in ("top", "inner", "f")]
    assert ours == [(None, "top"), ("grp", "inner"), ("grp", "f")]
    assert (None, "config_source") in got  # oslo's own options are in [DEFAULT] too
    assert all(isinstance(opt, cfg.Opt) for _, opt in oslo_private.all_opts(conf))


def test_all_opts_sees_options_registered_after_a_parse():
    conf = _conf()
    conf(args=[], default_config_files=[])
    conf.register_opts([cfg.BoolOpt("late")], group="grp")
    assert ("grp", "late") in [(g, o.dest) for g, o in oslo_private.all_opts(conf)]


def test_fixpath_expands_the_home_directory_and_makes_paths_absolute(monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.chdir(tmp_path)
    assert oslo_private.fixpath("~/relay.conf") == str(tmp_path / "relay.conf")
    assert oslo_private.fixpath("relay.conf") == str(tmp_path / "relay.conf")
    assert oslo_private.fixpath("/etc/iim/../iim/relay.conf") == "/etc/iim/relay.conf"


def test_fixpath_names_files_as_oslo_records_them(tmp_path, monkeypatch):
    """The loader matches its file list against oslo's: both must spell paths alike."""
    path = tmp_path / "r.conf"
    path.write_text("[DEFAULT]\ntop = 2\n")
    monkeypatch.chdir(tmp_path)
    conf = _conf()
    conf(args=["--config-file", "r.conf"], default_config_files=[])
    assert conf.config_file == ["r.conf"]  # oslo keeps the argument as given ...
    assert oslo_private.fixpath(conf.config_file[0]) == str(path)  # ... and reads this file


def test_line_parser_records_the_line_of_each_key(tmp_path):
    path = tmp_path / "lines.conf"
    path.write_text(textwrap.dedent("""\
        # a comment
        [DEFAULT]
        top = 1

        [grp]
        inner = first
          continued
        f: 0.25
        [Grp]
        inner = "quoted"
        [grp]
        inner = last
        """))
    parser = oslo_private.LineParser(str(path))
    parser.parse()
    assert parser.sections == {
        "DEFAULT": {"top": ["1"]},
        "grp": {"inner": ["first\ncontinued", "last"], "f": ["0.25"]},
        "Grp": {"inner": ["quoted"]},
    }
    assert parser.lines == {
        ("DEFAULT", "top"): 3,
        ("grp", "inner"): 12,  # the last assignment, not the continuation line
        ("grp", "f"): 8,
        ("Grp", "inner"): 10,
    }


def test_line_parser_raises_oslo_parse_errors(tmp_path):
    path = tmp_path / "bad.conf"
    path.write_text("[DEFAULT]\nthis line has no equals sign\n")
    with pytest.raises(cfg.ParseError):
        oslo_private.LineParser(str(path)).parse()
    with pytest.raises(OSError):
        oslo_private.LineParser(str(tmp_path / "missing.conf")).parse()


def test_env_var_is_the_one_oslo_reads(monkeypatch):
    monkeypatch.setenv(oslo_private.env_var("grp", "f"), "0.75")
    monkeypatch.setenv(oslo_private.env_var(None, "top"), "7")
    conf = _conf()
    conf(args=[], default_config_files=[])
    assert conf.grp.f == 0.75 and conf.top == 7
    assert oslo_private.env_var("grp", "f") == "OS_GRP__F"
    assert oslo_private.env_var(None, "top") == "OS_DEFAULT__TOP"
    assert "OS_GRP__F" in os.environ


def test_stash_keeps_values_beside_the_options_across_parse_and_clear():
    conf = _conf()
    assert oslo_private.stashed(conf, "_iim_test", "none") == "none"
    oslo_private.stash(conf, "_iim_test", ["kept"])
    conf(args=[], default_config_files=[])
    conf.clear()
    conf(args=[], default_config_files=[])
    assert oslo_private.stashed(conf, "_iim_test") == ["kept"]
    assert conf.top == 1  # options still read as options
    with pytest.raises(cfg.NoSuchOptError):
        conf._iim_other  # noqa: B018 - getattr on a ConfigOpts looks up an option
    assert oslo_private.unstash(conf, "_iim_test") == ["kept"]
    assert oslo_private.unstash(conf, "_iim_test") is None


def test_was_parsed():
    conf = _conf()
    assert not oslo_private.was_parsed(conf)
    conf(args=[], default_config_files=[])
    assert oslo_private.was_parsed(conf)
    conf.clear()
    assert not oslo_private.was_parsed(conf)
