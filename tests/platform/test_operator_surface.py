"""What an operator's audit found on the admin and the commands: a NUL in an admin address
was a 500 on PostgreSQL, a long key name a traceback, a plan saved with a limit of 0 refused
every tenant on it, the key page showed the secrets' hashes, and a price table naming a
member twice was read as its last."""

from __future__ import annotations

import pytest
from django.contrib import admin
from django.core.management import CommandError, call_command
from django.test import RequestFactory

from apikeys.models import ApiKey
from economics.simulation import prices_parse
from plans.admin import PlanForm
from plans.models import Plan
from tests.factories import make_key

pytestmark = pytest.mark.django_db


@pytest.mark.parametrize(
    "address",
    [
        "/admin/metering/usagerecord/?model=%00",
        "/admin/tenants/tenant/?status=%00",
        "/admin/tenants/tenant/%00/change/",
    ],
)
def test_a_nul_in_an_admin_address_is_a_400(admin_client, address):
    response = admin_client.get(address)
    assert response.status_code == 400 and b"NUL" in response.content


def test_create_api_key_says_how_long_a_name_may_be(tenant):
    with pytest.raises(CommandError, match="at most 200 characters"):
        call_command("create_api_key", tenant.slug, "--name", "n" * 300)


@pytest.mark.parametrize("field", ["rate_limit_per_minute", "concurrency_cap"])
def test_a_plan_limit_of_zero_is_refused(admin_user, field):
    plan = Plan.objects.get(pk="pro@1")
    request = RequestFactory().get("/admin/plans/plan/")
    request.user = admin_user
    form_class = admin.site._registry[Plan].get_form(request, plan)
    assert issubclass(form_class, PlanForm)
    bound = form_class(data={field: 0}, instance=plan)
    assert not bound.is_valid()
    assert "refuses every request" in str(bound.errors[field])


def test_the_key_page_shows_no_hash_of_its_secret(admin_client, tenant):
    make_key(tenant, ["inference"])
    key = ApiKey.objects.for_tenant(tenant).get()
    page = admin_client.get(f"/admin/apikeys/apikey/{key.pk}/change/").content.decode()
    assert key.secret_hash not in page and "secret hash" not in page.lower()


def test_a_price_table_naming_a_member_twice_is_refused():
    with pytest.raises(ValueError, match="'base_fee' twice"):
        prices_parse('{"pro": {"base_fee": 1, "base_fee": 2}}')
