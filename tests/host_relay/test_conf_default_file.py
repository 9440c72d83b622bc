"""Without --config-file the relay reads /etc/iim/relay.conf, the file its package installs."""

from __future__ import annotations

import pytest

from host_relay import conf as relay_conf
from host_relay.conf import loader


@pytest.fixture
def packaged(tmp_path, monkeypatch):
    """Stand-in for /etc/iim/relay.conf (and no ~/.iim or /etc/iim/iim-relay.conf)."""
    path = tmp_path / "relay.conf"
    monkeypatch.setattr(loader, "PACKAGED_CONFIG_FILE", str(path))
    monkeypatch.setattr(loader.cfg, "find_config_files", lambda project, prog: [])
    return path


def test_the_packaged_file_is_read_without_config_file(packaged) -> None:
    packaged.write_text("[DEFAULT]\nstate_path = /srv/iim-state\n")
    assert loader.PACKAGED_CONFIG_FILE == str(packaged)
    conf = relay_conf.load([], conf=relay_conf.new_conf())
    assert conf.state_path == "/srv/iim-state"
    assert loader.find_default_config_files() == [str(packaged)]


def test_a_missing_packaged_file_means_the_defaults(packaged) -> None:
    conf = relay_conf.load([], conf=relay_conf.new_conf())
    assert conf.state_path == "/var/lib/iim"
    assert loader.find_default_config_files() == []


def test_an_error_in_the_packaged_file_names_it(packaged) -> None:
    packaged.write_text("[DEFAULT]\nshutdown_grace = soon\n")
    with pytest.raises(relay_conf.ConfigError) as info:
        relay_conf.load([], conf=relay_conf.new_conf())
    assert str(packaged) in str(info.value)


def test_config_file_replaces_the_packaged_file(packaged, tmp_path) -> None:
    packaged.write_text("[DEFAULT]\nstate_path = /srv/packaged\n")
    other = tmp_path / "other.conf"
    other.write_text("[DEFAULT]\nhost = other-host\n")
    conf = relay_conf.load(["--config-file", str(other)], conf=relay_conf.new_conf())
    assert conf.host == "other-host" and conf.state_path == "/var/lib/iim"


def test_the_real_default_path() -> None:
    assert loader.PACKAGED_CONFIG_FILE == "/etc/iim/relay.conf"
