"""Configuration and route files: every error names file, line, key and what is expected.

Files are written into tmp_path and loaded with ``load_config``, ``load_routes`` and
``load_setup``; the environment is passed explicitly so the test's own is never read.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
from pydantic import ValidationError

from station.config import (
    DEFAULT_DESTINATION,
    DicomDestinationConfig,
    FolderDestinationConfig,
    ListenConfig,
    StationConfig,
    default_destinations,
    load_config,
)
from station.errors import ConfigError
from station.routing.routes import Regex, load_routes
from station.service import load_setup

NO_ENV: dict[str, str] = {}


def write(path: Path, text: str) -> Path:
    """Write ``text`` (dedented) to ``path``, creating its folder; return the path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text).lstrip("\n"))
    return path


def config_error(path: Path | None, environ: dict[str, str] | None = None) -> list[str]:
    """The lines of the ConfigError that loading ``path`` raises."""
    with pytest.raises(ConfigError) as info:
        load_config(path, environ=NO_ENV if environ is None else environ)
    return str(info.value).splitlines()


def routes_error(folder: Path) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_routes(folder)
    return str(info.value).splitlines()


def setup_error(config: StationConfig) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_setup(config)
    return str(info.value).splitlines()


def line_starting(lines: list[str], prefix: str) -> str:
    """The one line that starts with ``prefix`` (fails listing all lines otherwise)."""
    found = [line for line in lines if line.startswith(prefix)]
    assert len(found) == 1, f"no single line starts with {prefix!r} in:\n" + "\n".join(lines)
    return found[0]


# --- station.yaml ------------------------------------------------------------------------


def test_builtin_defaults_are_valid_and_deliver_to_a_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    config = load_config(None, environ=NO_ENV)
    assert config.ae_title == "STATION"
    assert config.listen.port == 11112
    assert config.storage.path == tmp_path / "station-data"
    assert config.routes is None
    assert [w.path for w in config.watch] == [tmp_path / "dropbox"]
    destinations = default_destinations(config)
    assert list(destinations) == [DEFAULT_DESTINATION]
    folder = destinations[DEFAULT_DESTINATION]
    assert isinstance(folder, FolderDestinationConfig)
    assert folder.path == tmp_path / "station-data" / "outgoing"
    setup = load_setup(config)
    assert [(r.name, r.destinations) for r in setup.routes] == [("default", [DEFAULT_DESTINATION])]


def test_an_empty_file_means_defaults(tmp_path: Path) -> None:
    config = load_config(write(tmp_path / "station.yaml", "# nothing yet\n"), environ=NO_ENV)
    assert config.listen.port == 11112
    assert config.storage.path == tmp_path / "station-data"


def test_unknown_keys_at_every_level(tmp_path: Path) -> None:
    cfg = write(
        tmp_path / "station.yaml",
        """
        ae_title: STATION
        listne:
          port: 104
        listen:
          host: 127.0.0.1
          prot: 104
        destinations:
          pacs: {type: dicom, host: h, port: 104, ae_title: PACS, aet: X}
        """,
    )
    lines = config_error(cfg)
    assert line_starting(lines, f"{cfg}:2: listne:").endswith("unknown key")
    assert line_starting(lines, f"{cfg}:6: listen.prot:").endswith("unknown key")
    assert line_starting(lines, f"{cfg}:8: destinations.pacs.aet:").endswith("unknown key")
    assert len(lines) == 3


def test_wrong_types_and_out_of_range_values(tmp_path: Path) -> None:
    cfg = write(
        tmp_path / "station.yaml",
        """
        listen:
          port: abc
          max_associations: 0
        metrics:
          port: 70000
        series: {quiet_seconds: 0}
        plugins: not-a-list
        """,
    )
    lines = config_error(cfg)
    port = line_starting(lines, f"{cfg}:2: listen.port:")
    assert "valid integer" in port and "(got 'abc')" in port
    assert "greater than or equal to 1" in line_starting(
        lines, f"{cfg}:3: listen.max_associations:"
    )
    metrics = line_starting(lines, f"{cfg}:5: metrics.port:")
    assert "less than or equal to 65535" in metrics and "(got 70000)" in metrics
    assert "greater than 0" in line_starting(lines, f"{cfg}:6: series.quiet_seconds:")
    assert "valid tuple" in line_starting(lines, f"{cfg}:7: plugins:")


def test_destination_errors_name_the_destination_and_its_key(tmp_path: Path) -> None:
    cfg = write(
        tmp_path / "station.yaml",
        """
        destinations:
          pacs:
            type: dicom
            host: 10.0.0.5
          archive: {type: folder}
          research:
            type: dicom
            host: 10.0.0.6
            port: 0
            ae_title: "A_TITLE_LONGER_THAN_16"
        """,
    )
    lines = config_error(cfg)
    missing = "required key is missing"
    assert line_starting(lines, f"{cfg}:2: destinations.pacs.port:").endswith(missing)
    assert line_starting(lines, f"{cfg}:2: destinations.pacs.ae_title:").endswith(missing)
    assert line_starting(lines, f"{cfg}:5: destinations.archive.path:").endswith(missing)
    assert "greater than or equal to 1" in line_starting(
        lines, f"{cfg}:9: destinations.research.port:"
    )
    assert "1 to 16 printable characters" in line_starting(
        lines, f"{cfg}:10: destinations.research.ae_title:"
    )


def test_destination_names_are_restricted(tmp_path: Path) -> None:
    cfg = write(
        tmp_path / "station.yaml",
        """
        destinations:
          "my pacs": {type: folder, path: out}
        """,
    )
    (line,) = config_error(cfg)
    assert line.startswith(f"{cfg}:1: destinations: destination name 'my pacs'")
    assert "letters, digits" in line


@pytest.mark.parametrize(
    ("text", "line"),
    [
        ("listen: {port: 1\nae_title: X\n", 2),  # unclosed flow mapping
        ("listen:\n  port: 1\n\thost: x\n", 3),  # a tab
        ("routes: [a, b\n", 2),  # unclosed flow sequence
    ],
)
def test_invalid_yaml_names_file_and_line(tmp_path: Path, text: str, line: int) -> None:
    cfg = tmp_path / "station.yaml"
    cfg.write_text(text)
    (message,) = config_error(cfg)
    assert message.startswith(f"{cfg}:{line}: invalid YAML: ")


def test_top_level_must_be_a_mapping(tmp_path: Path) -> None:
    cfg = write(tmp_path / "station.yaml", "- listen\n- storage\n")
    (message,) = config_error(cfg)
    assert message.startswith(f"{cfg}: the top level must be a mapping")


def test_not_utf8_and_unreadable_files(tmp_path: Path) -> None:
    cfg = tmp_path / "station.yaml"
    cfg.write_bytes(b"ae_title: \xff\xfe\n")
    (message,) = config_error(cfg)
    assert message.startswith(f"{cfg}: not UTF-8 text")
    (message,) = config_error(tmp_path / "absent.yaml")
    assert message.startswith(f"{tmp_path / 'absent.yaml'}: cannot read")


def test_relative_paths_are_resolved_against_the_config_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    elsewhere = tmp_path / "cwd"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    etc = tmp_path / "etc" / "station"
    cfg = write(
        etc / "station.yaml",
        """
        storage: ../../var/station
        routes: routes
        plugins: [plugins/tagger.py, plugins, some_installed.module]
        destinations:
          archive: {type: folder, path: archive}
          absolute: {type: folder, path: /srv/archive}
        """,
    )
    config = load_config(cfg, environ=NO_ENV)
    assert config.source == cfg
    assert config.storage.path == tmp_path / "var" / "station"
    assert config.routes == etc / "routes"
    assert config.plugins == (
        str(etc / "plugins" / "tagger.py"),
        "plugins",  # no slash, no .py: a module name, left alone
        "some_installed.module",
    )
    archive = config.destinations["archive"]
    assert isinstance(archive, FolderDestinationConfig)
    assert archive.path == etc / "archive"
    assert config.destinations["absolute"].path == Path("/srv/archive")  # type: ignore[union-attr]


def test_storage_shorthand_and_float_notation(tmp_path: Path) -> None:
    cfg = write(
        tmp_path / "station.yaml",
        """
        storage: {path: data, retention_hours: 0.5, min_free_bytes: 2e9}
        """,
    )
    config = load_config(cfg, environ=NO_ENV)
    assert config.storage.min_free_bytes == 2_000_000_000
    assert config.storage.retention_hours == 0.5
    assert config.storage.path == tmp_path / "data"


def test_environment_overrides_the_file(tmp_path: Path) -> None:
    cfg = write(
        tmp_path / "station.yaml",
        """
        ae_title: FROMFILE
        listen: {host: 127.0.0.1, port: 104}
        destinations:
          pacs: {type: dicom, host: 10.0.0.5, port: 104, ae_title: PACS}
        """,
    )
    environ = {
        "STATION_LISTEN__PORT": "11113",
        "STATION_AE_TITLE": "EDGE1",
        "STATION_DESTINATIONS__PACS__PORT": "4242",
        "STATION_SERIES__QUIET_SECONDS": "2.5",
        "STATION_CONFIG": str(cfg),  # the CLI's --config, not a key
        "PATH": "/usr/bin",
    }
    config = load_config(cfg, environ=environ)
    assert config.ae_title == "EDGE1"
    assert config.listen.port == 11113
    assert config.listen.host == "127.0.0.1"  # the rest of the section stays
    assert config.series.quiet_seconds == 2.5
    pacs = config.destinations["pacs"]
    assert isinstance(pacs, DicomDestinationConfig)
    assert (pacs.host, pacs.port) == ("10.0.0.5", 4242)


def test_environment_overrides_without_a_file(tmp_path: Path) -> None:
    config = load_config(None, environ={"STATION_STORAGE": str(tmp_path / "data")})
    assert config.storage.path == tmp_path / "data"


def test_environment_variables_that_name_no_key_are_not_overrides() -> None:
    """STATION_TEST_DATA (the test suite's own) and the like must not break the station;
    ``source`` (the file the config came from) is no setting."""
    environ = {"STATION_TEST_DATA": "/somewhere", "STATION_SOURCE": "/etc/other.yaml"}
    config = load_config(None, environ=environ)
    assert config == load_config(None, environ=NO_ENV)


def test_a_plugin_option_set_by_its_own_variable_is_read_as_yaml() -> None:
    """Plugin options have no type to read a value by: as in the file, YAML decides."""
    environ = {
        "STATION_PLUGIN_OPTIONS__TAGGER__MODALITIES": "[CT, MR]",
        "STATION_PLUGIN_OPTIONS__TAGGER__THRESHOLD": "3",
        "STATION_PLUGIN_OPTIONS__TAGGER__NAME": "site A",
    }
    config = load_config(None, environ=environ)
    assert config.plugin_options["tagger"] == {
        "modalities": ["CT", "MR"],
        "threshold": 3,
        "name": "site A",
    }


def test_lists_and_sections_in_the_environment_are_read_as_yaml(tmp_path: Path) -> None:
    environ = {
        "STATION_PLUGINS": "[tagger, other.module]",
        "STATION_LISTEN": "{host: 127.0.0.1, port: 104}",
        "STATION_LISTEN__PORT": "105",  # the deeper variable wins within the section
        "STATION_DESTINATIONS__PACS": "{type: dicom, host: pacs, port: 104, ae_title: PACS}",
        "STATION_ROUTES": "null",
    }
    config = load_config(write(tmp_path / "station.yaml", "routes: routes\n"), environ=environ)
    assert config.plugins == ("tagger", "other.module")
    assert (config.listen.host, config.listen.port) == ("127.0.0.1", 105)
    assert isinstance(config.destinations["pacs"], DicomDestinationConfig)
    assert config.routes is None


def test_a_bad_environment_value_names_the_variable(tmp_path: Path) -> None:
    cfg = write(tmp_path / "station.yaml", "listen: {port: 104}\n")
    (message,) = config_error(cfg, {"STATION_LISTEN__PORT": "abc", "STATION_CONFIG": str(cfg)})
    assert message.startswith("environment variable STATION_LISTEN__PORT: listen.port: ")
    assert "Input should be a valid integer" in message  # and not STATION_CONFIG


def test_a_variable_naming_a_destination_no_config_defines_is_named(tmp_path: Path) -> None:
    cfg = write(tmp_path / "station.yaml", "listen: {port: 104}\n")
    environ = {"STATION_DESTINATIONS__PACS__PORT": "104", "STATION_LISTEN__HOST": "127.0.0.1"}
    (message,) = config_error(cfg, environ)
    assert message == (
        "environment variable STATION_DESTINATIONS__PACS__PORT: destinations.pacs.type: "
        "required key is missing"
    )


def test_a_problem_in_the_file_is_not_blamed_on_a_variable(tmp_path: Path) -> None:
    cfg = write(tmp_path / "station.yaml", "listen: {port: 104, host: [1]}\n")
    (message,) = config_error(cfg, {"STATION_LISTEN__PORT": "105"})
    assert message.startswith(f"{cfg}:1: listen.host: ")


# --- route files -------------------------------------------------------------------------


def test_route_files_load_in_name_order(tmp_path: Path) -> None:
    routes = tmp_path / "routes"
    write(routes / "20-second.yaml", "name: second\ndestinations: [pacs]\n")
    write(
        routes / "10-first.yml",
        """
        - name: first-a
          match:
            Modality: [CT, MR]
            SeriesDescription: {regex: "(?i)chest"}
            labels: {body: head}
          transform: [anonymize, {set-tags: {set: {InstitutionName: X}}}]
          destinations: [pacs]
          final: true
        - name: first-b
          destinations: [pacs]
        """,
    )
    write(routes / "notes.txt", "not a route file")
    loaded = load_routes(routes)
    assert [r.name for r in loaded] == ["first-a", "first-b", "second"]
    first = loaded[0]
    assert first.match["Modality"] == ["CT", "MR"]
    assert first.match["SeriesDescription"] == Regex(regex="(?i)chest")
    assert [(s.name, s.options) for s in first.transform] == [
        ("anonymize", {}),
        ("set-tags", {"set": {"InstitutionName": "X"}}),
    ]
    assert first.final and not loaded[1].final
    assert load_routes(routes / "20-second.yaml")[0].name == "second"  # one file works too


def test_unknown_dicom_keyword_in_match(tmp_path: Path) -> None:
    write(
        tmp_path / "routes" / "a.yaml",
        """
        name: a
        match:
          Modality: CT
          Modalty: MR
        destinations: [pacs]
        """,
    )
    (message,) = routes_error(tmp_path / "routes")
    assert message.startswith(f"{tmp_path / 'routes' / 'a.yaml'}:4: match.Modalty: ")
    assert "DICOM keyword" in message and "calling_ae" in message


def test_bad_regex_in_match_and_in_labels(tmp_path: Path) -> None:
    folder = tmp_path / "routes"
    write(
        folder / "a.yaml",
        """
        name: a
        match:
          Modality: CT
          SeriesDescription: {regex: "(unclosed"}
        destinations: [pacs]
        """,
    )
    write(
        folder / "b.yaml",
        """
        name: b
        match:
          labels:
            body: {regex: "["}
        destinations: [pacs]
        """,
    )
    lines = routes_error(folder)
    a = line_starting(lines, f"{folder / 'a.yaml'}:4: match.SeriesDescription: ")
    assert "{regex: PATTERN}" in a and "invalid regular expression" in a
    b = line_starting(lines, f"{folder / 'b.yaml'}:4: match.labels.body: ")
    assert "invalid regular expression" in b


def test_route_errors_in_a_list_file_name_the_item(tmp_path: Path) -> None:
    file = write(
        tmp_path / "routes" / "many.yaml",
        """
        - name: one
          destinations: [pacs]
          priority: 3
        - name: two
          match:
            labels: head
          destinations: pacs
        - match: {Modality: CT}
          destinations: [pacs]
        - name: four
          final: maybe
          transform: [{set-tags: 3}]
          destinations: [pacs]
        - just a string
        """,
    )
    lines = routes_error(tmp_path / "routes")
    assert line_starting(lines, f"{file}:3: 0.priority:").endswith("unknown key")
    assert "mapping of label name" in line_starting(lines, f"{file}:6: 1.match.labels:")
    assert "valid list" in line_starting(lines, f"{file}:7: 1.destinations:")
    assert line_starting(lines, f"{file}:8: 2.name:").endswith("required key is missing")
    assert "valid boolean" in line_starting(lines, f"{file}:11: 3.final:")
    assert "options must be a mapping" in line_starting(lines, f"{file}:12: 3.transform:")
    assert line_starting(lines, f"{file}:14: ").endswith("a route must be a mapping")


def test_invalid_yaml_in_a_route_file(tmp_path: Path) -> None:
    file = write(tmp_path / "routes" / "broken.yaml", "name: [x\n")
    (message,) = routes_error(tmp_path / "routes")
    assert message.startswith(f"{file}:2: invalid YAML: ")


def test_duplicate_route_names(tmp_path: Path) -> None:
    folder = tmp_path / "routes"
    write(folder / "a.yaml", "name: same\ndestinations: [pacs]\n")
    write(folder / "b.yaml", "# the same name again\nname: same\ndestinations: [pacs]\n")
    (message,) = routes_error(folder)
    assert message.startswith(f"{folder / 'b.yaml'}:2: name: 'same' is already used in ")
    assert str(folder / "a.yaml") in message


def test_missing_routes_folder(tmp_path: Path) -> None:
    (message,) = routes_error(tmp_path / "nowhere")
    assert message == f"routes: {tmp_path / 'nowhere'}: no such file or folder"


def station_config(tmp_path: Path, routes: str) -> StationConfig:
    """A config with one DICOM and one folder destination and the given route file."""
    write(tmp_path / "routes" / "r.yaml", routes)
    cfg = write(
        tmp_path / "station.yaml",
        """
        routes: routes
        destinations:
          pacs: {type: dicom, host: 127.0.0.1, port: 104, ae_title: PACS}
          archive: {type: folder, path: archive}
        """,
    )
    return load_config(cfg, environ=NO_ENV)


def test_unknown_destination_in_a_route(tmp_path: Path) -> None:
    config = station_config(
        tmp_path,
        """
        name: r
        destinations:
          - pacs
          - nowhere
        """,
    )
    (message,) = setup_error(config)
    file = tmp_path / "routes" / "r.yaml"
    assert message.startswith(f"{file}:4: destinations.1: 'nowhere' is not configured")
    assert "(known: archive, pacs)" in message


def test_unknown_transform_in_a_route(tmp_path: Path) -> None:
    config = station_config(
        tmp_path,
        """
        - name: fine
          destinations: [pacs]
        - name: r
          transform:
            - set-tags: {set: {InstitutionName: X}}
            - scrub: {level: 2}
          destinations: [archive]
        """,
    )
    (message,) = setup_error(config)
    file = tmp_path / "routes" / "r.yaml"
    assert message.startswith(f"{file}:6: 1.transform.1: 'scrub' is not provided by any plugin")
    assert "set-tags" in message  # the known ones, from the bundled plugin's entry point


def test_a_route_without_destinations(tmp_path: Path) -> None:
    config = station_config(tmp_path, "name: r\nmatch: {Modality: CT}\n")
    (message,) = setup_error(config)
    assert message.startswith(f"{tmp_path / 'routes' / 'r.yaml'}:1: destinations: ")
    assert "at least one destination" in message


def test_unknown_destination_type(tmp_path: Path) -> None:
    cfg = write(
        tmp_path / "station.yaml",
        """
        destinations:
          cloud: {type: s3, bucket: b}
        """,
    )
    (message,) = setup_error(load_config(cfg, environ=NO_ENV))
    assert message.startswith(f"{cfg}: destinations.cloud.type: unknown destination type 's3'")
    assert "(known: dicom, folder)" in message


def test_plugin_problems_are_config_errors(tmp_path: Path) -> None:
    broken = write(tmp_path / "plugins" / "broken.py", "raise RuntimeError('no config here')\n")
    typo = write(
        tmp_path / "plugins" / "typo.py",
        """
        from station import hookimpl

        @hookimpl
        def station_filter_serie(series):
            return True
        """,
    )
    hooks = "(hooks: station_configure, station_filter_series, station_classify_series,"
    for plugin, expected, also in [
        (broken, f"{broken}: plugin failed to import: RuntimeError: no config here", ""),
        (typo, f"{typo}: unknown hook 'station_filter_serie'", hooks),
        (tmp_path / "absent.py", f"plugins: {tmp_path / 'absent.py'}: no such file or folder", ""),
    ]:
        cfg = write(tmp_path / "station.yaml", f"plugins: [{plugin}]\n")
        (message,) = setup_error(load_config(cfg, environ=NO_ENV))
        assert message.startswith(expected)
        assert also in message


def test_plugin_options_reach_the_plugin_and_wrong_ones_are_config_errors(tmp_path: Path) -> None:
    plugin = tmp_path / "opts.py"
    plugin.write_text(
        "from station import hookimpl\n"
        "SEEN = []\n"
        "@hookimpl\n"
        "def station_configure(options):\n"
        "    if 'bad' in options:\n"
        "        raise ValueError('bad: not an option of this plugin')\n"
        "    SEEN.append(options)\n"
    )
    good = tmp_path / "good.yaml"
    good.write_text("plugins: [opts.py]\nplugin_options: {opts: {threshold: 3}}\n")
    setup = load_setup(load_config(good, environ={}))
    module = next(p for n, p in setup.plugins.pm.list_name_plugin() if n == "opts")
    assert module.SEEN == [{"threshold": 3}]

    bad = tmp_path / "bad.yaml"
    bad.write_text("plugins: [opts.py]\nplugin_options: {opts: {bad: 1}}\n")
    with pytest.raises(ConfigError, match=r"bad.yaml: plugin_options.opts: bad: not an option"):
        load_setup(load_config(bad, environ={}))

    unknown = tmp_path / "unknown.yaml"
    unknown.write_text("plugins: [opts.py]\nplugin_options: {nosuch: {}}\n")
    with pytest.raises(ConfigError, match=r"plugin_options.nosuch: no plugin of that name"):
        load_setup(load_config(unknown, environ={}))


def test_tls_files_are_loaded_by_check_and_named_when_they_fail(tmp_path: Path) -> None:
    """A TLS certificate, key or CA that cannot be loaded is a config error (`station
    check`), naming the key and the file, not a service that fails to start."""
    (tmp_path / "garbage.crt").write_text("not a certificate\n")
    cfg = write(
        tmp_path / "station.yaml",
        """
        listen:
          tls: {certificate: missing.crt, key: missing.key}
        destinations:
          pacs:
            type: dicom
            host: 10.0.0.5
            port: 2762
            ae_title: PACS
            tls: {ca: garbage.crt}
        """,
    )
    lines = setup_error(load_config(cfg, environ=NO_ENV))
    listen = line_starting(
        lines, f"{cfg}: listen.tls: TLS certificate and key {tmp_path}/missing.crt"
    )
    assert "No such file or directory" in listen
    assert line_starting(lines, f"{cfg}: destinations.pacs.tls: TLS CA {tmp_path}/garbage.crt")


def test_a_client_certificate_requirement_needs_a_ca() -> None:
    with pytest.raises(ValidationError, match="require_client_certificate needs `ca`"):
        ListenConfig.model_validate(
            {"tls": {"certificate": "a", "key": "b", "require_client_certificate": True}}
        )
