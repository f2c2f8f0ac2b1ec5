"""Installation and configuration: entry points, settings, URLs (password, TLS),
clear errors."""

from __future__ import annotations

import shutil
import subprocess
import time
from importlib.metadata import entry_points
from pathlib import Path

import pytest
from nuvom.backends import get_queue_backend, get_result_backend
from nuvom.config import load_settings
from nuvom.errors import BackendError, ConfigError
from nuvom.job import Job, JobStatus
from nuvom.redis import RedisJobQueue, RedisResultBackend, RedisSettings, load_redis_settings, redact_url

from .conftest import RedisServer


def test_entry_points_name_the_backends_in_both_groups():
    queues = {ep.name: ep.value for ep in entry_points(group="nuvom.queue_backends")}
    results = {ep.name: ep.value for ep in entry_points(group="nuvom.result_backends")}
    plugins = {ep.name for ep in entry_points(group="nuvom")}
    assert queues["redis"] == "nuvom.redis:RedisJobQueue"
    assert results["redis"] == "nuvom.redis:RedisResultBackend"
    assert "redis" not in plugins  # choosing the backend starts no plugin
    assert next(iter(entry_points(group="nuvom.queue_backends", name="redis"))).load() is RedisJobQueue
    assert RedisJobQueue.settings_class is RedisResultBackend.settings_class is RedisSettings


def test_the_environment_alone_selects_and_configures_redis(monkeypatch, redis_server, prefix):
    monkeypatch.setenv("NUVOM_QUEUE_BACKEND", "redis")
    monkeypatch.setenv("NUVOM_RESULT_BACKEND", "redis")
    monkeypatch.setenv("NUVOM_REDIS_URL", redis_server.url)
    monkeypatch.setenv("NUVOM_REDIS_PREFIX", prefix)
    queue, results = get_queue_backend(), get_result_backend()
    assert isinstance(queue, RedisJobQueue) and isinstance(results, RedisResultBackend)
    assert queue.prefix == prefix and results.prefix == prefix
    queue.enqueue(Job(func_name="x"))
    assert queue.client.zcard(f"{prefix}:q:ready") == 1


def test_settings_defaults_and_a_bad_value_named():
    s = load_redis_settings()
    assert s.redis_url == "redis://127.0.0.1:6379/0" and s.redis_prefix == "nuvom" and s.result_ttl_secs is None


def test_a_bad_setting_names_the_variable(monkeypatch):
    monkeypatch.setenv("NUVOM_RESULT_TTL_SECS", "-3")
    with pytest.raises(ConfigError, match="NUVOM_RESULT_TTL_SECS"):
        load_redis_settings()


def test_passwords_are_redacted():
    assert redact_url("redis://:pw@h:6379/0") == "redis://:***@h:6379/0"
    assert redact_url("rediss://user:pw@h:6380/1") == "rediss://user:***@h:6380/1"
    assert redact_url("redis://h:6379/0") == "redis://h:6379/0"


def test_a_url_that_is_not_redis_is_refused_clearly():
    with pytest.raises(BackendError, match="not a Redis URL"):
        RedisJobQueue(load_settings(), redis=RedisSettings(redis_url="http://:pw@localhost/"))


def test_an_unreachable_server_is_a_bounded_clear_error(prefix):
    from .conftest import free_port

    url = f"redis://:topsecret@127.0.0.1:{free_port()}/0"
    queue = RedisJobQueue(
        load_settings(), redis=RedisSettings(redis_url=url, redis_prefix=prefix, redis_retry_secs=0.5)
    )
    t0 = time.monotonic()
    with pytest.raises(BackendError) as err:
        queue.enqueue(Job(func_name="x"))
    assert time.monotonic() - t0 < 3
    assert "topsecret" not in str(err.value) and ":***@127.0.0.1" in str(err.value)
    assert "NUVOM_REDIS_URL" in str(err.value)
    queue.close()


def test_password_urls_work_and_a_wrong_password_is_named(tmp_path, prefix):
    server = RedisServer(tmp_path / "auth", "--requirepass", "right-pw").start()
    try:
        ok = RedisJobQueue(load_settings(), redis=RedisSettings(redis_url=server.url, redis_prefix=prefix))
        ok.enqueue(Job(func_name="x"))
        assert ok.qsize() == 1
        ok.close()
        wrong = server.url.replace("right-pw", "wrong-pw")
        bad = RedisJobQueue(load_settings(), redis=RedisSettings(redis_url=wrong, redis_prefix=prefix))
        t0 = time.monotonic()
        with pytest.raises(BackendError, match="refused the credentials") as err:
            bad.qsize()
        assert time.monotonic() - t0 < 1  # not retried: it cannot help
        assert "wrong-pw" not in str(err.value)
        bad.close()
    finally:
        server.stop()


def _certificates(folder: Path) -> tuple[Path, Path, Path]:
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("openssl is not installed")
    folder.mkdir(parents=True, exist_ok=True)
    ca_key, ca, key, csr, cert = (folder / n for n in ("ca.key", "ca.crt", "server.key", "server.csr", "server.crt"))

    def run(*args: str) -> None:
        subprocess.run([openssl, *args], check=True, capture_output=True)

    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(ca_key), "-out", str(ca),
        "-days", "2", "-subj", "/CN=nuvom-test-ca")  # fmt: skip
    run("req", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(csr), "-subj", "/CN=127.0.0.1")
    ext = folder / "ext.cnf"
    ext.write_text("subjectAltName=IP:127.0.0.1\n")
    run("x509", "-req", "-in", str(csr), "-CA", str(ca), "-CAkey", str(ca_key), "-CAcreateserial",
        "-out", str(cert), "-days", "2", "-extfile", str(ext))  # fmt: skip
    return ca, cert, key


def test_tls_urls_work(tmp_path, prefix):
    from .conftest import free_port

    ca, cert, key = _certificates(tmp_path / "certs")
    tls_port = free_port()
    server = RedisServer(
        tmp_path / "tls",
        "--tls-port", str(tls_port),
        "--tls-cert-file", str(cert),
        "--tls-key-file", str(key),
        "--tls-ca-cert-file", str(ca),
        "--tls-auth-clients", "no",
    ).start()  # fmt: skip
    try:
        url = f"rediss://127.0.0.1:{tls_port}/0?ssl_ca_certs={ca}&ssl_cert_reqs=required"
        rs = RedisSettings(redis_url=url, redis_prefix=prefix)
        queue, results = RedisJobQueue(load_settings(), redis=rs), RedisResultBackend(load_settings(), redis=rs)
        job = Job(func_name="x")
        queue.enqueue(job)
        (claimed,) = queue.claim(1)
        claimed.status, claimed.finished_at = JobStatus.SUCCESS, time.time()
        queue.complete([claimed], results)
        assert results.get_full(job.id).id == job.id
        # Without the CA the server's certificate is refused: it really is TLS.
        bare = RedisSettings(redis_url=f"rediss://127.0.0.1:{tls_port}/0", redis_prefix=prefix, redis_retry_secs=0)
        with pytest.raises(BackendError):
            RedisJobQueue(load_settings(), redis=bare).qsize()
        queue.close()
        results.close()
    finally:
        server.stop()
