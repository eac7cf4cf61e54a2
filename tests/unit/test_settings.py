from pathlib import Path

import pytest

from overnight.errors import ConfigError
from overnight.settings import load, normalize_database_url


def test_defaults_route_everything_to_the_embedded_model(tmp_path: Path) -> None:
    s = load(env={}, data_dir=tmp_path)
    route = s.route_for("gpt-4o-mini-batch")
    assert route is not None and route.embedded
    assert s.resolved_database_url.startswith("sqlite+aiosqlite:///")


def test_upstream_env_serves_every_model() -> None:
    secret = "sk-very-secret-value"
    env = {"OVERNIGHT_UPSTREAM_URL": "http://127.0.0.1:9/v1", "OVERNIGHT_UPSTREAM_API_KEY": secret}
    s = load(env=env)
    route = s.route_for("anything")
    assert route is not None and route.replicas == ("http://127.0.0.1:9/v1",)
    assert route.api_key == secret
    assert secret not in repr(s) and secret not in repr(route)


def test_config_routes(tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text(
        '[models.a]\nurl = "http://127.0.0.1:1/v1"\napi_key_env = "A_KEY"\nmax_concurrency = 8\n'
        'model = "real-a"\n[models.b]\nurls = ["http://127.0.0.1:2/v1", "http://127.0.0.1:3/v1"]\n'
    )
    s = load(config_file=cfg, env={"A_KEY": "secret"})
    a, b = s.route_for("a"), s.route_for("b")
    assert a is not None and a.api_key == "secret" and a.upstream_model == "real-a"
    assert b is not None and len(b.replicas) == 2
    assert s.route_for("c") is None  # a config without a default routes nothing else


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('[models.a]\nurl = "x"\nbogus = 1\n', "unknown keys"),
        ("[models.a]\nmax_concurrency = 2\n", "needs one of"),
        ('[models.a]\nurl = "x"\napi_key_env = "NOPE"\n', "NOPE"),
        ("not toml [", "not valid TOML"),
        ('[models.a]\ngguf = "m.gguf"\nn_ctx = 10\n', "n_ctx must be"),
        ('[models.a]\ngguf = "m.gguf"\nn_ctx = "4096"\n', "n_ctx must be"),
    ],
)
def test_bad_config_says_what_to_fix(tmp_path: Path, text: str, message: str) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text(text)
    with pytest.raises(ConfigError, match=message):
        load(config_file=cfg, env={})


def test_in_process_route_sizes(tmp_path: Path) -> None:
    from overnight.backends.llamacpp import LlamaCppBackend
    from overnight.backends.router import build_backend

    cfg = tmp_path / "c.toml"
    cfg.write_text('[models.g]\ngguf = "m.gguf"\nn_ctx = 4096\nmax_concurrency = 16\n')
    route = load(config_file=cfg, env={}).route_for("g")
    assert route is not None and route.n_ctx == 4096
    backend = build_backend(route)
    assert isinstance(backend, LlamaCppBackend)
    assert (backend.n_ctx, backend.n_parallel) == (4096, 16)


def test_database_urls() -> None:
    assert normalize_database_url("postgresql://u@h/db") == "postgresql+asyncpg://u@h/db"
    assert normalize_database_url("postgres://u@h/db") == "postgresql+asyncpg://u@h/db"
    assert normalize_database_url("sqlite:///x.db") == "sqlite+aiosqlite:///x.db"


def test_api_keys_env() -> None:
    s = load(env={"OVERNIGHT_API_KEYS": "alpha:k1, beta:k2"})
    assert s.api_keys == (("alpha", "k1"), ("beta", "k2"))
    with pytest.raises(ConfigError):
        load(env={"OVERNIGHT_API_KEYS": "nocolon"})


def test_deadline_scheduling_switch() -> None:
    assert load(env={}).deadline_scheduling is True
    assert load(env={"OVERNIGHT_DEADLINE_SCHEDULING": "off"}).deadline_scheduling is False
    assert load(env={"OVERNIGHT_DEADLINE_SCHEDULING": "1"}).deadline_scheduling is True
    with pytest.raises(ConfigError, match="OVERNIGHT_DEADLINE_SCHEDULING must be on or off"):
        load(env={"OVERNIGHT_DEADLINE_SCHEDULING": "sometimes"})
