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
