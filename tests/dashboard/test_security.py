"""The two attacks of issue 27 (items 4 and 5), against a real dashboard server
(``python -m nuvom.dashboard``) with raw HTTP and through the test client:

* DNS rebinding: a request whose ``Host`` is not one of the dashboard's names
  gets 400 on every route before any handler runs (no page, no cookie, no action);
* forged CSRF tokens: only a token the server signed for the browser's cookie,
  not expired, lets a POST act; ``abc`` in the cookie and in the field does not.
"""

from __future__ import annotations

import http.client
import re
import time
from collections.abc import Iterator
from http.cookies import SimpleCookie

import pytest
from nuvom import sdk
from nuvom.backends import get_result_backend
from nuvom.dashboard import create_app
from nuvom.dashboard._hosts import AllowedHosts, hosts_for_bind, split_host
from nuvom.job import Job, JobError, JobStatus
from starlette.testclient import TestClient

from .conftest import Project

EVIL = "rebind.evil.example:8799"
LOOPBACK = ["127.0.0.1", "localhost", "[::1]"]


def failed_job() -> Job:
    job = Job(
        func_name="add",
        args=[1],
        status=JobStatus.FAILED,
        attempts=1,
        finished_at=time.time(),
        error=JobError(type="RuntimeError", message="boom"),
    )
    get_result_backend().store([job])
    return job


def form_token(html: str) -> str:
    m = re.search(r'name="csrf" value="([^"]+)"', html)
    assert m, "the page must carry a form with a CSRF token"
    return m.group(1)


class Raw:
    """Plain HTTP/1.1 requests with exactly the headers given, as curl or a
    rebinding page would send them."""

    def __init__(self, port: int) -> None:
        self.port = port

    def request(
        self, method: str, path: str, host: str, body: str = "", cookie: str = ""
    ) -> tuple[int, dict[str, str], str, list[str]]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=15)
        try:
            conn.putrequest(method, path, skip_host=True, skip_accept_encoding=True)
            conn.putheader("Host", host)
            if cookie:
                conn.putheader("Cookie", cookie)
            if body:
                conn.putheader("Content-Type", "application/x-www-form-urlencoded")
            conn.putheader("Content-Length", str(len(body)))
            conn.endheaders(body.encode() if body else None)
            response = conn.getresponse()
            headers = {k.lower(): v for k, v in response.getheaders()}
            cookies = [v for k, v in response.getheaders() if k.lower() == "set-cookie"]
            return response.status, headers, response.read().decode("utf-8", "replace"), cookies
        finally:
            conn.close()


@pytest.fixture
def served(project: Project) -> Iterator[tuple[Project, Raw, Job]]:
    job = failed_job()
    project.start_dashboard()
    yield project, Raw(project.port), job


# -- DNS rebinding -------------------------------------------------------------
def routes(job: Job) -> list[tuple[str, str]]:
    return [
        ("GET", "/"),
        ("GET", "/fragments/overview"),
        ("GET", "/api/samples"),
        ("GET", "/jobs"),
        ("GET", f"/jobs/{job.id}"),
        ("GET", f"/jobs/{job.id}/retry"),  # the confirm page, which hands out a CSRF token
        ("POST", f"/jobs/{job.id}/retry"),
        ("GET", "/actions/retry-failed"),
        ("POST", "/actions/retry-failed"),
        ("GET", "/schedules"),
        ("GET", "/login"),
        ("GET", "/static/dashboard.css"),
        ("GET", "/no/such/page"),
    ]


def test_a_foreign_host_gets_400_on_every_route_of_a_served_dashboard(served: tuple[Project, Raw, Job]) -> None:
    _project, raw, job = served
    # What a rebinding page holds after loading the confirm page under its own name: nothing.
    for method, path in routes(job):
        status, _headers, body, cookies = raw.request(
            method, path, EVIL, body="csrf=abc", cookie="nuvom_dashboard_csrf=abc"
        )
        assert status == 400, (method, path, status)
        assert "Invalid Host header" in body and cookies == [], (method, path)
    assert sdk.queued_jobs() == []


def test_the_dashboards_own_names_are_answered(served: tuple[Project, Raw, Job]) -> None:
    project, raw, job = served
    port = project.port
    for name in LOOPBACK:
        for host in (name, f"{name}:{port}"):
            status, _, body, _ = raw.request("GET", f"/jobs/{job.id}/retry", host)
            assert status == 200 and "Please confirm" in body, host
    assert raw.request("GET", "/", f"LOCALHOST:{port}")[0] == 200  # names are case-insensitive
    for host in ("", "localhost.evil.example", "127.0.0.1.evil.example", "[::1].evil", "evil@127.0.0.1"):
        assert raw.request("GET", "/", host)[0] == 400, host


def test_allowed_hosts_add_a_reverse_proxys_names(project: Project) -> None:
    project.start_dashboard(
        "--allowed-host", "dash.example.org", "--allowed-host", "ops.example:8443",
        NUVOM_DASHBOARD_ALLOWED_HOSTS="a.example, b.example",
    )  # fmt: skip
    raw = Raw(project.port)
    for host in ("dash.example.org", "dash.example.org:443", "ops.example:8443", "a.example", "b.example:80"):
        assert raw.request("GET", "/", host)[0] == 200, host
    for host in ("ops.example", "ops.example:8444", EVIL):
        assert raw.request("GET", "/", host)[0] == 400, host


def test_the_test_client_sees_the_same_host_check() -> None:
    job = failed_job()
    app = create_app(token="", allowed_hosts=LOOPBACK)
    with TestClient(app, base_url="http://127.0.0.1:8799") as client:
        for method, path in routes(job):
            response = client.request(method, path, headers={"Host": EVIL}, data={"csrf": "abc"})
            assert response.status_code == 400 and "set-cookie" not in response.headers, (method, path)
        assert client.get(f"/jobs/{job.id}/retry").status_code == 200
        assert client.get("/", headers={"Host": "localhost"}).status_code == 200
    assert sdk.queued_jobs() == []


def test_create_app_checks_no_host_unless_told() -> None:
    # Mounted in another app, the embedding app owns the host check.
    with TestClient(create_app(token="")) as client:
        assert client.get("/", headers={"Host": EVIL}).status_code == 200
    with TestClient(create_app(token="", allowed_hosts=["*"])) as client:
        assert client.get("/", headers={"Host": EVIL}).status_code == 200


def test_host_names_are_parsed_strictly() -> None:
    assert split_host("LocalHost:8765") == ("localhost", "8765")
    assert split_host("[::1]:8765") == ("[::1]", "8765")
    assert split_host("[::1]") == ("[::1]", None)
    assert split_host("::1") == ("::1", None)  # unbracketed IPv6 is not a Host: matches no entry
    allowed = AllowedHosts([*hosts_for_bind("127.0.0.1"), "proxy.example:8443"])
    assert "[::1]:1" in allowed and "localhost" in allowed and "proxy.example:8443" in allowed
    assert "proxy.example" not in allowed and "::1" not in allowed and "" not in allowed
    assert hosts_for_bind("10.1.2.3") == ["10.1.2.3"]
    assert "[fe80::1]" in hosts_for_bind("fe80::1")


# -- CSRF ----------------------------------------------------------------------
def test_a_forged_csrf_pair_is_refused_by_a_served_dashboard(served: tuple[Project, Raw, Job]) -> None:
    project, raw, job = served
    host = f"127.0.0.1:{project.port}"
    forged = [
        ("abc", "abc"),  # the pair from the issue: curl sets both
        ("0" * 32, "0" * 32),
        ("0" * 32, f"{int(time.time()) + 3600}.{'0' * 64}"),  # well-formed, not signed by this server
    ]
    for cookie, field in forged:
        status, _, body, _ = raw.request(
            "POST", f"/jobs/{job.id}/retry", host, body=f"csrf={field}", cookie=f"nuvom_dashboard_csrf={cookie}"
        )
        assert status == 403 and "CSRF" in body, (cookie, field)
    assert sdk.queued_jobs() == []
    # The real flow: the confirm page sets the cookie and signs a token for it.
    status, _, page, cookies = raw.request("GET", f"/jobs/{job.id}/retry", host)
    session = SimpleCookie(cookies[0])["nuvom_dashboard_csrf"].value
    token = form_token(page)
    status, _, body, _ = raw.request(
        "POST", f"/jobs/{job.id}/retry", host, body=f"csrf={token}", cookie=f"nuvom_dashboard_csrf={session}"
    )
    assert status == 200 and "queued again" in body
    assert [j.retry_of for j in sdk.queued_jobs()] == [job.id]


def test_a_token_works_only_with_the_cookie_it_was_issued_for() -> None:
    job = failed_job()
    app = create_app(token="")
    with TestClient(app) as alice, TestClient(app) as mallory:
        token = form_token(alice.get(f"/jobs/{job.id}/retry").text)
        mallory.get("/")  # mallory's own session cookie
        assert mallory.post(f"/jobs/{job.id}/retry", data={"csrf": token}).status_code == 403
        assert sdk.queued_jobs() == []
        assert alice.post(f"/jobs/{job.id}/retry", data={"csrf": token}).status_code == 200


def test_an_expired_token_is_refused() -> None:
    job = failed_job()
    app = create_app(token="")
    dash = app.state.dashboard
    with TestClient(app) as client:
        client.get("/")
        session = client.cookies["nuvom_dashboard_csrf"]
        old = dash.csrf.issue(session, now=time.time() - dash.csrf.max_age - 1)
        assert client.post(f"/jobs/{job.id}/retry", data={"csrf": old}).status_code == 403
        fresh = dash.csrf.issue(session)
        assert client.post(f"/jobs/{job.id}/retry", data={"csrf": fresh}).status_code == 200


def test_dashboards_sharing_a_secret_accept_each_others_tokens(monkeypatch: pytest.MonkeyPatch) -> None:
    job = failed_job()
    first, second = create_app(token=""), create_app(token="")
    with TestClient(first) as one:
        token = form_token(one.get(f"/jobs/{job.id}/retry").text)
        session = one.cookies["nuvom_dashboard_csrf"]
    with TestClient(second, cookies={"nuvom_dashboard_csrf": session}) as two:
        assert two.post(f"/jobs/{job.id}/retry", data={"csrf": token}).status_code == 403  # each its own secret
    monkeypatch.setenv("NUVOM_DASHBOARD_SECRET", "shared by the load balancer's backends")
    first, second = create_app(token=""), create_app(token="")
    with TestClient(first) as one:
        token = form_token(one.get(f"/jobs/{job.id}/retry").text)
        session = one.cookies["nuvom_dashboard_csrf"]
    with TestClient(second, cookies={"nuvom_dashboard_csrf": session}) as two:
        assert two.post(f"/jobs/{job.id}/retry", data={"csrf": token}).status_code == 200


def test_a_token_from_before_sign_in_does_not_act_after_it() -> None:
    # Bound to the sign-in cookie too: a token handed out on the public sign-in
    # page (to anyone who can reach it) cannot act for a signed-in browser.
    job = failed_job()
    with TestClient(create_app(token="s3cret")) as client:
        token = form_token(client.get("/login").text)
        client.post("/login", data={"csrf": token, "token": "s3cret"})
        assert client.post(f"/jobs/{job.id}/retry", data={"csrf": token}).status_code == 403
        confirm = client.get(f"/jobs/{job.id}/retry").text
        assert client.post(f"/jobs/{job.id}/retry", data={"csrf": form_token(confirm)}).status_code == 200
