"""Configuration: validated at start, errors name the field, environment overrides."""

from __future__ import annotations

from pathlib import Path

import pytest

from dualwrite.config import load_config
from dualwrite.errors import ConfigError

GOOD = """
kafka: {bootstrap_servers: "127.0.0.1:9092"}
fo:
  url: https://contoso.operations.dynamics.com
  auth: {token_url: "https://login.microsoftonline.com/t/oauth2/v2.0/token", client_id: a, client_secret: s}
dataverse:
  url: https://contoso.crm.dynamics.com
  auth: {token_url: "https://login.microsoftonline.com/t/oauth2/v2.0/token", client_id: a, client_secret: s}
"""


def test_good_config_with_environment_override(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(GOOD)
    cfg = load_config(
        path, {"DUALWRITE__DATAVERSE__AUTH__CLIENT_SECRET": "from-env", "DUALWRITE__CONSUMER__BATCH_SIZE": "50"}
    )
    assert cfg.dataverse.auth.client_secret == "from-env"
    assert cfg.consumer.batch_size == 50
    assert "from-env" not in repr(cfg.dataverse)


def test_more_application_users_take_their_secrets_from_the_environment(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    token_url = "https://login.microsoftonline.com/t/oauth2/v2.0/token"
    more = f'  more_users:\n    second: {{token_url: "{token_url}", client_id: b}}\n'
    path.write_text(GOOD + more)
    with pytest.raises(ConfigError, match="dataverse.more_users.second.client_secret"):
        load_config(path, {})
    cfg = load_config(path, {"DUALWRITE__DATAVERSE__MORE_USERS__SECOND__CLIENT_SECRET": "second-secret"})
    assert cfg.dataverse.more_users["second"].client_secret == "second-secret"
    assert "second-secret" not in repr(cfg.dataverse)


@pytest.mark.parametrize(
    ("text", "field"),
    [
        (GOOD.replace('bootstrap_servers: "127.0.0.1:9092"', 'bootstrap_servers: "nohost"'), "kafka.bootstrap_servers"),
        (GOOD.replace("client_id: a, ", "", 1), "fo.auth.client_id"),
        (GOOD + "\nconsumer: {batchsize: 5}\n", "consumer.batchsize"),
        (GOOD.replace("https://contoso.crm.dynamics.com", "not a url"), "dataverse.url"),
    ],
)
def test_bad_field_is_named(tmp_path: Path, text: str, field: str) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        load_config(path, {})


def test_missing_file_and_bad_yaml_are_clear(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml", {})
    (tmp_path / "bad.yaml").write_text("kafka: [unclosed")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(tmp_path / "bad.yaml", {})
