"""Messages clients see, in one place so they stay consistent and reviewable."""

MISSING_KEY = "No API key provided. Send it as 'Authorization: Bearer sk_live_...'."
MALFORMED_KEY = "Invalid API key format: keys look like 'sk_live_...' or 'sk_test_...'."
INVALID_KEY = "Invalid API key provided."
REVOKED_KEY = "This API key has been revoked."
EXPIRED_KEY = "This API key has expired."
ROTATE_EXPIRED = (
    "Key '{key_id}' expired at {at}: a new secret for it would not work either. Create a new "
    "key instead."
)
TENANT_SUSPENDED = "This account is suspended. Contact support."
INSUFFICIENT_SCOPE = "This API key lacks the '{scope}' scope required for this request."
SCOPE_ESCALATION = "A key can only create keys with scopes it holds itself; it lacks '{scope}'."
UNKNOWN_SCOPE = "Unknown scope '{scope}'. Valid scopes: inference, training, billing, admin."
EXPIRES_IN_PAST = "expires_at must be in the future."
KEY_NOT_FOUND = "No such API key: '{key_id}'."
STORE_DOWN = "The key store is unreachable; the key was not changed. Retry after a short wait."
ROTATION_IN_GRACE = (
    "This key's previous secret still works until {until}, the grace period of its last "
    "rotation. Rotate with grace_period_seconds 0 to end it and the current secret now, or "
    "rotate with a grace period after then."
)
TEST_MINTS_LIVE = (
    'A test-mode key can create test-mode keys only (mode "test"); use a live key to create '
    "live ones."
)
LAST_ADMIN_KEY = (
    "'{key_id}' is this account's last live API key with the admin scope: without it no key "
    "could create or manage API keys again. Create another live key with the admin scope "
    '(POST /v1/api-keys with "scopes": ["admin"]) first, then delete this one.'
)
OUTLIVES_CREATOR = "This key expires at {at}: it cannot create a key that expires later (or never)."
LAST_LASTING_ADMIN_KEY = (
    "'{key_id}' is this account's live admin key that lasts longest: every other one expires"
    " by {at}, and from then on no key could create or manage API keys. Create a live key "
    'with the admin scope that lasts as long first (POST /v1/api-keys with "scopes": '
    '["admin"] and an expires_at no earlier than this key\'s, or none), then delete this one.'
)
OUTLIVES_REVOKER = (
    "This key expires at {at}: it cannot revoke an admin key that expires later (or never),"
    " which would leave the tenant's keys to one that expires. Use that key, or a key that"
    " lasts as long, to revoke it."
)
