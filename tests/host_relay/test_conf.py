"""host_relay.conf: options, bounds, start-up checks, warnings and the generated sample.

Every test builds its own ConfigOpts with ``new_conf()`` and passes
``default_config_files=[]`` so nothing from /etc or ~ leaks in, and the
global CONF is never parsed.
"""

from __future__ import annotations

import dataclasses
import logging as std_logging
import os
import shutil
import socket
import subprocess
import sys
import textwrap
from importlib.metadata import entry_points
from pathlib import Path

import pytest
from keystoneauth1 import loading as ks_loading
from oslo_config import cfg, types

from host_relay import conf as relay_conf
from host_relay.conf import masakari as masakari_conf
from host_relay.conf import opts as conf_opts
from host_relay.conf import oslo_private
from host_relay.conf.loader import DETECTOR_FIELDS
from host_relay.settings import ChannelSettings, DeliverySettings, LibvirtSettings, RelaySettings

ROOT = Path(__file__).resolve().parents[2]
SAMPLE = ROOT / "etc" / "iim-relay.conf.sample"
GENERATOR_CONF = ROOT / "etc" / "iim-relay-config-generator.conf"

DETECTOR_DEFAULTS = {
    "missed_heartbeats": 10,
    "min_interval": 0.5,
    "max_interval": 10.0,
    "min_uptime": 10.0,
    "max_pause": 3600.0,
    "cooldown": 300.0,
    "max_notifications": 3,
    "notification_window": 3600.0,
    "late_tolerance": 2.0,
}


def _write(tmp_path: Path, text: str, name: str = "relay.conf") -> str:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return str(path)


def _load(*files: str, argv: tuple[str, ...] = ()) -> cfg.ConfigOpts:
    args = list(argv)
    for path in files:
        args += ["--config-file", path]
    return relay_conf.load(args, default_config_files=[], conf=relay_conf.new_conf())


def _error(*files: str, argv: tuple[str, ...] = ()) -> str:
    with pytest.raises(relay_conf.ConfigError) as info:
        _load(*files, argv=argv)
    return str(info.value)


def _keystoneauth_dests() -> set[str]:
    opts = (
        ks_loading.get_session_conf_options()
        + ks_loading.get_auth_common_conf_options()
        + ks_loading.get_adapter_conf_options(include_deprecated=True)
    )
    for plugin in masakari_conf.SAMPLE_AUTH_PLUGINS:
        opts += ks_loading.get_auth_plugin_conf_options(plugin)
    return {opt.dest for opt in opts}


def _group_name(group: str | cfg.OptGroup) -> str:
    return group if isinstance(group, str) else group.name


def _own_numeric_opts() -> list[tuple[str, cfg.Opt]]:
    """iim's numeric options (keystoneauth's own are not ours to bound)."""
    theirs = _keystoneauth_dests()
    found = []
    for group, opts in conf_opts.list_opts():
        for opt in opts:
            if group == masakari_conf.masakari_group and opt.dest in theirs:
                continue
            if isinstance(opt.type, (types.Integer, types.Float)):
                found.append((_group_name(group), opt))
    return found


def _fmt(number: float) -> str:
    return str(int(number)) if float(number).is_integer() else str(number)


# --- the rule: bounded numbers ----------------------------------------------------------------


def test_every_numeric_option_has_min_and_max():
    numeric = _own_numeric_opts()
    # 1 [DEFAULT] + 6 [channels] + 9 [detector] + 11 [witnesses] + 4 [masakari] + 3 [libvirt]
    assert len(numeric) == 34
    unbounded = [
        f"[{group}] {opt.dest}"
        for group, opt in numeric
        if opt.type.min is None or opt.type.max is None
    ]
    assert not unbounded, f"numeric options need min= and max=: {unbounded}"
    for group, opt in numeric:
        assert opt.type.min <= opt.default <= opt.type.max, f"[{group}] {opt.dest} default"


def test_every_own_option_has_help():
    theirs = _keystoneauth_dests()
    for group, opts in conf_opts.list_opts():
        for opt in opts:
            if group == masakari_conf.masakari_group and opt.dest in theirs:
                continue
            assert opt.help and len(opt.help.split()) >= 8, opt.dest


def test_entry_point_lists_the_same_options():
    (ep,) = [e for e in entry_points(group="oslo.config.opts") if e.name == "iim-relay"]
    groups = {_group_name(group) for group, _ in ep.load()()}
    assert groups == {"DEFAULT", "channels", "detector", "masakari", "metrics", "libvirt",
                      "witnesses"}


# --- defaults and real files -------------------------------------------------------------------


def test_defaults_load_without_a_file():
    conf = _load()
    assert relay_conf.settings_from(conf) == RelaySettings(
        host=socket.gethostname(), libvirt=LibvirtSettings(connection_uri="qemu:///system"),
        config_warnings=tuple(relay_conf.config_warnings(conf)))
    assert dataclasses.asdict(relay_conf.detector_config_from(conf)) == DETECTOR_DEFAULTS
    assert tuple(DETECTOR_DEFAULTS) == DETECTOR_FIELDS
    assert conf.masakari.auth_type == "password"
    assert conf.masakari.service_type == "instance-ha"
    assert conf.masakari.noauth_token == "admin:admin"
    assert relay_conf.config_warnings(conf) == []
    # Loadable (`status` needs no credentials), but `run` refuses it at once.
    with pytest.raises(relay_conf.ConfigError) as info:
        relay_conf.check_masakari(conf)
    assert str(info.value).startswith(
        "no configuration file was read (looked for /etc/iim/relay.conf; give one with "
        "--config-file): [masakari] auth_type = password (the default) needs auth_url, "
        "username and password, so iim-relay cannot reach masakari-api"
    )


def test_defaults_match_the_plain_settings():
    # settings.py and the options must not drift apart.
    conf = _load()
    settings = relay_conf.settings_from(conf)
    assert settings.channels == ChannelSettings()
    assert settings.delivery == DeliverySettings()
    assert (settings.state_path, settings.shutdown_grace) == ("/var/lib/iim", 5.0)


def test_each_group_from_a_real_file(tmp_path):
    path = _write(
        tmp_path,
        """
        [DEFAULT]
        host = compute-7
        state_path = /srv/iim
        shutdown_grace = 12.5
        debug = true

        [channels]
        socket_dir = /srv/iim/sockets
        reconnect_initial = 0.2
        reconnect_max = 45
        read_chunk = 8192
        max_bytes_per_second = 131072
        max_frames_per_second = 50

        [detector]
        missed_heartbeats = 5
        min_interval = 1
        max_interval = 20
        min_uptime = 120
        max_pause = 7200
        cooldown = 600
        max_notifications = 2
        notification_window = 86400

        [masakari]
        auth_type = password
        auth_url = http://keystone:5000/v3
        username = masakari
        password = secret
        project_name = service
        user_domain_name = Default
        project_domain_name = Default
        region_name = RegionTwo
        request_timeout = 30
        backoff_initial = 2
        backoff_max = 120
        jitter = 0.5
        """,
    )
    conf = _load(path)
    assert relay_conf.config_warnings(conf) == []
    assert conf.debug is True  # oslo.log's options are read from the same file
    assert relay_conf.settings_from(conf) == RelaySettings(
        host="compute-7",
        state_path="/srv/iim",
        shutdown_grace=12.5,
        channels=ChannelSettings(
            socket_dir="/srv/iim/sockets",
            reconnect_initial=0.2,
            reconnect_max=45.0,
            read_chunk=8192,
            max_bytes_per_second=131072,
            max_frames_per_second=50,
        ),
        delivery=DeliverySettings(
            backoff_initial=2.0, backoff_max=120.0, jitter=0.5, request_timeout=30.0
        ),
        libvirt=LibvirtSettings(connection_uri="qemu:///system"),
    )
    assert dataclasses.asdict(relay_conf.detector_config_from(conf)) == {
        "missed_heartbeats": 5,
        "min_interval": 1.0,
        "max_interval": 20.0,
        "min_uptime": 120.0,
        "max_pause": 7200.0,
        "cooldown": 600.0,
        "max_notifications": 2,
        "notification_window": 86400.0,
        "late_tolerance": 2.0,
    }
    assert conf.masakari.auth_url == "http://keystone:5000/v3"
    assert conf.masakari.region_name == "RegionTwo"


def test_config_files_and_dirs_apply_in_command_line_order(tmp_path):
    main = _write(tmp_path, "[detector]\ncooldown = 100\n")
    conf_d = tmp_path / "relay.conf.d"
    conf_d.mkdir()
    _write(conf_d, "[detector]\ncooldown = 200\n", "10-site.conf")
    dir_last = ("--config-file", main, "--config-dir", str(conf_d))
    conf = relay_conf.load(list(dir_last), default_config_files=[], conf=relay_conf.new_conf())
    assert conf.detector.cooldown == 200.0
    assert _load(main, argv=("--config-dir", str(conf_d))).detector.cooldown == 100.0
    # A bad value in a conf.d file is blamed on that file, not on the main one.
    _write(conf_d, "[detector]\ncooldown = -5\n", "20-bad.conf")
    message = _error(argv=("--config-file=" + main, "--config-dir=" + str(conf_d)))
    assert message.startswith(f"{conf_d / '20-bad.conf'}: [detector] cooldown = -5 is out of range")


def test_instances_are_independent(tmp_path):
    a = _load(_write(tmp_path, "[detector]\ncooldown = 1\n", "a.conf"))
    b = _load(_write(tmp_path, "[detector]\ncooldown = 2\n", "b.conf"))
    assert (a.detector.cooldown, b.detector.cooldown) == (1.0, 2.0)
    assert not oslo_private.was_parsed(cfg.CONF)  # the global CONF was never parsed
    # Options registered on one ConfigOpts (the chosen auth plugin's) stay there: oslo
    # shares a module-level OptGroup's option dict between every conf registering it.
    c = _load(_write(tmp_path, "[masakari]\nauth_type = none\nendpoint = http://m\n", "c.conf"))
    assert "endpoint" in c.masakari
    assert "endpoint" not in relay_conf.new_conf().masakari
    assert "endpoint" not in relay_conf.CONF.masakari


# --- bad values ---------------------------------------------------------------------------------


def _bound_cases():
    for group, opt in _own_numeric_opts():
        lo, hi = opt.type.min, opt.type.max
        yield pytest.param(group, opt, lo - 1, id=f"{group}.{opt.dest}-below")
        yield pytest.param(group, opt, hi + 1, id=f"{group}.{opt.dest}-above")


@pytest.mark.parametrize(("group", "opt", "value"), list(_bound_cases()))
def test_each_bound_violated_names_file_option_and_range(tmp_path, group, opt, value):
    path = _write(tmp_path, f"[{group}]\n\n{opt.dest} = {_fmt(value)}\n")
    message = _error(path)
    expected = (
        f"{path}: [{group}] {opt.dest} = {_fmt(value)} is out of range: "
        f"must be between {_fmt(opt.type.min)} and {_fmt(opt.type.max)} (line 3; "
    )
    assert expected in message


def test_out_of_range_message_reads_as_documented(tmp_path):
    path = _write(tmp_path, "[detector]\nmissed_heartbeats = 1\n")
    assert _error(path) == (
        f"{path}: [detector] missed_heartbeats = 1 is out of range: "
        "must be between 2 and 100 (line 2; default 10)"
    )


def test_not_a_number(tmp_path):
    path = _write(tmp_path, "[channels]\nread_chunk = lots\n[detector]\ncooldown = 5m\n")
    message = _error(path)
    assert (
        f"{path}: [channels] read_chunk = lots is not an integer: "
        "must be an integer between 512 and 262144" in message
    )
    assert f"{path}: [detector] cooldown = 5m is not a number" in message


def test_every_bad_value_is_reported_at_once(tmp_path):
    path = _write(tmp_path, "[detector]\nmissed_heartbeats = 0\ncooldown = -1\n")
    error = pytest.raises(relay_conf.ConfigError, _load, path).value
    assert len(error.problems) == 2


def test_the_file_that_wins_is_named(tmp_path):
    good = _write(tmp_path, "[detector]\ncooldown = 5\n", "a.conf")
    bad = _write(tmp_path, "[detector]\ncooldown = 999999\n", "b.conf")
    message = _error(good, bad)
    assert message.startswith(f"{bad}: [detector] cooldown = 999999 is out of range")


def test_bad_value_from_the_environment(monkeypatch):
    monkeypatch.setenv("OS_DETECTOR__MISSED_HEARTBEATS", "1000")
    message = _error()
    assert message.startswith(
        "environment variable OS_DETECTOR__MISSED_HEARTBEATS: [detector] "
        "missed_heartbeats = 1000 is out of range: must be between 2 and 100"
    )


def test_bad_choice_in_a_library_option(tmp_path):
    path = _write(tmp_path, "[masakari]\ninsecure = maybe\n")
    assert f"{path}: [masakari] insecure = maybe is not valid" in _error(path)


def test_bad_value_in_a_command_line_option_set_in_a_file(tmp_path):
    # oslo converts oslo.log's CLI options while parsing; the message still names the file.
    path = _write(tmp_path, "[DEFAULT]\ndebug = maybe\n")
    assert _error(path).startswith(f"{path}: [DEFAULT] debug = maybe is not valid:")


def test_empty_host(tmp_path):
    path = _write(tmp_path, "[DEFAULT]\nhost =\n")
    assert f"{path}: [DEFAULT] host is empty" in _error(path)


def test_missing_file(tmp_path):
    path = str(tmp_path / "nope.conf")
    assert _error(path) == f"{path}: no such file: check the --config-file path"


def test_unparsable_file(tmp_path):
    path = _write(tmp_path, "[detector]\nthis line has no equals sign\n")
    message = _error(path)
    assert message.startswith(f"{path}: cannot parse:")
    assert ":2," in message  # the line


def test_missing_config_dir(tmp_path):
    missing = tmp_path / "gone.d"
    assert _error(argv=("--config-dir", str(missing))).startswith(f"{missing}: no such directory")


# --- constraints between options ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("group", "low", "high"),
    [
        ("detector", "min_interval", "max_interval"),
        ("channels", "reconnect_initial", "reconnect_max"),
        ("masakari", "backoff_initial", "backoff_max"),
    ],
)
def test_cross_option_order(tmp_path, group, low, high):
    path = _write(tmp_path, f"[{group}]\n{low} = 50\n{high} = 40\n")
    assert _error(path) == (
        f"{path}: [{group}] {low} = 50 is greater than {high} = 40: {low} must not exceed "
        f"{high}; lower {low} or raise {high} (line 2)"
    )
    equal = _write(tmp_path, f"[{group}]\n{low} = 40\n{high} = 40\n", "equal.conf")
    _load(equal)


def test_settings_from_checks_overrides_too():
    conf = _load()
    conf.set_override("min_interval", 20.0, group="detector")
    with pytest.raises(relay_conf.ConfigError, match="min_interval = 20 is greater than"):
        relay_conf.detector_config_from(conf)


# --- unknown sections and options -----------------------------------------------------------------


def test_unknown_option_warns_with_the_closest_name(tmp_path):
    path = _write(
        tmp_path,
        """
        [DEFAULT]
        debug = true
        log_file = /var/log/iim/relay.log

        [detector]
        missed_heartbeat = 4
        cooldown = 60
        """,
    )
    conf = _load(path)
    assert relay_conf.config_warnings(conf) == [
        f"{path}: [detector] missed_heartbeat is not a known option and is ignored; "
        "did you mean missed_heartbeats? (line 7)",
    ]
    assert conf.detector.missed_heartbeats == 10  # oslo ignored it: hence the warning


def test_unknown_section_warns_with_the_closest_name(tmp_path):
    path = _write(tmp_path, "[channel]\nsocket_dir = /x\n[Detector]\ncooldown = 60\n")
    conf = _load(path)
    warnings = relay_conf.config_warnings(conf)
    assert (
        f"{path}: section [channel] is not used by iim-relay and is ignored; "
        "did you mean [channels]?" in warnings
    )
    assert conf.detector.cooldown == 60.0  # oslo matches group names case-insensitively
    assert not any("Detector" in w for w in warnings)


def test_option_in_the_wrong_section_says_where_it_belongs(tmp_path):
    path = _write(tmp_path, "[DEFAULT]\nmax_notifications = 1\n")
    warnings = relay_conf.config_warnings(_load(path))
    (warning,) = [w for w in warnings if "max_notifications" in w]
    assert "[DEFAULT] max_notifications" in warning
    assert "belongs in [detector]" in warning


def test_auth_plugin_options_count_only_for_the_chosen_plugin(tmp_path):
    password = _write(tmp_path, "[masakari]\nauth_url = http://k:5000/v3\nendpoint = http://m\n")
    (warning,) = relay_conf.config_warnings(_load(password))
    assert "[masakari] endpoint is not a known option" in warning
    assert "did you mean endpoint_override?" in warning


# --- masakari / keystoneauth --------------------------------------------------------------------


def test_auth_type_none_with_endpoint(tmp_path):
    path = _write(
        tmp_path,
        """
        [masakari]
        auth_type = none
        endpoint = http://127.0.0.1:15868
        noauth_token = alice:demo
        """,
    )
    conf = _load(path)
    assert relay_conf.config_warnings(conf) == []
    assert conf.masakari.endpoint == "http://127.0.0.1:15868"
    assert conf.masakari.noauth_token == "alice:demo"
    # keystoneauth builds its plugin from the same options (as masakari_client does).
    auth = ks_loading.load_auth_from_conf_options(conf, "masakari")
    assert auth.get_endpoint(None) == "http://127.0.0.1:15868"
    ks_loading.load_session_from_conf_options(conf, "masakari", auth=auth)


def _unusable(path: str) -> str:
    conf = _load(path)
    with pytest.raises(relay_conf.ConfigError) as info:
        relay_conf.check_masakari(conf)
    return str(info.value)


def test_auth_type_none_without_endpoint_is_refused(tmp_path):
    path = _write(tmp_path, "[masakari]\nauth_type = none\n")
    assert _unusable(path).startswith(
        f"{path}: [masakari] auth_type = none needs endpoint, so iim-relay cannot reach "
        "masakari-api: write them in [masakari];")
    override = _write(
        tmp_path, "[masakari]\nauth_type = none\nendpoint_override = http://m:15868\n", "o.conf"
    )
    relay_conf.check_masakari(_load(override))


@pytest.mark.parametrize(("text", "missing"), [
    ("", "auth_url, username and password"),
    ("[masakari]\nauth_url = http://k:5000/v3\n", "username and password"),
    ("[masakari]\nauth_url = http://k:5000/v3\nusername = m\n", "password"),
    ("[masakari]\nauth_url = http://k:5000/v3\npassword = p\n", "username"),
    ("[masakari]\nauth_type = v3applicationcredential\nauth_url = http://k/v3\n",
     "application_credential_secret and application_credential_id"),
])
def test_incomplete_keystone_credentials_are_refused(tmp_path, text, missing):
    path = _write(tmp_path, text)
    message = _unusable(path)
    assert f"{path}: [masakari] auth_type = " in message
    assert f" needs {missing}, so iim-relay cannot reach masakari-api" in message
    assert "auth_type = none and endpoint = http://MASAKARI-API:15868" in message
    assert "\n" not in message


def test_auth_type_not_set_is_refused(tmp_path):
    path = _write(tmp_path, "[masakari]\nauth_type =\n")
    assert _unusable(path).startswith(f"{path}: [masakari] auth_type is not set, so iim-relay")


def test_complete_keystone_credentials_pass(tmp_path):
    for text in ("auth_url = http://k/v3\nusername = m\npassword = p\n",
                 "auth_url = http://k/v3\nuser_id = 0a1b\npassword = p\n"):
        relay_conf.check_masakari(_load(_write(tmp_path, "[masakari]\n" + text)))


def test_loading_again_with_another_auth_type(tmp_path):
    conf = relay_conf.new_conf()
    basic = _write(tmp_path, "[masakari]\nauth_type = http_basic\nusername = u\n", "a.conf")
    relay_conf.load(["--config-file", basic], default_config_files=[], conf=conf)
    password = _write(tmp_path, "[masakari]\nauth_url = http://k/v3\nusername = u\n", "b.conf")
    relay_conf.load(["--config-file", password], default_config_files=[], conf=conf)
    assert conf.masakari.auth_url == "http://k/v3"
    assert "endpoint" not in conf.masakari  # http_basic's option is gone


def test_unknown_auth_type(tmp_path):
    path = _write(tmp_path, "[masakari]\nauth_type = pasword\n")
    message = _error(path)
    assert message.startswith(
        f"{path}: [masakari] auth_type = pasword is not a keystoneauth plugin: "
        "did you mean password?"
    )


def test_auth_section(tmp_path):
    path = _write(
        tmp_path,
        """
        [masakari]
        auth_section = keystone_authtoken

        [keystone_authtoken]
        auth_type = none
        endpoint = http://127.0.0.1:15868
        """,
    )
    conf = _load(path)
    assert relay_conf.config_warnings(conf) == []
    auth = ks_loading.load_auth_from_conf_options(conf, "masakari")
    assert auth.get_endpoint(None) == "http://127.0.0.1:15868"
    relay_conf.check_masakari(conf)


# --- logging -------------------------------------------------------------------------------


def test_setup_logging_writes_the_warnings_to_the_log(tmp_path):
    log_file = tmp_path / "relay.log"
    path = _write(tmp_path, f"[DEFAULT]\nlog_file = {log_file}\nuse_stderr = false\nbogus = 1\n")
    conf = _load(path)
    root = std_logging.getLogger()
    saved = (root.handlers[:], root.level)
    try:
        relay_conf.setup_logging(conf)
        for handler in root.handlers:
            handler.flush()
    finally:
        for handler in root.handlers:
            if handler not in saved[0]:
                handler.close()
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])
    text = log_file.read_text()
    assert "WARNING host_relay.conf.loader" in text
    assert "[DEFAULT] bogus is not a known option" in text


# --- the generated sample -------------------------------------------------------------------


def test_sample_is_in_sync(tmp_path):
    generated = tmp_path / "iim-relay.conf.sample"
    generator = Path(sys.executable).with_name("oslo-config-generator")
    command = [str(generator)] if generator.exists() else [shutil.which("oslo-config-generator")]
    subprocess.run(
        [*command, "--config-file", str(GENERATOR_CONF), "--output-file", str(generated)],
        cwd=ROOT,
        check=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert generated.read_text() == SAMPLE.read_text(), (
        "etc/iim-relay.conf.sample is out of date: run scripts/gen-config and commit the result"
    )


def test_sample_loads_cleanly(tmp_path):
    # Uncommented, the sample's own defaults form a valid configuration.
    lines = []
    for line in SAMPLE.read_text().splitlines():
        if line.startswith("#") and " = " in line and not line.startswith("# "):
            name, value = line[1:].split(" = ", 1)
            if value != "<None>" and name != "host":
                line = f"{name} = {value}"
        lines.append(line)
    path = _write(tmp_path, "\n".join(lines) + "\n")
    conf = _load(path)
    assert not [w for w in relay_conf.config_warnings(conf) if "not a known option" in w]
    assert dataclasses.asdict(relay_conf.detector_config_from(conf)) == DETECTOR_DEFAULTS


# --- [libvirt] --------------------------------------------------------------------------------


def test_libvirt_group_from_a_file(tmp_path):
    from host_relay.settings import LibvirtSettings

    path = _write(tmp_path, """
        [libvirt]
        connection_uri = qemu+ssh://h/system
        opt_in = list
        instance_uuids = 3F0A9C1E-5B7D-4E2F-9A1B-2C3D4E5F6A01, 3f0a9c1e-5b7d-4e2f-9a1b-2c3d4e5f6a02
        serial_fallback = false
        serial_port = 2
        socket_owner = nobody
        socket_group = nogroup
        reconnect_initial = 0.5
        reconnect_max = 5
        """)
    assert relay_conf.settings_from(_load(path)).libvirt == LibvirtSettings(
        connection_uri="qemu+ssh://h/system", opt_in="list",
        instance_uuids=("3f0a9c1e-5b7d-4e2f-9a1b-2c3d4e5f6a01",
                        "3f0a9c1e-5b7d-4e2f-9a1b-2c3d4e5f6a02"),
        serial_fallback=False, serial_port=2, socket_owner="nobody", socket_group="nogroup",
        reconnect_initial=0.5, reconnect_max=5.0)
    off = _write(tmp_path, "[libvirt]\nconnection_uri =\n", "off.conf")
    assert not relay_conf.settings_from(_load(off)).libvirt.enabled


def test_libvirt_bad_values_name_the_option_and_fix(tmp_path):
    path = _write(tmp_path, "[libvirt]\nopt_in = match\nmatch_name = (\n"
                  "instance_uuids = nope\n")
    text = _error(path)
    assert f"{path}: [libvirt] match_name = ( is not a Python regular expression" in text
    assert "(line 3)" in text
    assert "[libvirt] instance_uuids = nope has entries that are not UUIDs (nope)" in text
    empty = _write(tmp_path, "[libvirt]\nopt_in = list\n", "list.conf")
    assert "[libvirt] opt_in = list needs instance_uuids" in _error(empty)
    bad_port = _write(tmp_path, "[libvirt]\nserial_port = 4\n", "port.conf")
    assert "[libvirt] serial_port = 4 is out of range: must be between 0 and 3" in _error(bad_port)
