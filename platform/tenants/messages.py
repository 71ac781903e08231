"""Messages operators see (``manage.py create_tenant``), in one place."""

NAME_BLANK = "The tenant's name must not be blank."
NAME_TOO_LONG = "The tenant's name is {length} characters long; at most {max_length} are allowed."
SLUG_INVALID = (
    "'{slug}' is not a valid slug: use lowercase letters, digits, hyphens and underscores, "
    "at most {max_length} characters{hint}."
)
SLUG_TAKEN = "The slug '{slug}' is taken by tenant {tenant_id}; choose another."
DELETE_KEPT = (
    "its {kept}: kept for billing and the ledger, so the tenant cannot be deleted. Suspend it "
    "instead (its keys then stop at once, its fine-tunes with them)"
)
