"""The admin's login against password guessing (django-axes): after five failed logins for
one username from one address, that pair is refused for a cool-off, even with the right
password; nobody elsewhere is locked out by it, and API keys are not affected."""

from __future__ import annotations

import time
from datetime import timedelta

import pytest
from django.contrib.auth.models import User
from django.test import Client, override_settings

from tests.factories import TenantFactory, bearer, make_key

pytestmark = pytest.mark.django_db
LOGIN = "/admin/login/"
PASSWORD = "correct horse battery staple"


@pytest.fixture
def operator():
    return User.objects.create_superuser("ops", "ops@example.com", PASSWORD)


def login(client: Client, password: str, username: str = "ops", **headers: str):
    return client.post(
        LOGIN, {"username": username, "password": password, "next": "/admin/"}, **headers
    )


def logged_in(client: Client) -> bool:
    return client.get("/admin/").status_code == 200


def test_five_wrong_passwords_lock_that_username_from_that_address(operator):
    guesser = Client(REMOTE_ADDR="203.0.113.7")
    for n in range(4):
        page = login(guesser, f"guess {n}")
        assert page.status_code == 200 and not logged_in(guesser)  # the form again
    assert login(guesser, "guess 4").status_code == 429  # the fifth failure locks

    refused = login(guesser, PASSWORD)
    assert refused.status_code == 429
    assert "too many login attempts" in refused.content.decode().lower()
    assert not logged_in(guesser)

    # The operator at their own address is not locked out by someone else's guesses.
    at_desk = Client(REMOTE_ADDR="198.51.100.2")
    assert login(at_desk, PASSWORD).status_code == 302 and logged_in(at_desk)


def test_a_success_before_the_limit_starts_the_count_again(operator):
    client = Client(REMOTE_ADDR="203.0.113.8")
    for n in range(4):
        login(client, f"typo {n}")
    assert login(client, PASSWORD).status_code == 302
    client.logout()
    for n in range(4):
        login(client, f"typo again {n}")
    assert login(client, PASSWORD).status_code == 302 and logged_in(client)


def test_the_lockout_ends_after_the_cool_off(operator):
    client = Client(REMOTE_ADDR="203.0.113.9")
    with override_settings(AXES_COOLOFF_TIME=timedelta(seconds=1)):
        for n in range(5):
            login(client, f"guess {n}")
        assert login(client, PASSWORD).status_code == 429
        time.sleep(1.2)
        assert login(client, PASSWORD).status_code == 302 and logged_in(client)


@override_settings(TRUSTED_PROXY_COUNT=1)
def test_behind_a_proxy_the_address_it_saw_is_locked_and_a_forged_one_does_not_escape(operator):
    proxy = Client(REMOTE_ADDR="10.0.0.2")  # every request reaches the API from the proxy
    for n in range(5):
        login(proxy, f"guess {n}", HTTP_X_FORWARDED_FOR=f"1.2.3.{n}, 203.0.113.10")
    # The client writes what it likes left of the proxy's entry: still locked out.
    assert login(proxy, PASSWORD, HTTP_X_FORWARDED_FOR="9.9.9.9, 203.0.113.10").status_code == 429
    # Another client behind the same proxy logs in.
    assert login(proxy, PASSWORD, HTTP_X_FORWARDED_FOR="198.51.100.3").status_code == 302


def test_unknown_usernames_are_throttled_too_and_api_keys_are_not_affected(operator):
    guesser = Client(REMOTE_ADDR="203.0.113.11")
    for n in range(5):
        login(guesser, f"guess {n}", username="admin")  # no such user
    assert login(guesser, "x", username="admin").status_code == 429

    # Bad API keys from that address neither count nor are refused as logins are.
    tenant = TenantFactory()
    secret = make_key(tenant, ["inference"])
    for _ in range(8):
        assert bearer("sk_live_wrong_wrong").get("/v1/models").status_code == 401
    assert bearer(secret).get("/v1/models").status_code == 200
    assert login(Client(REMOTE_ADDR="203.0.113.11"), PASSWORD).status_code == 302


def test_one_address_trying_many_usernames_is_capped(operator, settings):
    """The pair's lockout left an address free to try five passwords on every username."""
    settings.ADMIN_LOGIN_ADDRESS_LIMIT = 12
    sprayer = Client(REMOTE_ADDR="203.0.113.12")
    for n in range(12):
        page = login(sprayer, "Summer2026!", username=f"user{n}")  # one try a username
        assert page.status_code == 200, n
    refused = login(sprayer, PASSWORD)  # the operator's own credentials, from that address
    assert refused.status_code == 429 and b"from this address" in refused.content
    assert not logged_in(sprayer)
    at_desk = Client(REMOTE_ADDR="198.51.100.4")
    assert login(at_desk, PASSWORD).status_code == 302 and logged_in(at_desk)


def test_the_address_cap_counts_attempts_as_they_arrive_and_gives_successes_back(
    operator, settings, monkeypatch
):
    """Counted at their failure, a burst of attempts all read the old count and all passed:
    each is counted before its password is checked."""
    from django.core.cache import cache

    from core import admin_login

    settings.ADMIN_LOGIN_ADDRESS_LIMIT = 3
    seen = []
    check = admin_login._count

    def counting(request):  # what the count is while the password is being checked
        attempts = check(request)
        seen.append(cache.get(admin_login._key(request)))
        return attempts

    monkeypatch.setattr(admin_login, "_count", counting)
    client = Client(REMOTE_ADDR="203.0.113.13")
    assert login(client, "typo", username="other").status_code == 200
    for _ in range(4):  # the operator logging in again and again: no count left behind
        assert login(client, PASSWORD).status_code == 302
        client.logout()
    assert seen == [1, 2, 2, 2, 2]
    assert login(client, "typo 2", username="other").status_code == 200
    assert login(client, "typo 3", username="other2").status_code == 200
    assert login(client, PASSWORD).status_code == 429


def test_an_ipv6_subscribers_addresses_share_one_count_and_a_limit_of_0_is_off(operator, settings):
    settings.ADMIN_LOGIN_ADDRESS_LIMIT = 2
    for n in range(2):
        login(Client(REMOTE_ADDR=f"2001:db8:1:2::{n + 1}"), "guess", username=f"u{n}")
    refused = login(Client(REMOTE_ADDR="2001:db8:1:2:ffff::9"), PASSWORD)  # the same /64
    assert refused.status_code == 429
    assert login(Client(REMOTE_ADDR="2001:db8:1:3::1"), PASSWORD).status_code == 302
    settings.ADMIN_LOGIN_ADDRESS_LIMIT = 0
    assert login(Client(REMOTE_ADDR="2001:db8:1:2::1"), PASSWORD).status_code == 302


@override_settings(TRUSTED_PROXY_COUNT=1)
def test_a_request_that_did_not_come_through_the_proxy_is_keyed_by_its_peer():
    """Inside the cluster, a request straight to the pod wrote X-Forwarded-For as it liked,
    and could run another address's count up (the operators' office)."""
    from django.test import RequestFactory

    from core.client_ip import client_ip

    direct = RequestFactory(REMOTE_ADDR="10.0.0.7").get("/", HTTP_X_FORWARDED_FOR="")
    assert client_ip(direct) == "10.0.0.7"
    through = RequestFactory(REMOTE_ADDR="10.0.0.2").get(
        "/", HTTP_X_FORWARDED_FOR="9.9.9.9, 1.2.3.4"
    )
    assert client_ip(through) == "1.2.3.4"
    with override_settings(TRUSTED_PROXY_COUNT=2):
        one_hop = RequestFactory(REMOTE_ADDR="10.0.0.7").get("/", HTTP_X_FORWARDED_FOR="1.2.3.4")
        assert client_ip(one_hop) == "10.0.0.7"  # fewer entries than proxies: not trusted


def test_a_username_longer_than_any_is_refused_by_the_form_not_a_500(operator):
    """A 256-character username was a 500 to anyone on PostgreSQL: django-axes wrote the
    failed login to its 255-character column (an audit)."""
    from axes.models import AccessAttempt

    for length in (151, 256, 10_000):
        response = login(Client(), "wrong", username="x" * length)
        assert response.status_code == 200, length  # the login page, with the form's error
        assert b"at most 150 characters" in response.content
    assert not AccessAttempt.objects.filter(username__startswith="xxx").exists()
    assert login(Client(), PASSWORD).status_code == 302  # a real one still logs in
