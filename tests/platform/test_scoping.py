import pytest

from apikeys.models import ApiKey
from core.scoping import UnscopedQueryError
from metering.models import AppendOnlyError, UsageRecord
from tests.factories import make_key

pytestmark = pytest.mark.django_db


def test_unscoped_queries_refuse_to_run(tenant):
    make_key(tenant)
    with pytest.raises(UnscopedQueryError):
        list(ApiKey.objects.all())
    with pytest.raises(UnscopedQueryError):
        ApiKey.objects.filter(name="test").count()
    with pytest.raises(UnscopedQueryError):
        ApiKey.objects.get(name="test")
    with pytest.raises(UnscopedQueryError):
        ApiKey.objects.all().update(name="x")


def test_scoped_queries_see_only_their_tenant(tenant, other_tenant):
    make_key(tenant)
    make_key(other_tenant)
    assert ApiKey.objects.for_tenant(tenant).count() == 1
    assert {k.tenant_id for k in ApiKey.objects.for_tenant(tenant)} == {tenant.pk}
    assert tenant.api_keys.count() == 1  # related managers filter on tenant: scoped
    assert ApiKey.objects.unscoped().count() == 2


def test_ledger_is_append_only(tenant):
    with pytest.raises(AppendOnlyError):
        UsageRecord.objects.for_tenant(tenant).update(inputs=0)
    with pytest.raises(AppendOnlyError):
        UsageRecord.objects.for_tenant(tenant).delete()
